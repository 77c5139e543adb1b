"""Twilio: ``POST /twilio/voice`` answers with TwiML, ``WS /twilio/stream[/<token>]`` carries
the call.

With ``TWILIO_AUTH_TOKEN`` set (``gateway serve`` insists on it, see ``CARRIERS``), both must
carry a valid ``X-Twilio-Signature``: the webhook over its public URL and form parameters, the
websocket upgrade over its ``wss://`` URL alone (token path included). Independently of that,
the stream must present the token minted in the TwiML (see :mod:`gateway.web.streams`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

from gateway.agents import Fallback
from gateway.call.hooks import CallActionError, CallHooks
from gateway.carriers.base import StreamStarted, is_carrier_id
from gateway.carriers.markup import (
    dial_document,
    fallback_verbs,
    response_document,
)
from gateway.carriers.twilio import TwilioCodec, connect_stream_twiml
from gateway.carriers.twilio_api import TwilioApiError
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

        hooks = CallHooks(fallback=fallback, **twilio_call_actions(state))
        await serve_stream(
            state, websocket, carrier="twilio", codec=TwilioCodec(), hooks=hooks, token=token
        )

    @app.websocket(STREAM_PATH)
    async def twilio_stream_bare(websocket: WebSocket) -> None:
        await twilio_stream(websocket, None)

    @app.websocket(STREAM_PATH + "/{token}")
    async def twilio_stream_with_token(websocket: WebSocket, token: str) -> None:
        await twilio_stream(websocket, token)


def twilio_call_actions(state: GatewayState) -> dict[str, Any]:
    """The ``end_call`` and ``transfer`` hooks of a Twilio stream, as :class:`CallHooks` fields.

    Both update the call through the REST API *before* the gateway closes the stream:
    ``Status=completed`` hangs it up, new TwiML (``<Dial>``) ends the stream and runs; either
    way the apology placed after ``</Connect>`` never plays. The account is
    TWILIO_ACCOUNT_SID, else the stream's own ``accountSid`` (as for the fallback).

    Without TWILIO_AUTH_TOKEN there is no REST client and both hooks are None: ``end_call`` then
    falls back to closing the stream (Twilio runs the verbs after ``</Connect>``), and the bridge
    tells the model that transfers are not available on this line.
    """
    rest = state.twilio_rest
    if rest is None:
        return {"end_call": None, "transfer": None}
    account_of = _account_of(state.settings.twilio_account_sid)

    async def end_call(started: StreamStarted) -> None:
        try:
            await rest.complete_call(account_of(started), started.call_id)
        except TwilioApiError:
            raise CallActionError("the call could not be ended") from None

    async def transfer(started: StreamStarted, destination: str) -> None:
        try:
            await rest.update_call(account_of(started), started.call_id, dial_document(destination))
        except TwilioApiError:
            raise CallActionError("the transfer could not be placed") from None

    return {"end_call": end_call, "transfer": transfer}


def _account_of(configured: str | None) -> Callable[[StreamStarted], str]:
    def account_of(started: StreamStarted) -> str:
        account = configured or started.account_id
        if not account:
            raise CallActionError("this line has no Twilio account to act on the call")
        return account

    return account_of
