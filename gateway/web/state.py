"""The gateway's state: what every route shares, and nothing about HTTP.

``GatewayState`` holds the configuration, the way to reach the models, the live calls and the
sockets not yet calls, capacity and draining, and the one-stream-per-call ledger. Every other
module of the web layer imports it; it imports none of them.

It also re-reads agents.yaml on demand (:meth:`GatewayState.reload_agents`, for SIGHUP and
``POST /admin/reload``): the new graph replaces ``graph`` for calls that start afterwards, while
each call in progress keeps the graph its bridge was built with, to its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.agents import AgentGraph, AgentsFileError, Fallback, load_agents
from gateway.call.bridge import BridgeOptions, CallBridge
from gateway.call.emitter import CallObserver
from gateway.call.http_tools import HttpToolRunner
from gateway.carriers.telnyx_api import CallControl
from gateway.carriers.texml_api import TexmlRest
from gateway.carriers.twilio_api import TwilioRest
from gateway.metrics import Metrics
from gateway.providers import ModelProviders
from gateway.records.service import CallRecords
from gateway.security import (
    StreamClaims,
    StreamGrant,
    StreamLedger,
    StreamReusedError,
    StreamTokens,
)
from gateway.settings import Settings
from gateway.startup import announce_graph
from gateway.web.feed import LiveFeed

#: A refused upgrade or webhook is logged this many times per reason, then every 100th: a
#: flood of them must not flood the logs.
_REFUSALS_LOGGED = 10


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload of agents.yaml did: the agents and model now in force, or why not."""

    ok: bool
    agents: tuple[str, ...] = ()
    model: str = ""
    #: The one-line message ``gateway check`` prints for the file (when not ``ok``).
    error: str = ""


@dataclass(slots=True)
class GatewayState:
    """What the routes share: configuration, the way to reach the models, the live calls."""

    settings: Settings
    #: The agents for calls that start now; a reload replaces it (never mutates it).
    graph: AgentGraph
    #: Each call's model sessions. Provider and model are chosen once per call, when its
    #: stream starts (``providers.sessions(graph)``): a reload may change them, a call never.
    providers: ModelProviders
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
    #: Call records (store, checkpoints, delivery); None when DATABASE_URL is empty.
    records: CallRecords | None = None
    #: The console's view of live calls; None without ADMIN_API_TOKEN (no console).
    feed: LiveFeed | None = None
    #: Admitted calls: these count for capacity, readyz and gateway_active_calls.
    calls: dict[asyncio.Task[None], CallBridge] = field(default_factory=dict)
    #: Accepted sockets that are not calls (yet): waiting for a start that proves them, or
    #: being refused politely. Owned here so shutdown ends them too.
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    ledger: StreamClaims = field(default_factory=lambda: StreamLedger(retention_s=900.0))
    #: With several workers: asks the master to have the others re-read agents.yaml too (a
    #: reload through the admin API reaches one worker; SIGHUP to the master reaches all).
    reload_others: Callable[[], None] | None = None
    draining: bool = False
    #: Set whenever no call is live (drain waits on it).
    idle: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))
    _refusals: dict[str, int] = field(default_factory=dict)
    #: One reload at a time: two would race to install graphs read at different moments.
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def call_observers(self) -> tuple[CallObserver, ...]:
        """Who hears every call's events: the configured observers and the console's feed."""
        if self.feed is None:
            return self.observers
        return (*self.observers, self.feed.observe)

    def model_for(self, graph: AgentGraph) -> str:
        """The model of ``graph``'s own provider (GEMINI_MODEL or OPENAI_MODEL if set, else
        the file's); an agent on the other provider gets that one's."""
        return self.providers.model(graph, graph.provider)

    async def reload_agents(self) -> ReloadResult:
        """Re-read agents.yaml (``AGENTS_FILE``) and use it for every call that starts after.

        The file is read and validated in a worker thread, so a large file or a slow disk never
        stalls the calls' audio on the event loop. A file that is not valid keeps the config in
        force, logs the reason on one line (``config.reload_failed``) and counts an error: an
        edit that breaks the file must not take the agents down. Calls in progress are not
        touched: each bridge holds the graph it started with.
        """
        log = structlog.get_logger("gateway")
        async with self._reload_lock:
            try:
                graph = await asyncio.to_thread(load_agents, self.settings.agents_file)
            except AgentsFileError as exc:
                self.metrics.config_reloads.labels("error").inc()
                log.warning("config.reload_failed", error=str(exc))
                return ReloadResult(ok=False, error=str(exc))
            missing = self.providers.missing_keys(graph)
            if missing:  # every call on those agents would fail at connect
                error = f"{self.settings.agents_file}: {missing[0]}"
                self.metrics.config_reloads.labels("error").inc()
                log.warning("config.reload_failed", error=error)
                return ReloadResult(ok=False, error=error)
            announce_graph(self.settings, graph, log)
            if graph.spec.tools and self.tool_runner is None:
                # The file now has HTTP tools and the gateway had no client for them. A runner
                # that exists is kept even if the tools went: calls in progress may use it.
                self.tool_runner = HttpToolRunner()
            self.graph = graph
            self.metrics.config_reloads.labels("ok").inc()
            agents = tuple(agent.id for agent in graph.spec.agents)
            model = self.model_for(graph)
            log.info("config.reloaded", agents=list(agents), model=model)
            return ReloadResult(ok=True, agents=agents, model=model)

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
            recordings_dir=s.recordings_dir,
            compiled_lane=s.compiled_lane,
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

    def stop_watching(self) -> None:
        """The server is stopping: end the consoles' event streams, which would otherwise
        keep it waiting for its grace period."""
        if self.feed is not None:
            self.feed.close()

    async def aclose(self) -> None:
        for client in (self.telnyx_api, self.texml_api, self.twilio_rest, self.tool_runner):
            if client is not None:
                await client.aclose()


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event
