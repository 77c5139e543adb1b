"""The HTTP surface: thin routes that parse, answer, and hand streams to a CallBridge.

Twilio: ``POST /twilio/voice`` (TwiML) and ``WS /twilio/stream``. Telnyx: ``POST /telnyx/voice``
(TeXML for form posts; Call Control for JSON webhooks, also at ``/telnyx/call-control``) and
``WS /telnyx/stream``. Telnyx webhooks are checked against ``TELNYX_PUBLIC_KEY`` when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.agents import AgentGraph
from gateway.bridge import BridgeOptions, CallBridge, CallObserver
from gateway.carriers.base import CarrierCodec
from gateway.carriers.telnyx import TelnyxCodec, connect_stream_texml
from gateway.carriers.telnyx_api import CALL_CONTROL_STATE, CallControl, TelnyxApiError
from gateway.carriers.telnyx_signature import SignatureError
from gateway.carriers.telnyx_signature import verify as verify_signature
from gateway.carriers.twilio import TwilioCodec, connect_stream_twiml
from gateway.live.session import LiveSession
from gateway.settings import Settings

TWILIO_STREAM_PATH = "/twilio/stream"
TELNYX_STREAM_PATH = "/telnyx/stream"

LiveSessionFactory = Callable[[structlog.stdlib.BoundLogger], LiveSession]


@dataclass(slots=True)
class GatewayState:
    """What the routes share: configuration, the way to reach Gemini, the live calls."""

    settings: Settings
    graph: AgentGraph
    new_live_session: LiveSessionFactory
    observers: tuple[CallObserver, ...] = ()
    telnyx_api: CallControl | None = None
    telnyx_public_key: Ed25519PublicKey | None = None
    calls: set[asyncio.Task[Any]] = field(default_factory=set)

    def bridge_options(self) -> BridgeOptions:
        return BridgeOptions(
            max_message_bytes=self.settings.max_message_bytes,
            playout_lead_ms=self.settings.playout_lead_ms,
            reconnect_buffer_ms=self.settings.reconnect_buffer_ms,
        )


class StarletteCarrierSocket:
    """Adapts Starlette's WebSocket to the bridge's small :class:`CarrierSocket` protocol."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._gone = False

    async def receive(self) -> str | bytes | None:
        if self._gone:
            return None
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            self._gone = True
            return None
        if message["type"] == "websocket.disconnect":
            self._gone = True
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        await self._ws.send_text(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._gone or self._ws.application_state == WebSocketState.DISCONNECTED:
            return
        self._gone = True
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)


def stream_url(request: Request, settings: Settings, path: str) -> str:
    """The public ``wss://`` URL of a stream route.

    PUBLIC_URL wins when set; otherwise the URL is derived from the request as the proxy or
    tunnel saw it (X-Forwarded-Proto/Host, then Host), so ngrok and load balancers just work.
    """
    base = settings.stream_base()
    if base is None:
        headers = request.headers
        proto = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
        host = headers.get("x-forwarded-host") or headers.get("host") or request.url.netloc
        host = host.split(",")[0].strip()
        base = ("wss" if proto in ("https", "wss") else "ws") + "://" + host
    return base + path


def create_app(state: GatewayState) -> FastAPI:
    log = structlog.get_logger("gateway.app")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Calls still running at shutdown are ended cleanly (each bridge closes both sides).
        for task in list(state.calls):
            task.cancel()
        if state.calls:
            await asyncio.wait(state.calls)
        if state.telnyx_api is not None:
            await state.telnyx_api.aclose()

    app = FastAPI(title="Callbridge gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state

    async def run_call(
        websocket: WebSocket,
        codec: CarrierCodec,
        hang_up: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        await websocket.accept()
        bridge = CallBridge(
            StarletteCarrierSocket(websocket),
            codec,
            graph=state.graph,
            new_live_session=state.new_live_session,
            options=state.bridge_options(),
            observers=state.observers,
            hang_up=hang_up,
        )
        task = asyncio.current_task()
        assert task is not None
        state.calls.add(task)
        try:
            await bridge.run()
        finally:
            state.calls.discard(task)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(state.calls)})

    # ------------------------------------------------------------------ Twilio

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = await request.form()
        call_sid = str(form.get("CallSid") or "")
        if not call_sid:
            return PlainTextResponse("missing CallSid: this endpoint is for Twilio webhooks", 400)
        params = {"call_sid": call_sid, **_caller_ids(form)}
        url = stream_url(request, state.settings, TWILIO_STREAM_PATH)
        log.info("twilio.voice", call_id=call_sid, stream_url=url)
        return Response(connect_stream_twiml(url, params), media_type="text/xml")

    @app.websocket(TWILIO_STREAM_PATH)
    async def twilio_stream(websocket: WebSocket) -> None:
        await run_call(websocket, TwilioCodec())

    # ------------------------------------------------------------------ Telnyx

    async def telnyx_webhook(request: Request) -> Response:
        body = await request.body()
        if state.telnyx_public_key is not None:
            try:
                verify_signature(state.telnyx_public_key, request.headers, body, time.time())
            except SignatureError as exc:
                log.warning("telnyx.signature_rejected", reason=str(exc), path=request.url.path)
                return PlainTextResponse("invalid or missing Telnyx signature", 403)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            return await _call_control_event(request, body)
        form = await request.form()
        call_id = str(form.get("CallSid") or form.get("CallControlId") or "")
        if not call_id:
            return PlainTextResponse("missing CallSid: this endpoint is for Telnyx webhooks", 400)
        params = {"call_control_id": call_id, **_caller_ids(form)}
        url = stream_url(request, state.settings, TELNYX_STREAM_PATH)
        log.info("telnyx.voice", call_id=call_id, stream_url=url)
        texml = connect_stream_texml(url, state.settings.telnyx_codec, params)
        return Response(texml, media_type="text/xml")

    async def _call_control_event(request: Request, body: bytes) -> Response:
        try:
            data = json.loads(body)["data"]
            kind = str(data["event_type"])
            call_id = str(data["payload"]["call_control_id"])
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse("not a Telnyx Call Control webhook", 400)
        api = state.telnyx_api
        if api is None:
            log.error("telnyx.call_control_without_key", event_type=kind, call_id=call_id)
            return PlainTextResponse(
                "TELNYX_API_KEY is not set: Call Control webhooks need it", 503
            )
        try:
            if kind == "call.initiated" and data["payload"].get("direction") != "outgoing":
                await api.answer(call_id)
            elif kind == "call.answered":
                url = stream_url(request, state.settings, TELNYX_STREAM_PATH)
                await api.start_streaming(call_id, url, state.settings.telnyx_codec)
        except TelnyxApiError as exc:
            log.error("telnyx.command_failed", event_type=kind, call_id=call_id, error=str(exc))
            return PlainTextResponse("Telnyx API command failed", 502)
        log.info("telnyx.call_control", event_type=kind, call_id=call_id)
        return JSONResponse({"status": "ok"})

    app.add_api_route("/telnyx/voice", telnyx_webhook, methods=["POST"])
    app.add_api_route("/telnyx/call-control", telnyx_webhook, methods=["POST"])

    @app.websocket(TELNYX_STREAM_PATH)
    async def telnyx_stream(websocket: WebSocket) -> None:
        codec = TelnyxCodec()

        async def hang_up(call_id: str) -> None:
            # A TeXML call ends when its <Connect> stream closes; a Call Control call does not,
            # so the gateway hangs those up through the API.
            if state.telnyx_api is not None and codec.client_state == CALL_CONTROL_STATE:
                await state.telnyx_api.hangup(call_id)

        await run_call(websocket, codec, hang_up)

    return app


def _caller_ids(form: Mapping[str, Any]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name, key in (("from", "From"), ("to", "To")):
        value = form.get(key)
        if isinstance(value, str) and value:
            ids[name] = value[:200]
    return ids
