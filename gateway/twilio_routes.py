"""Twilio: ``POST /twilio/voice`` answers with TwiML, ``WS /twilio/stream[/<token>]`` carries
the call.

With ``TWILIO_AUTH_TOKEN`` set (``gateway serve`` insists on it, see ``CARRIERS``), both must
carry a valid ``X-Twilio-Signature``: the webhook over its public URL and form parameters, the
websocket upgrade over its ``wss://`` URL alone (token path included). Independently of that,
the stream must present the token minted in the TwiML (see :mod:`gateway.streams`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

from gateway.agents import BUSY, Fallback
from gateway.call.bridge import CallHooks
from gateway.carriers.base import StreamStarted, is_carrier_id
from gateway.carriers.twilio import (
    TwilioCodec,
    connect_stream_twiml,
    fallback_verbs,
    say_twiml,
    twiml_document,
)
from gateway.logs import mask_number
from gateway.security import twilio_signature_valid
from gateway.state import CLIENT_GONE, GatewayState, public_url, read_form
from gateway.streams import serve_stream

STREAM_PATH = "/twilio/stream"


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
        form = await read_form(request)
        if form is None:
            return CLIENT_GONE
        if auth_token is not None:
            url = public_url(request, settings, request.url.path, ws=False)
            if request.url.query:
                url += "?" + request.url.query
            if not twilio_signature_valid(
                auth_token, url, form, request.headers.get("x-twilio-signature")
            ):
                state.metrics.errors.labels("signature").inc()
                state.log_refusal(log, "twilio.signature_rejected", url=url)
                return PlainTextResponse("invalid or missing X-Twilio-Signature", 403)
        call_sid = form.get("CallSid")
        if not is_carrier_id(call_sid):
            return PlainTextResponse("missing CallSid: this endpoint is for Twilio webhooks", 400)
        refused = state.admit_call(request, log, "twilio", call_sid)
        if isinstance(refused, Response):
            return refused
        if refused is not None:
            return Response(say_twiml(BUSY.say), media_type="text/xml")
        token = state.tokens.mint("twilio", call_sid, time.time())
        params = {"call_sid": call_sid, **caller_ids(form), "token": token}
        url = public_url(request, settings, f"{STREAM_PATH}/{token}", ws=True)
        fallback = state.opening_fallback()
        after = fallback_verbs(fallback.say, fallback.transfer_to)
        log.info("twilio.voice", call_id=call_sid, caller=mask_number(form.get("From")))
        return Response(connect_stream_twiml(url, params, after), media_type="text/xml")

    async def twilio_stream(websocket: WebSocket, token: str | None) -> None:
        if auth_token is not None:
            url = public_url(websocket, settings, websocket.url.path, ws=True)
            signature = websocket.headers.get("x-twilio-signature")
            if not twilio_signature_valid(auth_token, url, {}, signature):
                state.metrics.errors.labels("signature").inc()
                state.log_refusal(log, "twilio.stream_signature_rejected")
                await websocket.close(code=1008)  # before accept: the upgrade gets HTTP 403
                return

        async def fallback(started: StreamStarted, chosen: Fallback) -> bool:
            """Replace the call's TwiML (the fallback, or the busy message) through the REST
            API: the account is TWILIO_ACCOUNT_SID, else the stream's own ``accountSid``."""
            account = settings.twilio_account_sid or started.account_id
            if state.twilio_rest is None or not account:
                return False  # the verbs after </Connect> run when the stream closes
            verbs = fallback_verbs(chosen.say, chosen.transfer_to)
            await state.twilio_rest.update_call(account, started.call_id, twiml_document(verbs))
            return True

        hooks = CallHooks(fallback=fallback)
        await serve_stream(
            state, websocket, carrier="twilio", codec=TwilioCodec(), hooks=hooks, token=token
        )

    @app.websocket(STREAM_PATH)
    async def twilio_stream_bare(websocket: WebSocket) -> None:
        await twilio_stream(websocket, None)

    @app.websocket(STREAM_PATH + "/{token}")
    async def twilio_stream_with_token(websocket: WebSocket, token: str) -> None:
        await twilio_stream(websocket, token)
