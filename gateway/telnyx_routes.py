"""Telnyx: ``POST /telnyx/voice`` (TeXML for form posts, Call Control for JSON webhooks, also
at ``/telnyx/call-control``) and ``WS /telnyx/stream``.

With ``TELNYX_PUBLIC_KEY`` set, every webhook must carry a fresh Ed25519 signature. A Call
Control call is answered on ``call.initiated`` and streamed on ``call.answered`` (streaming an
unanswered call fails); its stream token travels in ``client_state`` because Call Control
streams carry no ``<Parameter>``s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from gateway.agents import Agent
from gateway.app import GatewayState, pass_on, proxy_retries, public_url, run_call
from gateway.bridge import CallHooks
from gateway.carriers.telnyx import TelnyxCodec, connect_stream_texml
from gateway.carriers.telnyx_api import FALLBACK_STATE, TelnyxApiError
from gateway.carriers.telnyx_signature import SignatureError
from gateway.carriers.telnyx_signature import verify as verify_signature
from gateway.carriers.twilio import fallback_verbs, say_twiml
from gateway.twilio_routes import BUSY_MESSAGE, caller_ids

STREAM_PATH = "/telnyx/stream"


def add_telnyx_routes(app: FastAPI, state: GatewayState) -> None:
    log = structlog.get_logger("gateway.telnyx")
    settings = state.settings

    async def telnyx_webhook(request: Request) -> Response:
        body = await request.body()
        if state.telnyx_public_key is not None:
            try:
                verify_signature(state.telnyx_public_key, request.headers, body, time.time())
            except SignatureError as exc:
                state.metrics.errors.labels("signature").inc()
                log.warning("telnyx.signature_rejected", reason=str(exc), path=request.url.path)
                return PlainTextResponse("invalid or missing Telnyx signature", 403)
        if request.headers.get("content-type", "").startswith("application/json"):
            return await call_control_event(request, body)
        form = await request.form()
        call_id = str(form.get("CallSid") or "")
        if not call_id:
            return PlainTextResponse("missing CallSid: this endpoint is for Telnyx webhooks", 400)
        refused = state.admit_call(request, log, "telnyx", call_id)
        if isinstance(refused, Response):
            return refused
        if refused is not None:
            return Response(say_twiml(BUSY_MESSAGE), media_type="text/xml")
        token = state.tokens.mint("telnyx", call_id, time.time())
        params = {"call_control_id": call_id, **caller_ids(form), "token": token}
        url = public_url(request, settings, STREAM_PATH, ws=True)
        fallback = state.opening_fallback()
        after = fallback_verbs(fallback.say, fallback.transfer_to)
        log.info("telnyx.voice", call_id=call_id, stream_url=url)
        texml = connect_stream_texml(url, settings.telnyx_codec, params, after)
        return Response(texml, media_type="text/xml")

    async def call_control_event(request: Request, body: bytes) -> Response:
        try:
            data = json.loads(body)["data"]
            kind = str(data["event_type"])
            payload: dict[str, Any] = data["payload"]
            call_id = str(payload["call_control_id"])
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse("not a Telnyx Call Control webhook", 400)
        api = state.telnyx_api
        if api is None:
            log.error("telnyx.call_control_without_key", event_type=kind, call_id=call_id)
            return PlainTextResponse(
                "TELNYX_API_KEY is not set: Call Control webhooks need it", 503
            )
        try:
            if kind == "call.initiated" and payload.get("direction") != "outgoing":
                refused = state.admit_call(request, log, "telnyx", call_id)
                if isinstance(refused, Response):
                    return refused
                if refused is not None:
                    await api.reject(call_id)
                else:
                    await api.answer(call_id)
            elif kind == "call.answered":
                url = public_url(request, settings, STREAM_PATH, ws=True)
                token = state.tokens.mint("telnyx", call_id, time.time())
                await api.start_streaming(call_id, url, settings.telnyx_codec, token)
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

    @app.websocket(STREAM_PATH)
    async def telnyx_stream(websocket: WebSocket) -> None:
        refusal = state.refusal()
        if refusal is not None and proxy_retries(websocket):
            log.info("telnyx.stream_passed_on", reason=refusal)
            await websocket.send_denial_response(pass_on(refusal))
            return
        codec = TelnyxCodec()

        async def hang_up(call_id: str) -> None:
            # A TeXML call ends when its <Connect> stream closes; a Call Control call does not.
            if state.telnyx_api is not None and codec.call_control:
                await state.telnyx_api.hangup(call_id)

        async def fallback(call_id: str, agent: Agent) -> bool:
            if state.telnyx_api is None or not codec.call_control:
                return False  # TeXML: the verbs after </Connect> run when the stream closes
            chosen = state.graph.fallback(agent)
            if chosen.transfer_to:
                await state.telnyx_api.transfer(call_id, chosen.transfer_to)
            else:
                await state.telnyx_api.speak(call_id, chosen.say)
            return True

        hooks = CallHooks(authorize=state.authorize("telnyx"), hang_up=hang_up, fallback=fallback)
        await run_call(state, websocket, codec, hooks)
