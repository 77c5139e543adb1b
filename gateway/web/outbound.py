"""``POST /calls``: the gateway places a call through the carrier's REST API, and the answered
call is bridged exactly like an inbound one.

The request names the callee (``to``), the gateway's own number to call from (``from``), the
carrier, and optionally the pipeline stage to start in (``phase``) and ``variables`` for the
agents' prompts (``{{param.NAME}}``). Nothing about the call is kept here: everything the
answered call needs travels in the webhook URL the carrier is given, so any replica behind the
load balancer can take the answer, and a restart between dial and answer loses nothing:

- Twilio ("Create a Call resource", :meth:`TwilioRest.create_call`): ``Url`` is the gateway's
  ``/twilio/voice``; Twilio requests it, signed, when the callee picks up.
- Telnyx Call Control ("Dial", :meth:`CallControl.dial`): ``webhook_url`` is the gateway's
  ``/telnyx/call-control``; the call's ``call.answered`` is streamed as an inbound one's.

The URL's query carries the variables (they become ``param.*`` stream parameters through the
path an operator's own webhook query takes) and the gateway's reserved ``callbridge:direction``
and ``callbridge:phase``, which no variable name can take (see
:func:`gateway.web.admission.outbound_query`); they arrive as the stream parameters
``direction=outbound`` and ``phase``.

The route exists only with ADMIN_API_TOKEN (:mod:`gateway.web.auth`): placing calls spends
money and rings strangers' phones.
"""

from __future__ import annotations

import json
import re
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.carriers.telnyx_api import TelnyxApiError
from gateway.carriers.twilio_api import TwilioApiError
from gateway.logs import mask_number
from gateway.settings import CARRIER_NAMES
from gateway.web.admission import outbound_query, variable_errors
from gateway.web.auth import admin_guard
from gateway.web.httputil import CLIENT_GONE, public_url, read_body
from gateway.web.state import GatewayState

#: The numbers a carrier dials and calls from: E.164 (as agents.yaml's routes).
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_FIELDS = ("to", "from", "carrier", "phase", "variables")
#: Where each carrier's answered call comes back: the routes of gateway.web.twilio / .telnyx.
WEBHOOK_PATHS = {"twilio": "/twilio/voice", "telnyx": "/telnyx/call-control"}


class _RefusedError(Exception):
    """A request the route answers with ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def add_outbound_routes(app: FastAPI, state: GatewayState) -> None:
    """``POST /calls``; only when ADMIN_API_TOKEN is set (``create_app`` checks)."""
    log = structlog.get_logger("gateway.outbound")
    settings = state.settings

    @app.post("/calls", status_code=201, dependencies=[Depends(admin_guard(settings))])
    async def place_call(request: Request) -> Response:
        body = await read_body(request)
        if body is None:
            return CLIENT_GONE
        try:
            call = _outbound_request(body, state)
            if state.draining:
                raise _RefusedError(
                    503, "the gateway is draining: place the call on another replica"
                )
            url = public_url(request, settings, WEBHOOK_PATHS[call["carrier"]], ws=False)
            url += "?" + outbound_query(call["variables"], call["phase"])
            call_id = await _dial(state, call, url)
        except _RefusedError as refused:
            if refused.status == 502:
                state.metrics.errors.labels("carrier_api").inc()
                log.error("outbound.carrier_refused", error=refused.detail)
            return JSONResponse({"detail": refused.detail}, refused.status)
        log.info(
            "outbound.placed",
            carrier=call["carrier"],
            call_id=call_id,
            to=mask_number(call["to"]),
            phase=call["phase"],
        )
        answer = {"call_id": call_id, "carrier": call["carrier"], "to": call["to"],
                  "from": call["from"], "status": "queued"}  # fmt: skip
        return JSONResponse(answer, 201)


def _outbound_request(body: bytes, state: GatewayState) -> dict[str, Any]:
    """The checked request: ``to``, ``from``, ``carrier``, ``phase`` (None) and ``variables``
    ({}); or :class:`_RefusedError` with 422 and what is wrong, in one line."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _RefusedError(422, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise _RefusedError(422, "the body must be a JSON object")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise _RefusedError(
            422, f"unknown field {unknown[0][:40]!r}; fields are {', '.join(_FIELDS)}"
        )
    for name in ("to", "from"):
        number = data.get(name)
        if not isinstance(number, str) or not _E164.fullmatch(number):
            raise _RefusedError(422, f"{name!r} must be an E.164 number such as +15551234567")
    served = [c for c in CARRIER_NAMES if c in state.settings.served_carriers]
    carrier = data.get("carrier", served[0])
    if carrier not in CARRIER_NAMES:
        raise _RefusedError(422, f"carrier must be one of {', '.join(CARRIER_NAMES)}")
    if carrier not in served:
        raise _RefusedError(422, f"carrier {carrier!r} is not served here (CARRIERS)")
    phase = data.get("phase")
    if phase is not None and (not isinstance(phase, str) or not state.graph.has_phase(phase)):
        raise _RefusedError(
            422, f"unknown phase; the pipeline's phases are {', '.join(state.graph.phases)}"
        )
    variables = data.get("variables", {})
    problem = variable_errors(variables)
    if problem is not None:
        raise _RefusedError(422, problem)
    return {"to": data["to"], "from": data["from"], "carrier": carrier, "phase": phase,
            "variables": variables}  # fmt: skip


async def _dial(state: GatewayState, call: dict[str, Any], url: str) -> str:
    """Place ``call`` through its carrier's REST API with ``url`` as its webhook; its id.

    503 when the API is not configured (the settings it needs are named), 502 when the carrier
    refused: its status and error code only, since its message can echo the request."""
    settings = state.settings
    if call["carrier"] == "twilio":
        account = settings.twilio_account_sid
        if state.twilio_rest is None or not account:
            raise _RefusedError(
                503, "outbound Twilio calls need TWILIO_AUTH_TOKEN and TWILIO_ACCOUNT_SID"
            )
        try:
            return await state.twilio_rest.create_call(account, call["to"], call["from"], url)
        except TwilioApiError as exc:
            raise _RefusedError(502, f"Twilio refused the call ({exc})") from None
    connection = settings.telnyx_connection_id
    if state.telnyx_api is None or not connection:
        raise _RefusedError(
            503, "outbound Telnyx calls need TELNYX_API_KEY and TELNYX_CONNECTION_ID"
        )
    try:
        return await state.telnyx_api.dial(connection, call["to"], call["from"], url)
    except TelnyxApiError as exc:
        raise _RefusedError(502, f"Telnyx refused the call ({exc})") from None
