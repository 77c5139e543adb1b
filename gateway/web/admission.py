"""Admission of a new call at its webhook, one path for every carrier's webhook.

A webhook for a new call is answered in one of three ways: refused (a replayed webhook, or no
room: then the busy message, or a 503 a retrying proxy passes to another replica), or offered a
stream: a fresh stream token, the stream URL with the token in its path, the call's ids as
stream parameters, and the fallback verbs that run if the gateway has to give up on the call.
Each carrier's route then writes that offer in its own markup (TwiML, TeXML) or API call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import Request
from fastapi.responses import PlainTextResponse, Response

from gateway.agents import BUSY
from gateway.carriers.base import DIRECTION_PARAMETER, OUTBOUND, PHASE_PARAMETER, own_number
from gateway.carriers.markup import fallback_verbs, say_and_hang_up
from gateway.logs import mask_number
from gateway.web.httputil import pass_on, proxy_retries, public_url
from gateway.web.state import GatewayState

#: Query parameters of the voice webhook URL carried to the stream (``param.<name>``): names a
#: prompt variable can use, at most this many, in the URL's order.
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_WEBHOOK_PARAMETERS = 16
WEBHOOK_PARAMETER_PREFIX = "param."
#: Twilio: "the combined length of each <Parameter> name and value must be under 500
#: characters" (https://www.twilio.com/docs/voice/twiml/stream#custom-parameters).
_PARAMETER_CHARS = 499
#: Query parameters the gateway writes into its own webhook URL when it places a call
#: (:mod:`gateway.web.outbound`), read back by :func:`gateway_parameters`. The ``:`` is outside
#: the name pattern above, so a variable can never be named like them and
#: :func:`webhook_parameters` never passes them on as ``param.*``.
GATEWAY_QUERY_PREFIX = "callbridge:"
DIRECTION_QUERY = GATEWAY_QUERY_PREFIX + DIRECTION_PARAMETER
PHASE_QUERY = GATEWAY_QUERY_PREFIX + PHASE_PARAMETER
_PHASE_CHARS = 200


@dataclass(frozen=True, slots=True)
class StreamOffer:
    """What a webhook answer needs to start the call's stream."""

    url: str
    parameters: dict[str, str]
    #: Markup verbs that run when the gateway closes the stream (the opening fallback).
    after: str


def admit_call(
    state: GatewayState,
    request: Request,
    log: structlog.stdlib.BoundLogger,
    carrier: str,
    call_id: str,
) -> Response | str | None:
    """A new call's webhook: None to take it; a Response (409 for a call that already had
    its stream: a replay, which gets no fresh token; 503 to pass it on to a retrying
    proxy); or the reason it is refused for good, counted and logged, after which the
    route gives the carrier its final busy answer."""
    if state.ledger.streamed(carrier, call_id, time.time()):
        state.log_refusal(log, f"{carrier}.webhook_replayed", call_id=call_id)
        return PlainTextResponse("this call already has its stream", 409)
    refusal = state.refusal()
    if refusal is None:
        return None
    if proxy_retries(request):
        log.info(f"{carrier}.call_passed_on", call_id=call_id, reason=refusal)
        return pass_on(refusal)
    state.metrics.calls.labels(f"rejected_{refusal}").inc()
    log.warning(f"{carrier}.call_refused", call_id=call_id, reason=refusal)
    return refusal


def offer_stream(
    state: GatewayState,
    request: Request,
    log: structlog.stdlib.BoundLogger,
    *,
    carrier: str,
    stream_path: str,
    call_id: str,
    id_parameter: str,
    form: Mapping[str, Any],
    extra: Mapping[str, str] | None = None,
) -> StreamOffer | Response:
    """Admit the call of a markup webhook (TwiML, TeXML) and offer it a stream, or answer
    the refusal: the busy message in markup, or :func:`admit_call`'s Response.

    The stream parameters: the call id, ``from``/``to``, the carrier's ``extra`` (TeXML's
    ``account_sid``), the webhook URL's query as ``param.*``, and the token last, so none of
    those can stand in for the gateway's own."""
    refused = admit_call(state, request, log, carrier, call_id)
    if isinstance(refused, Response):
        return refused
    if refused is not None:
        return Response(say_and_hang_up(BUSY.say), media_type="text/xml")
    token = state.tokens.mint(carrier, call_id, time.time())
    query = request.query_params.multi_items()
    parameters = {
        **webhook_parameters(query),
        id_parameter: call_id,
        **caller_ids(form),
        **(extra or {}),
        **gateway_parameters(query),
        "token": token,
    }
    url = public_url(request, state.settings, f"{stream_path}/{token}", ws=True)
    fallback = state.opening_fallback(own_number(parameters), parameters.get(PHASE_PARAMETER))
    log.info(f"{carrier}.voice", call_id=call_id, caller=mask_number(form.get("From")))
    return StreamOffer(url, parameters, fallback_verbs(fallback.say, fallback.transfer_to))


def caller_ids(form: Mapping[str, Any]) -> dict[str, str]:
    """``from``/``to`` stream parameters from a Twilio-style webhook form (TwiML and TeXML)."""
    ids: dict[str, str] = {}
    for name, key in (("from", "From"), ("to", "To")):
        value = form.get(key)
        if isinstance(value, str) and value:
            ids[name] = value[:200]
    return ids


def webhook_parameters(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``param.<name>`` stream parameters from the voice webhook URL's query
    (``/twilio/voice?campaign=spring`` → ``param.campaign=spring``): the per-number context an
    operator configures in the carrier's console, for the agents' prompt variables.

    Names outside ``[A-Za-z0-9_.-]{1,64}`` are skipped, the first value of a name wins, at most
    :data:`MAX_WEBHOOK_PARAMETERS` are kept, and each value is cut to fit Twilio's limit on a
    ``<Parameter>`` (name and value under 500 characters), which TeXML shares. The prefix keeps
    them apart from the gateway's own parameters (``token``, ``from``, the call id).
    """
    out: dict[str, str] = {}
    for name, value in query:
        if len(out) == MAX_WEBHOOK_PARAMETERS:
            break
        key = WEBHOOK_PARAMETER_PREFIX + name
        if _PARAMETER_NAME.fullmatch(name) and key not in out:
            out[key] = value[: _PARAMETER_CHARS - len(key)]
    return out


def gateway_parameters(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The gateway's own stream parameters from its webhook URL's query (the first value of
    each): ``direction=outbound`` and ``phase`` for a call it placed (see :func:`outbound_query`).

    The query is trusted as the webhook's whole URL is: Twilio signs it; Telnyx sends a Call
    Control call's webhooks to the ``webhook_url`` the gateway gave at dial."""
    out: dict[str, str] = {}
    for name, value in query:
        if name == DIRECTION_QUERY and value == OUTBOUND:
            out.setdefault(DIRECTION_PARAMETER, OUTBOUND)
        elif name == PHASE_QUERY and 0 < len(value) <= _PHASE_CHARS:
            out.setdefault(PHASE_PARAMETER, value)
    return out


def outbound_query(variables: Mapping[str, str], phase: str | None) -> str:
    """The webhook URL query of a call the gateway places: its reserved parameters first, then
    the variables, which reach the agents as ``param.NAME`` the way an operator's own query does
    (:func:`webhook_parameters`). Check the variables with :func:`variable_errors` first."""
    pairs = [(DIRECTION_QUERY, OUTBOUND)]
    if phase:
        pairs.append((PHASE_QUERY, phase))
    pairs += variables.items()
    return urlencode(pairs)


def variable_errors(variables: object) -> str | None:
    """Why ``variables`` (from ``POST /calls``) cannot travel as webhook query parameters, in
    one line, or None. The limits are :func:`webhook_parameters`' own, enforced rather than
    applied quietly: a variable the caller asked for must not vanish or arrive cut short."""
    if not isinstance(variables, dict):
        return "variables must be an object of string values"
    if len(variables) > MAX_WEBHOOK_PARAMETERS:
        return f"at most {MAX_WEBHOOK_PARAMETERS} variables"
    for name, value in variables.items():
        if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
            return f"variable name {str(name)[:64]!r} must be 1-64 letters, digits, '_', '.' or '-'"
        if not isinstance(value, str):
            return f"variable {name!r} must be a string"
        room = _PARAMETER_CHARS - len(WEBHOOK_PARAMETER_PREFIX + name)
        if len(value) > room:
            return f"variable {name!r} is too long: at most {room} characters"
    return None
