"""The HTTP surface: the app factory, operational routes, and how a stream becomes a call.

Carrier routes live in :mod:`gateway.twilio_routes` and :mod:`gateway.telnyx_routes`; this
module owns what they share — the gateway's state (live calls, capacity, draining) and
:func:`run_call`, which hands an accepted websocket to a :class:`~gateway.bridge.CallBridge`.

Operations: ``GET /healthz`` (200 while the process is up), ``GET /readyz`` (200 while taking
calls, 503 while draining or full), ``GET /metrics`` (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.agents import AgentGraph, Fallback
from gateway.aio import cancel_and_wait
from gateway.bridge import BridgeOptions, CallBridge, CallHooks, CallObserver
from gateway.carriers.base import CarrierCodec, StreamStarted
from gateway.carriers.telnyx_api import CallControl
from gateway.carriers.twilio_api import TwilioRest
from gateway.live.session import LiveSession
from gateway.metrics import Metrics
from gateway.security import StreamTokens
from gateway.settings import Settings

LiveSessionFactory = Callable[[structlog.stdlib.BoundLogger], LiveSession]

#: Sent by a reverse proxy that asks another replica when one answers 503 (deploy/nginx).
RETRY_HEADER = "x-callbridge-retry"


def proxy_retries(request: Request | WebSocket) -> bool:
    """Whether the proxy in front will ask another replica if this one answers 503.

    Then a refusal (draining, full) is passed on with 503 rather than answered with the final
    busy message, which the caller would hear although another replica has room. The proxy asks
    its last replica without the header, so some replica always gives the final answer.
    """
    return request.headers.get(RETRY_HEADER) == "503"


def pass_on(refusal: str) -> PlainTextResponse:
    """The answer that makes a retrying proxy ask another replica."""
    return PlainTextResponse(f"{refusal}: ask another replica", 503, headers={"Retry-After": "1"})


@dataclass(slots=True)
class GatewayState:
    """What the routes share: configuration, the way to reach Gemini, the live calls."""

    settings: Settings
    graph: AgentGraph
    new_live_session: LiveSessionFactory
    tokens: StreamTokens
    metrics: Metrics = field(default_factory=Metrics)
    observers: tuple[CallObserver, ...] = ()
    telnyx_api: CallControl | None = None
    telnyx_public_key: Ed25519PublicKey | None = None
    twilio_rest: TwilioRest | None = None
    calls: dict[asyncio.Task[None], CallBridge] = field(default_factory=dict)
    draining: bool = False
    #: Set whenever no call is live (drain waits on it).
    idle: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is live, for at most ``timeout_s``; True if idle."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.idle.wait()
        except TimeoutError:
            return False
        return True

    def bridge_options(self) -> BridgeOptions:
        s = self.settings
        return BridgeOptions(
            max_message_bytes=s.max_message_bytes,
            playout_lead_ms=s.playout_lead_ms,
            reconnect_buffer_ms=s.reconnect_buffer_ms,
            max_duration_s=s.max_call_duration,
            idle_timeout_s=s.call_idle_timeout,
        )

    def refusal(self) -> str | None:
        """Why a new call cannot be taken now (draining, full), or None."""
        if self.draining:
            return "draining"
        if len(self.calls) >= self.settings.max_concurrent_calls:
            return "capacity"
        return None

    def admit_call(
        self, request: Request, log: structlog.stdlib.BoundLogger, carrier: str, call_id: str
    ) -> Response | str | None:
        """A new call's webhook: None to take it; a Response (503) that passes it on to a
        retrying proxy; or the reason it is refused for good, counted and logged, after which
        the route gives the carrier its final busy answer."""
        refusal = self.refusal()
        if refusal is None:
            return None
        if proxy_retries(request):
            log.info(f"{carrier}.call_passed_on", call_id=call_id, reason=refusal)
            return pass_on(refusal)
        self.metrics.calls.labels(f"rejected_{refusal}").inc()
        log.warning(f"{carrier}.call_refused", call_id=call_id, reason=refusal)
        return refusal

    def opening_fallback(self) -> Fallback:
        """The fallback in force when a call starts: the first stage's agent's, or the file's."""
        return self.graph.fallback(self.graph.agent(self.graph.first_stage.agent_id))

    def authorize(self, carrier: str) -> Callable[[StreamStarted], str | None]:
        """The stream check: a token minted for this very call, and room for it."""

        def check(started: StreamStarted) -> str | None:
            problem = self.tokens.check(
                started.parameters.get("token"), carrier, started.call_id, time.time()
            )
            if problem is None and len(self.calls) > self.settings.max_concurrent_calls:
                problem = "over capacity"
            if problem is not None:
                self.metrics.errors.labels("stream_auth").inc()
            return problem

        return check

    async def aclose(self) -> None:
        for client in (self.telnyx_api, self.twilio_rest):
            if client is not None:
                await client.aclose()


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


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


def public_url(request: Request | WebSocket, settings: Settings, path: str, *, ws: bool) -> str:
    """The URL of ``path`` as the carrier sees it (``wss://`` for streams).

    PUBLIC_URL wins when set; otherwise the URL is derived from the request as the proxy or
    tunnel saw it (X-Forwarded-Proto/Host, then Host), so ngrok and load balancers just work.
    Twilio signs exactly this URL, so the same derivation serves signature checks.
    """
    if settings.public_url is not None:
        base = settings.stream_base() if ws else settings.public_url
        assert base is not None
        return base + path
    headers = request.headers
    proto = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = headers.get("x-forwarded-host") or headers.get("host") or request.url.netloc
    host = host.split(",")[0].strip()
    secure = proto in ("https", "wss")
    scheme = ("wss" if secure else "ws") if ws else ("https" if secure else "http")
    return f"{scheme}://{host}{path}"


async def run_call(
    state: GatewayState, websocket: WebSocket, codec: CarrierCodec, hooks: CallHooks
) -> None:
    """Accept a carrier stream and serve it as one call; registered so drain can end it."""
    await websocket.accept()
    bridge = CallBridge(
        StarletteCarrierSocket(websocket),
        codec,
        graph=state.graph,
        new_live_session=state.new_live_session,
        options=state.bridge_options(),
        observers=state.observers,
        hooks=hooks,
        metrics=state.metrics,
    )
    task = asyncio.current_task()
    assert task is not None
    state.calls[task] = bridge
    state.idle.clear()
    try:
        await bridge.run()
    finally:
        state.calls.pop(task, None)
        if not state.calls:
            state.idle.set()


def create_app(state: GatewayState) -> FastAPI:
    from gateway.telnyx_routes import add_telnyx_routes
    from gateway.twilio_routes import add_twilio_routes

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        lag_probe = asyncio.create_task(state.metrics.watch_event_loop_lag(), name="lag-probe")
        try:
            yield
        finally:
            await cancel_and_wait(lag_probe)
        # Calls still running at shutdown are ended (each bridge closes both sides).
        for task in list(state.calls):
            task.cancel()
        if state.calls:
            await asyncio.wait(list(state.calls))
        await state.aclose()

    app = FastAPI(title="Callbridge gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(state.calls)})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        refusal = state.refusal()
        body = {"status": refusal or "ready", "active_calls": len(state.calls)}
        return JSONResponse(body, status_code=503 if refusal else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    add_twilio_routes(app, state)
    add_telnyx_routes(app, state)
    return app
