"""A fake gateway speaking Twilio: the voice webhook answering TwiML, and the media stream."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response, WebSocket

from callsim.callers.twilio import TwilioCaller
from tests.fake_gateways import FakeGateway, ServerCall, StreamBehaviour

STREAM_PATH = "/twilio/media"
PARAMS = {"session": "tok-123", "from_number": "+14155550123"}


@dataclass
class Behaviour(StreamBehaviour):
    """How the test gateway answers; a fresh one per test."""

    twiml: str | None = None  # full webhook body; "{url}" is replaced by the stream URL
    stream_url: str | None = None  # default ws://127.0.0.1:PORT/twilio/media
    status: int = 200
    content_type: str = "text/xml"
    reject_ws: bool = False  # refuse the upgrade (HTTP 403)
    auth_token: str | None = None  # check X-Twilio-Signature on webhook and upgrade


@dataclass(kw_only=True)
class TwilioServerCall(ServerCall):
    """What the test gateway saw of one Twilio call."""

    form: dict[str, str] = field(default_factory=dict)
    webhook_headers: dict[str, str] = field(default_factory=dict)
    ws_headers: dict[str, str] = field(default_factory=dict)
    signatures_ok: list[bool] = field(default_factory=list)
    stream_sid: str = ""

    def on_start(self, start: dict[str, object]) -> None:
        self.stream_sid = str(start["streamSid"])

    def outbound(self, event: str, **fields: object) -> dict[str, object]:
        return {"event": event, "streamSid": self.stream_sid, **fields}


def expected_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's algorithm, written out independently of the simulator's ``twilio.webhook``."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def default_twiml(params: dict[str, str] = PARAMS) -> str:
    items = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in params.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<Response><Connect><Stream url="{{url}}">{items}</Stream></Connect></Response>'
    )


class TwilioGateway(FakeGateway[TwilioServerCall, Behaviour]):
    """Twilio's side of a gateway, scripted per test by ``behaviour``."""

    caller_type = TwilioCaller

    def __init__(self) -> None:
        super().__init__(Behaviour())

    def _stream_url(self) -> str:
        return self.behaviour.stream_url or f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/twilio/voice")
        async def voice(request: Request) -> Response:
            b = self.behaviour
            call = TwilioServerCall()
            self.calls.append(call)
            call.form = dict(parse_qsl((await request.body()).decode(), strict_parsing=True))
            call.webhook_headers = dict(request.headers)
            if b.auth_token:
                expected = expected_signature(b.auth_token, str(request.url), call.form)
                call.signatures_ok.append(request.headers.get("x-twilio-signature") == expected)
            body = (b.twiml or default_twiml()).replace("{url}", self._stream_url())
            return Response(body, status_code=b.status, media_type=b.content_type)

        @app.websocket(STREAM_PATH)
        async def media(ws: WebSocket) -> None:
            b = self.behaviour
            call = self.calls[-1] if self.calls else TwilioServerCall()
            call.ws = ws
            call.ws_headers = dict(ws.headers)
            if b.auth_token:
                expected = expected_signature(b.auth_token, self._stream_url(), {})
                call.signatures_ok.append(ws.headers.get("x-twilio-signature") == expected)
            try:
                if b.reject_ws:
                    await ws.close()  # before accept: HTTP 403
                    return
                await ws.accept()
                await self.serve_stream(call, b)
            except BaseException as exc:
                call.errors.append(exc)
                raise
            finally:
                call.done.set()

        return app
