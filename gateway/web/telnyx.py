"""Telnyx: ``POST /telnyx/voice`` (TeXML for form posts, Call Control for JSON webhooks, also
at ``/telnyx/call-control``) and ``WS /telnyx/stream[/<token>]``.

With ``TELNYX_TEXML=false`` form posts (TeXML) get 404 and only Call Control is served: the
setting ``TELNYX_CODEC=L16`` needs, since TeXML does not document L16 (see ``settings.py``).

With ``TELNYX_PUBLIC_KEY`` set (``gateway serve`` insists on it, see ``CARRIERS``), every
webhook must carry a fresh Ed25519 signature. Telnyx signs no stream upgrade, so the stream
token carries the proof (see :mod:`gateway.web.streams`): in the stream URL's path for both kinds
of call, and also, for TeXML, as a ``<Parameter>`` (``start.custom_parameters``), and for Call
Control as ``stream_auth_token`` (the ``x-telnyx-streaming-auth-token`` upgrade header) and in
``client_state``. A Call Control call is answered on ``call.initiated`` and streamed on
``call.answered`` (streaming an unanswered call fails).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from gateway.agents import Fallback
from gateway.call.hooks import CallActionError, CallHooks
from gateway.carriers.base import ProtocolError, StreamStarted, is_carrier_id, load_object
from gateway.carriers.markup import dial_document
from gateway.carriers.telnyx import (
    ACCOUNT_PARAMETER,
    STREAM_AUTH_HEADER,
    TelnyxCodec,
    connect_stream_texml,
)
from gateway.carriers.telnyx_api import FALLBACK_STATE, TelnyxApiError
from gateway.carriers.telnyx_signature import SignatureError
from gateway.carriers.telnyx_signature import verify as verify_signature
from gateway.carriers.texml_api import TexmlApiError
from gateway.web.admission import (
    admit_call,
    caller_ids,
    gateway_parameters,
    offer_stream,
    webhook_parameters,
)
from gateway.web.httputil import CLIENT_GONE, public_url, read_body, read_form
from gateway.web.state import GatewayState
from gateway.web.streams import serve_stream

STREAM_PATH = "/telnyx/stream"


def add_telnyx_routes(app: FastAPI, state: GatewayState) -> None:
    log = structlog.get_logger("gateway.telnyx")
    settings = state.settings

    async def telnyx_webhook(request: Request) -> Response:
        body = await read_body(request)
        if body is None:
            return CLIENT_GONE
        if state.telnyx_public_key is not None:
            try:
                verify_signature(state.telnyx_public_key, request.headers, body, time.time())
            except SignatureError as exc:
                state.metrics.errors.labels("signature").inc()
                state.log_refusal(
                    log, "telnyx.signature_rejected", reason=str(exc), path=request.url.path
                )
                return PlainTextResponse("invalid or missing Telnyx signature", 403)
        if request.headers.get("content-type", "").startswith("application/json"):
            return await call_control_event(request, body)
        if not settings.telnyx_texml:
            return PlainTextResponse(
                "TeXML is not served here (TELNYX_TEXML=false): this endpoint takes "
                "Telnyx Call Control (JSON) webhooks",
                404,
            )
        form = await read_form(request)
        if form is None:
            return CLIENT_GONE
        call_id = form.get("CallSid")
        if not is_carrier_id(call_id):
            return PlainTextResponse("missing CallSid: this endpoint is for Telnyx webhooks", 400)
        offer = offer_stream(
            state,
            request,
            log,
            carrier="telnyx",
            stream_path=STREAM_PATH,
            call_id=call_id,
            id_parameter="call_control_id",
            form=form,
            extra=account_parameter(form),
        )
        if isinstance(offer, Response):
            return offer
        texml = connect_stream_texml(
            offer.url, settings.telnyx_codec, offer.parameters, offer.after
        )
        return Response(texml, media_type="text/xml")

    async def call_control_event(request: Request, body: bytes) -> Response:
        try:
            data = load_object(body.decode())["data"]
            kind = str(data["event_type"])[:64]
            payload: dict[str, Any] = data["payload"]
            call_id = payload["call_control_id"]
            if not is_carrier_id(call_id):
                raise TypeError("call_control_id")
        except (ProtocolError, UnicodeDecodeError, KeyError, TypeError):
            return PlainTextResponse("not a Telnyx Call Control webhook", 400)
        api = state.telnyx_api
        if api is None:
            log.error("telnyx.call_control_without_key", event_type=kind, call_id=call_id)
            return PlainTextResponse(
                "TELNYX_API_KEY is not set: Call Control webhooks need it", 503
            )
        try:
            # An outgoing call (dialled by the gateway, gateway.web.outbound) is answered by
            # the callee, not by a command: its call.initiated is news only, and "answer"
            # would fail on it (https://developers.telnyx.com/api-reference/call-commands/dial).
            if kind == "call.initiated" and payload.get("direction") != "outgoing":
                refused = admit_call(state, request, log, "telnyx", call_id)
                if isinstance(refused, Response):
                    return refused
                if refused is not None:
                    await api.reject(call_id)
                else:
                    await api.answer(call_id)
            elif kind == "call.answered" and state.ledger.streamed("telnyx", call_id, time.time()):
                # Redelivered (Telnyx retries webhooks) or replayed: the call has its stream.
                state.log_refusal(log, "telnyx.webhook_replayed", call_id=call_id)
            elif kind == "call.answered":
                token = state.tokens.mint("telnyx", call_id, time.time())
                url = public_url(request, settings, f"{STREAM_PATH}/{token}", ws=True)
                query = request.query_params.multi_items()
                parameters = {
                    **webhook_parameters(query),
                    **caller_ids({"From": payload.get("from"), "To": payload.get("to")}),
                    # direction=outbound and phase of a call the gateway dialled itself (its
                    # webhook_url's query; gateway.web.outbound).
                    **gateway_parameters(query),
                }
                await api.start_streaming(call_id, url, settings.telnyx_codec, token, parameters)
            elif kind == "call.speak.ended" and payload.get("client_state") == FALLBACK_STATE:
                await api.hangup(call_id)  # the fallback apology has been said
        except TelnyxApiError as exc:
            state.metrics.errors.labels("carrier_api").inc()
            log.error("telnyx.command_failed", event_type=kind, call_id=call_id, error=str(exc))
            return PlainTextResponse("Telnyx API command failed", 502)
        log.info("telnyx.call_control", event_type=kind, call_id=call_id)
        return JSONResponse({"status": "ok"})

    app.add_api_route("/telnyx/voice", telnyx_webhook, methods=["POST"])
    app.add_api_route("/telnyx/call-control", telnyx_webhook, methods=["POST"])

    async def telnyx_stream(websocket: WebSocket, token: str | None) -> None:
        # The codec asked for both ways: the gateway's audio is sent in it even when Telnyx
        # streams the caller in the call's own codec (see carriers/telnyx.py).
        codec = TelnyxCodec(requested=settings.telnyx_codec)

        async def hang_up(call_id: str) -> None:
            # A TeXML call ends when its <Connect> stream closes; a Call Control call does not.
            if state.telnyx_api is not None and codec.call_control:
                await state.telnyx_api.hangup(call_id)

        async def fallback(started: StreamStarted, chosen: Fallback) -> bool:
            if state.telnyx_api is None or not codec.call_control:
                return False  # TeXML: the verbs after </Connect> run when the stream closes
            if chosen.transfer_to:
                await state.telnyx_api.transfer(started.call_id, chosen.transfer_to)
            else:
                await state.telnyx_api.speak(started.call_id, chosen.say)
            return True

        hooks = CallHooks(hang_up=hang_up, fallback=fallback, **telnyx_call_actions(state, codec))
        await serve_stream(
            state, websocket, carrier="telnyx", codec=codec, hooks=hooks, token=token
        )

    @app.websocket(STREAM_PATH)
    async def telnyx_stream_bare(websocket: WebSocket) -> None:
        await telnyx_stream(websocket, websocket.headers.get(STREAM_AUTH_HEADER))

    @app.websocket(STREAM_PATH + "/{token}")
    async def telnyx_stream_with_token(websocket: WebSocket, token: str) -> None:
        await telnyx_stream(websocket, token)


def account_parameter(form: Mapping[str, Any]) -> dict[str, str]:
    """The TeXML webhook's ``AccountSid`` as a stream parameter: the TeXML REST API that ends
    and transfers the call names the account in its path (see :mod:`gateway.carriers.texml_api`)."""
    account = form.get("AccountSid")
    return {ACCOUNT_PARAMETER: account} if is_carrier_id(account) and len(account) <= 128 else {}


def telnyx_call_actions(state: GatewayState, codec: TelnyxCodec) -> dict[str, Any]:
    """The ``end_call`` and ``transfer`` hooks of a Telnyx stream, as :class:`CallHooks` fields.

    Which API applies is known only at ``start`` (``codec.call_control``): a Call Control call
    is hung up or transferred by its commands; a TeXML call is updated through the TeXML REST
    API (``Status=completed`` hangs it up, new TeXML ``<Dial>`` transfers it), which ends the
    stream before the gateway closes it, so the apology after ``</Connect>`` never plays. The
    account of a TeXML call is its ``account_sid`` stream parameter (``StreamStarted.account_id``).

    Without TELNYX_API_KEY there is neither API and both hooks are None: ``end_call`` then
    falls back to closing the stream, and the bridge tells the model that transfers are not
    available on this line.
    """
    api, texml = state.telnyx_api, state.texml_api
    if api is None or texml is None:
        return {"end_call": None, "transfer": None}

    async def end_call(started: StreamStarted) -> None:
        try:
            if codec.call_control:
                await api.hangup(started.call_id)
            else:
                await texml.complete_call(texml_account(started), started.call_id)
        except (TelnyxApiError, TexmlApiError):
            raise CallActionError("the call could not be ended") from None

    async def transfer(started: StreamStarted, destination: str) -> None:
        try:
            if codec.call_control:
                await api.transfer(started.call_id, destination)
            else:
                document = dial_document(destination)
                await texml.update_call(texml_account(started), started.call_id, document)
        except (TelnyxApiError, TexmlApiError):
            raise CallActionError("the transfer could not be placed") from None

    return {"end_call": end_call, "transfer": transfer}


def texml_account(started: StreamStarted) -> str:
    """The TeXML account of a stream (its ``account_sid`` parameter), or CallActionError."""
    if not started.account_id:
        raise CallActionError("this call has no TeXML account to act on it")
    return started.account_id
