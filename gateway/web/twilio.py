"""Twilio: ``POST /twilio/voice`` answers with TwiML, ``WS /twilio/stream[/<token>]`` carries
the call.

With ``TWILIO_AUTH_TOKEN`` set (``gateway serve`` insists on it, see ``CARRIERS``), both must
carry a valid ``X-Twilio-Signature``: the webhook over its public URL and form parameters, the
websocket upgrade over its ``wss://`` URL alone (token path included). Independently of that,
the stream must present the token minted in the TwiML (see :mod:`gateway.web.streams`).
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

from gateway.agents import Fallback
from gateway.call.hooks import CallHooks
from gateway.carriers.base import StreamStarted, is_carrier_id
from gateway.carriers.markup import fallback_verbs, response_document
from gateway.carriers.twilio import TwilioCodec, connect_stream_twiml
from gateway.security import twilio_signature_valid
from gateway.web.admission import offer_stream
from gateway.web.httputil import CLIENT_GONE, public_url, read_form
from gateway.web.state import GatewayState
from gateway.web.streams import serve_stream

STREAM_PATH = "/twilio/stream"


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
        offer = offer_stream(
            state,
            request,
            log,
            carrier="twilio",
            stream_path=STREAM_PATH,
            call_id=call_sid,
            id_parameter="call_sid",
            form=form,
        )
        if isinstance(offer, Response):
            return offer
        twiml = connect_stream_twiml(offer.url, offer.parameters, offer.after)
        return Response(twiml, media_type="text/xml")

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
            await state.twilio_rest.update_call(account, started.call_id, response_document(verbs))
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
