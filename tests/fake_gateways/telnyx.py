"""A fake gateway speaking Telnyx: TeXML or Call Control webhooks (the latter driving the fake
Call Control API), and the media stream."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request, Response, WebSocket

from callsim.callers.telnyx import TelnyxCaller
from tests.fake_gateways import FakeGateway, ServerCall, StreamBehaviour

STREAM_PATH = "/telnyx/stream"
PARAMS = {"session": "tok-123", "from_number": "+13122010094"}
RATES = {"PCMU": 8000, "PCMA": 8000, "G722": 16000, "L16": 16000}
B64_ANSWERED = base64.b64encode(b"answered").decode()
B64_STREAMING = base64.b64encode(b"streaming").decode()


@dataclass
class Behaviour(StreamBehaviour):
    """How the test gateway answers; a fresh one per test."""

    codec: str = "PCMU"  # bidirectional codec asked for (and, by default, inbound)
    inbound: str | None = None  # <Stream codec> / stream_codec
    rate: int | None = None  # None: the codec's own rate
    mode: str | None = "rtp"  # None: left out (Telnyx then defaults to mp3)
    texml: str | None = None  # full TeXML override; "{url}" is replaced
    public_key: Ed25519PublicKey | None = None  # check webhook signatures (403 if bad)
    api_base: str = ""
    api_key: str = ""
    answer: bool = True
    stream: Literal["on_answered", "on_answer", "before_answer", "never"] = "on_answered"
    hangup_after_close: bool = True  # Call Control: POST hangup once the stream handler ends


@dataclass(kw_only=True)
class TelnyxServerCall(ServerCall):
    """What the test gateway saw of one Telnyx call."""

    behaviour: Behaviour
    webhooks: list[tuple[str, Any]] = field(default_factory=list)  # (event type, form or JSON)
    signatures_ok: list[bool] = field(default_factory=list)
    api_answers: list[tuple[str, int, Any]] = field(default_factory=list)
    stream_id: str = ""
    call_control_id: str = ""

    def on_start(self, start: dict[str, Any]) -> None:
        self.stream_id = start["stream_id"]
        self.call_control_id = start["start"]["call_control_id"]

    def webhook(self, event_type: str) -> dict[str, Any]:
        [body] = [b for kind, b in self.webhooks if kind == event_type]
        payload: dict[str, Any] = body["data"]["payload"]
        return payload

    async def api(self, action: str, body: dict[str, Any] | None = None) -> int:
        """POST a Call Control command for this call to the fake API."""
        b = self.behaviour
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{b.api_base}/calls/{self.call_control_id}/actions/{action}",
                json=body or {},
                headers={"Authorization": f"Bearer {b.api_key}"},
            )
        self.api_answers.append((action, response.status_code, response.json()))
        return response.status_code


def texml(b: Behaviour, params: dict[str, str] = PARAMS) -> str:
    items = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in params.items())
    mode = f' bidirectionalMode="{b.mode}"' if b.mode is not None else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url="{{url}}" track="inbound_track" codec="{b.inbound or b.codec}"{mode}'
        f' bidirectionalCodec="{b.codec}" bidirectionalSamplingRate="{b.rate or RATES[b.codec]}">'
        f"{items}</Stream></Connect></Response>"
    )


def signature_ok(key: Ed25519PublicKey, headers: Any, body: bytes) -> bool:
    """Telnyx's verification, written out independently of the simulator."""
    signature, timestamp = headers.get("telnyx-signature-ed25519"), headers.get("telnyx-timestamp")
    if not signature or not timestamp or abs(time.time() - int(timestamp)) > 300:
        return False
    try:
        key.verify(base64.b64decode(signature), timestamp.encode() + b"|" + body)
    except InvalidSignature:
        return False
    return True


class TelnyxGateway(FakeGateway[TelnyxServerCall, Behaviour]):
    """Telnyx's side of a gateway, scripted per test by ``behaviour``."""

    caller_type = TelnyxCaller

    def __init__(self) -> None:
        super().__init__(Behaviour())
        self.stream_url = f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/telnyx/voice")
        async def voice(request: Request) -> Response:
            body = await request.body()
            is_json = request.headers.get("content-type", "").startswith("application/json")
            event = json.loads(body) if is_json else None
            if event is None or event["data"]["event_type"] == "call.initiated" or not self.calls:
                self.calls.append(TelnyxServerCall(behaviour=self.behaviour))
            call = self.calls[-1]
            b = call.behaviour
            if b.public_key is not None:
                ok = signature_ok(b.public_key, request.headers, body)
                call.signatures_ok.append(ok)
                if not ok:
                    return Response("invalid or missing Telnyx signature", status_code=403)
            if event is not None:
                return await self._call_control(call, event)
            call.webhooks.append(("texml", dict(parse_qsl(body.decode(), strict_parsing=True))))
            answer = (b.texml or texml(b)).replace("{url}", self.stream_url)
            return Response(answer, media_type="text/xml")

        @app.websocket(STREAM_PATH)
        async def media(ws: WebSocket) -> None:
            call = self.calls[-1]
            call.ws = ws
            try:
                await ws.accept()
                await self.serve_stream(call, call.behaviour)
                call_control = call.webhooks[0][0] != "texml"
                if call_control and call.behaviour.hangup_after_close:
                    await call.api("hangup")
            except BaseException as exc:
                call.errors.append(exc)
                raise
            finally:
                call.done.set()

        return app

    async def _call_control(self, call: TelnyxServerCall, event: dict[str, Any]) -> Response:
        b = call.behaviour
        kind = event["data"]["event_type"]
        call.webhooks.append((kind, event))
        call.call_control_id = event["data"]["payload"]["call_control_id"]
        stream = {
            "stream_url": self.stream_url,
            "stream_track": "inbound_track",
            "stream_codec": b.inbound or b.codec,
            "stream_bidirectional_codec": b.codec,
            "stream_bidirectional_sampling_rate": b.rate or RATES[b.codec],
            "client_state": B64_STREAMING,
        }
        if b.mode is not None:
            stream["stream_bidirectional_mode"] = b.mode
        if kind == "call.initiated" and b.answer:
            if b.stream == "before_answer":
                await call.api("streaming_start", stream)
            answer = {"client_state": B64_ANSWERED}
            await call.api("answer", answer | stream if b.stream == "on_answer" else answer)
        elif kind == "call.answered" and b.stream in ("on_answered", "before_answer"):
            await call.api("streaming_start", stream)
        return Response('{"status":"ok"}', media_type="application/json")
