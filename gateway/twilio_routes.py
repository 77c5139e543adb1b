"""Twilio: ``POST /twilio/voice`` answers with TwiML, ``WS /twilio/stream`` carries the call.

With ``TWILIO_AUTH_TOKEN`` set, both must carry a valid ``X-Twilio-Signature`` — the webhook
over its public URL and form parameters, the websocket upgrade over its ``wss://`` URL alone.
Independently of that, the stream must present the token minted in the TwiML.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

from gateway.agents import Agent
from gateway.app import GatewayState, pass_on, proxy_retries, public_url, run_call
from gateway.bridge import CallHooks
from gateway.carriers.twilio import (
    TwilioCodec,
    connect_stream_twiml,
    fallback_verbs,
    say_twiml,
    twiml_document,
)
from gateway.security import twilio_signature_valid

STREAM_PATH = "/twilio/stream"
BUSY_MESSAGE = "All of our lines are busy right now. Please call again in a few minutes."


def caller_ids(form: Mapping[str, Any]) -> dict[str, str]:
    """``from``/``to`` stream parameters from a Twilio-style webhook form (TwiML and TeXML)."""
    ids: dict[str, str] = {}
    for name, key in (("from", "From"), ("to", "To")):
        value = form.get(key)
        if isinstance(value, str) and value:
            ids[name] = value[:200]
    return ids


def add_twilio_routes(app: FastAPI, state: GatewayState) -> None:
    log = structlog.get_logger("gateway.twilio")
    settings = state.settings
    auth_token = (
        settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    )

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = await request.form()
        if auth_token is not None:
            url = public_url(request, settings, request.url.path, ws=False)
            if request.url.query:
                url += "?" + request.url.query
            if not twilio_signature_valid(
                auth_token, url, form, request.headers.get("x-twilio-signature")
            ):
                state.metrics.errors.labels("signature").inc()
                log.warning("twilio.signature_rejected", url=url)
                return PlainTextResponse("invalid or missing X-Twilio-Signature", 403)
        call_sid = str(form.get("CallSid") or "")
        if not call_sid:
            return PlainTextResponse("missing CallSid: this endpoint is for Twilio webhooks", 400)
        refused = state.admit_call(request, log, "twilio", call_sid)
        if isinstance(refused, Response):
            return refused
        if refused is not None:
            return Response(say_twiml(BUSY_MESSAGE), media_type="text/xml")
        token = state.tokens.mint("twilio", call_sid, time.time())
        params = {"call_sid": call_sid, **caller_ids(form), "token": token}
        url = public_url(request, settings, STREAM_PATH, ws=True)
        fallback = state.opening_fallback()
        after = fallback_verbs(fallback.say, fallback.transfer_to)
        log.info("twilio.voice", call_id=call_sid, stream_url=url)
        return Response(connect_stream_twiml(url, params, after), media_type="text/xml")

    @app.websocket(STREAM_PATH)
    async def twilio_stream(websocket: WebSocket) -> None:
        if auth_token is not None:
            url = public_url(websocket, settings, STREAM_PATH, ws=True)
            signature = websocket.headers.get("x-twilio-signature")
            if not twilio_signature_valid(auth_token, url, {}, signature):
                state.metrics.errors.labels("signature").inc()
                log.warning("twilio.stream_signature_rejected", url=url)
                await websocket.close(code=1008)  # before accept: the upgrade gets HTTP 403
                return
        refusal = state.refusal()
        if refusal is not None and proxy_retries(websocket):
            log.info("twilio.stream_passed_on", reason=refusal)
            await websocket.send_denial_response(pass_on(refusal))
            return

        async def fallback(call_sid: str, agent: Agent) -> bool:
            """Replace the call's TwiML with the active agent's fallback (needs REST creds)."""
            if state.twilio_rest is None:
                return False  # the verbs after </Connect> run when the stream closes
            chosen = state.graph.fallback(agent)
            verbs = fallback_verbs(chosen.say, chosen.transfer_to)
            await state.twilio_rest.update_call(call_sid, twiml_document(verbs))
            return True

        hooks = CallHooks(authorize=state.authorize("twilio"), fallback=fallback)
        await run_call(state, websocket, TwilioCodec(), hooks)
