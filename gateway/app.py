"""The HTTP surface: thin routes that parse, answer, and hand streams to a CallBridge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.agents import AgentGraph
from gateway.bridge import BridgeOptions, CallBridge, CallObserver
from gateway.carriers.twilio import TwilioCodec, connect_stream_twiml
from gateway.live.session import LiveSession
from gateway.settings import Settings

TWILIO_STREAM_PATH = "/twilio/stream"

LiveSessionFactory = Callable[[structlog.stdlib.BoundLogger], LiveSession]


@dataclass(slots=True)
class GatewayState:
    """What the routes share: configuration, the way to reach Gemini, the live calls."""

    settings: Settings
    graph: AgentGraph
    new_live_session: LiveSessionFactory
    observers: tuple[CallObserver, ...] = ()
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

    app = FastAPI(title="Callbridge gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(state.calls)})

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = await request.form()
        call_sid = str(form.get("CallSid") or "")
        if not call_sid:
            return PlainTextResponse("missing CallSid: this endpoint is for Twilio webhooks", 400)
        params = {"call_sid": call_sid}
        for name, key in (("from", "From"), ("to", "To")):
            value = form.get(key)
            if isinstance(value, str) and value:
                params[name] = value[:200]
        url = stream_url(request, state.settings, TWILIO_STREAM_PATH)
        log.info("twilio.voice", call_id=call_sid, stream_url=url)
        return Response(connect_stream_twiml(url, params), media_type="text/xml")

    @app.websocket(TWILIO_STREAM_PATH)
    async def twilio_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        bridge = CallBridge(
            StarletteCarrierSocket(websocket),
            TwilioCodec(),
            graph=state.graph,
            new_live_session=state.new_live_session,
            options=state.bridge_options(),
            observers=state.observers,
        )
        task = asyncio.current_task()
        assert task is not None
        state.calls.add(task)
        try:
            await bridge.run()
        finally:
            state.calls.discard(task)

    return app
