"""The gateway's state: what every route shares, and nothing about HTTP.

``GatewayState`` holds the configuration, the way to reach Gemini, the live calls and the
sockets not yet calls, capacity and draining, and the one-stream-per-call ledger. Every other
module of the web layer imports it; it imports none of them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.agents import AgentGraph, Fallback
from gateway.call.bridge import BridgeOptions, CallBridge
from gateway.call.emitter import CallObserver
from gateway.call.http_tools import HttpToolRunner
from gateway.call.model_session import LiveSessionFactory
from gateway.carriers.telnyx_api import CallControl
from gateway.carriers.texml_api import TexmlRest
from gateway.carriers.twilio_api import TwilioRest
from gateway.metrics import Metrics
from gateway.security import StreamGrant, StreamLedger, StreamReusedError, StreamTokens
from gateway.settings import Settings

#: A refused upgrade or webhook is logged this many times per reason, then every 100th: a
#: flood of them must not flood the logs.
_REFUSALS_LOGGED = 10


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
    #: Telnyx's TeXML REST API (same key as Call Control): ends and transfers TeXML calls.
    texml_api: TexmlRest | None = None
    telnyx_public_key: Ed25519PublicKey | None = None
    twilio_rest: TwilioRest | None = None
    #: Calls the agents' HTTP tools; one client (and connection pool) for every call.
    tool_runner: HttpToolRunner | None = None
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
            dtmf_interdigit_s=s.dtmf_interdigit_ms / 1000,
            idle_prompt_s=s.idle_prompt_s,
            idle_hangup_s=s.idle_hangup_s,
            timezone=s.tzinfo(),
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

    def opening_fallback(self, called: str | None = None, phase: str | None = None) -> Fallback:
        """The fallback in force when a call starts: the agent's of the stage it starts in
        (``phase``, else the route of ``called``, the gateway's own number, else the first),
        or the file's."""
        stage = self.graph.start_stage(called, phase=phase)
        return self.graph.fallback(self.graph.agent(stage.agent_id))

    async def aclose(self) -> None:
        for client in (self.telnyx_api, self.texml_api, self.twilio_rest, self.tool_runner):
            if client is not None:
                await client.aclose()


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event
