"""What the web layer shares: the gateway's state and the small helpers its routes use.

``GatewayState`` holds the configuration, the way to reach Gemini, the live calls and the
sockets not yet calls, capacity and draining, and the one-stream-per-call ledger. The carrier
routes (:mod:`gateway.twilio_routes`, :mod:`gateway.telnyx_routes`), :mod:`gateway.streams` and
the app factory (:mod:`gateway.app`) all import it from here, and nothing here imports them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect

from gateway.agents import AgentGraph, Fallback
from gateway.call.bridge import BridgeOptions, CallBridge, CallObserver, LiveSessionFactory
from gateway.carriers.telnyx_api import CallControl
from gateway.carriers.twilio_api import TwilioRest
from gateway.metrics import Metrics
from gateway.security import StreamGrant, StreamLedger, StreamReusedError, StreamTokens
from gateway.settings import Settings

#: Sent by a reverse proxy that asks another replica when one answers 503 (deploy/nginx).
RETRY_HEADER = "x-callbridge-retry"
#: A refused upgrade or webhook is logged this many times per reason, then every 100th: a
#: flood of them must not flood the logs.
_REFUSALS_LOGGED = 10


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
    #: Admitted calls: these count for capacity, readyz and gateway_active_calls.
    calls: dict[asyncio.Task[None], CallBridge] = field(default_factory=dict)
    #: Accepted sockets that are not calls (yet): waiting for a start that proves them, or
    #: being refused politely. Owned here so shutdown ends them too.
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    ledger: StreamLedger = field(default_factory=lambda: StreamLedger(retention_s=900.0))
    draining: bool = False
    #: Set whenever no call is live (drain waits on it).
    idle: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))
    _refusals: dict[str, int] = field(default_factory=dict)

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
            max_duration_s=s.max_call_duration,
            idle_timeout_s=s.call_idle_timeout,
            log_transcripts=s.log_transcripts,
        )

    def claim_stream(self, token: object, carrier: str, call_id: str | None = None) -> StreamGrant:
        """Check ``token`` (for ``call_id``, when the stream has said which call it is) and
        claim that call's one stream; raises :class:`StreamTokenError` (or its
        :class:`StreamReusedError`) if it admits nothing."""
        now = time.time()
        if call_id is None:
            grant = self.tokens.verify(token, carrier, now)
        else:
            grant = self.tokens.check(token, carrier, call_id, now)
        if not self.ledger.claim(grant, now):
            raise StreamReusedError("stream token already used")
        return grant

    def has_room(self) -> bool:
        return len(self.calls) < self.settings.max_concurrent_calls

    def enter_call(self, task: asyncio.Task[None], bridge: CallBridge) -> None:
        """``task``'s socket is a call from now on."""
        self.pending.discard(task)
        self.calls[task] = bridge
        self.idle.clear()

    def leave(self, task: asyncio.Task[None]) -> None:
        """``task``'s socket is gone, call or not."""
        self.pending.discard(task)
        if self.calls.pop(task, None) is not None and not self.calls:
            self.idle.set()

    def log_refusal(self, log: structlog.stdlib.BoundLogger, event: str, **fields: Any) -> None:
        """Log a refused upgrade or webhook: the first few per event, then every 100th."""
        n = self._refusals[event] = self._refusals.get(event, 0) + 1
        if n <= _REFUSALS_LOGGED or n % 100 == 0:
            log.warning(event, count=n, **fields)

    def refusal(self) -> str | None:
        """Why a new call cannot be taken now (draining, full), or None."""
        if self.draining:
            return "draining"
        if not self.has_room():
            return "capacity"
        return None

    def admit_call(
        self, request: Request, log: structlog.stdlib.BoundLogger, carrier: str, call_id: str
    ) -> Response | str | None:
        """A new call's webhook: None to take it; a Response (409 for a call that already had
        its stream: a replay, which gets no fresh token; 503 to pass it on to a retrying
        proxy); or the reason it is refused for good, counted and logged, after which the
        route gives the carrier its final busy answer."""
        if self.ledger.streamed(carrier, call_id, time.time()):
            self.log_refusal(log, f"{carrier}.webhook_replayed", call_id=call_id)
            return PlainTextResponse("this call already has its stream", 409)
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

    async def aclose(self) -> None:
        for client in (self.telnyx_api, self.twilio_rest):
            if client is not None:
                await client.aclose()


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


#: What a route answers a client that left before its request had arrived (nobody reads it).
CLIENT_GONE = Response(status_code=400)


async def read_body(request: Request) -> bytes | None:
    """The whole request body, or None if the client left first (the 10 s request deadline
    closes slow ones): that is the client's business, not an error with a traceback."""
    try:
        return await request.body()
    except ClientDisconnect:
        return None


async def read_form(request: Request) -> FormData | None:
    """The request's form, or None if the client left before sending it all."""
    try:
        return await request.form()
    except ClientDisconnect:
        return None


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
