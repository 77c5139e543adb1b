"""The server: settings + agents → state → app → uvicorn, and ``gateway serve`` around it.

:func:`build_state` and :func:`running_gateway` are shared by ``gateway serve``, ``gateway demo``
and the tests, so that all three run the very same server (real uvicorn, real sockets) rather
than three look-alikes; :func:`serve` adds what only a long-running process needs (logging,
signals and drain, the open-file limit, a frozen start-up heap), and is also what each worker
of ``gateway serve --workers N`` runs (``gateway.workers``: the master's socket, the shared
claims, telling the master it serves). ``gateway.cli`` imports this module only to serve, so
``gateway check`` (and the workers' master) answers without loading uvicorn, numpy and the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import structlog
import uvicorn

from gateway.agents import AgentGraph
from gateway.aio import cancel_and_wait
from gateway.call.emitter import CallObserver
from gateway.call.http_tools import HttpToolRunner
from gateway.carriers.telnyx_api import CallControl
from gateway.carriers.telnyx_signature import load_public_key
from gateway.carriers.texml_api import TexmlRest
from gateway.carriers.twilio_api import TwilioRest
from gateway.claims import SharedStreamLedger
from gateway.connections import MediaWebSocketProtocol, guarded_h11
from gateway.logs import configure_logging, register_secrets
from gateway.metrics import Metrics
from gateway.providers import ModelProviders
from gateway.records.delivery import RecordDelivery
from gateway.records.service import CallRecords
from gateway.records.store import RecordStore
from gateway.security import StreamClaims, StreamLedger, StreamTokens
from gateway.settings import ConfigError, Settings
from gateway.startup import announce, prepare_recordings_dir
from gateway.web.app import create_app
from gateway.web.state import GatewayState
from gateway.workers import WorkerContext


def build_state(
    settings: Settings,
    graph: AgentGraph,
    *,
    ssl_context: ssl.SSLContext | None = None,
    observers: tuple[CallObserver, ...] = (),
    worker: WorkerContext | None = None,
) -> GatewayState:
    """One shared SDK client per provider and process; one model session per call. A
    ``worker`` of a ``gateway serve --workers N`` shares its stream claims and the call
    records' start-up rule with its siblings, and has the admin API's reloads reach them."""
    telnyx_api = texml_api = None
    if settings.telnyx_api_key is not None:
        telnyx_key = settings.telnyx_api_key.get_secret_value()
        telnyx_api = CallControl(telnyx_key, base_url=settings.telnyx_api_base)
        texml_api = TexmlRest(telnyx_key, settings.telnyx_api_base)
    twilio_rest = None
    if settings.twilio_auth_token is not None:
        twilio_rest = TwilioRest(
            settings.twilio_auth_token.get_secret_value(), base_url=settings.twilio_api_base
        )
    metrics = Metrics(since=worker.started_at if worker is not None else None)
    if settings.gateway_secret is not None:
        secret = settings.gateway_secret.get_secret_value().encode()
        tokens = StreamTokens(secret, ttl_s=settings.stream_token_ttl)
    else:
        tokens = StreamTokens.ephemeral(ttl_s=settings.stream_token_ttl)
    ledger: StreamClaims = StreamLedger(retention_s=settings.ledger_retention_s())
    if worker is not None:
        ledger = SharedStreamLedger(worker.claims_dir)  # the master prunes it
    return GatewayState(
        settings=settings,
        graph=graph,
        providers=ModelProviders(settings, ssl_context=ssl_context),
        tokens=tokens,
        ledger=ledger,
        reload_others=worker.reload_others if worker is not None else None,
        observers=observers,
        metrics=metrics,
        records=call_records(settings, metrics, siblings_since=worker.since if worker else None),
        telnyx_api=telnyx_api,
        texml_api=texml_api,
        twilio_rest=twilio_rest,
        # Only when an agent has an HTTP tool: a client nobody uses need not exist.
        tool_runner=HttpToolRunner() if graph.spec.tools else None,
        telnyx_public_key=(
            load_public_key(settings.telnyx_public_key) if settings.telnyx_public_key else None
        ),
    )


def call_records(
    settings: Settings, metrics: Metrics, *, siblings_since: datetime | None = None
) -> CallRecords | None:
    """The call records of DATABASE_URL (None when it is empty), delivered to
    CALL_RECORDS_URL when that is set. Nothing connects until :meth:`CallRecords.start`.
    ``siblings_since``: other workers, started since then, share the database."""
    if settings.database_url is None:
        return None
    store = RecordStore(settings.database_url.get_secret_value(), siblings_since=siblings_since)
    delivery = None
    if settings.call_records_url is not None:
        assert settings.call_records_secret is not None  # the settings insist on it
        delivery = RecordDelivery(
            store,
            settings.call_records_url,
            settings.call_records_secret.get_secret_value(),
            retry_s=settings.call_records_retry_s,
            metrics=metrics,
        )
    return CallRecords(store, delivery=delivery, metrics=metrics)


class RecordsUnavailableError(Exception):
    """The call records' database could not be opened or migrated at start-up."""


def max_connections(settings: Settings) -> int:
    """Open connections one replica accepts: its calls, its pending streams, and room for the
    webhooks, probes and scrapes around them and for refused upgrades on their way out. More
    are closed as they are accepted, so descriptors remain for the calls' Gemini sockets."""
    return settings.max_concurrent_calls + settings.max_pending_streams + 1024


def open_files_needed(settings: Settings) -> int:
    """Descriptors a full replica holds: its connections, and per call a Gemini socket and a
    carrier REST connection, plus the process's own files."""
    return max_connections(settings) + 2 * settings.max_concurrent_calls + 64


def uvicorn_config(state: GatewayState, host: str, port: int) -> uvicorn.Config:
    refused = state.metrics.errors
    return uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        http=guarded_h11(
            max_connections=max_connections(state.settings),
            on_refused=lambda kind: refused.labels(kind).inc(),
        ),
        ws=MediaWebSocketProtocol,
        # Oversize carrier messages are refused by the websocket layer itself (close 1009).
        ws_max_size=state.settings.max_message_bytes,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Longer than the idle timeout of the load balancers that reuse upstream connections
        # (typically 60 s): with uvicorn's 5 s default the gateway closes an idle connection just
        # as the balancer reuses it, and that request fails (a 502 for the carrier's webhook).
        timeout_keep_alive=75,
    )


@dataclass(slots=True)
class RunningGateway:
    url: str
    port: int
    state: GatewayState
    server: uvicorn.Server
    task: asyncio.Task[None]

    def stop(self) -> None:
        """Stop serving now (live calls are ended); see :meth:`drain` for the polite way."""
        self.state.stop_watching()
        self.server.should_exit = True

    async def drain(self, timeout_s: float, *, grace_s: float = 5.0) -> None:
        """Stop taking calls, let live ones finish for ``timeout_s``, end the rest, stop.

        readyz turns 503 at once, so a load balancer stops sending new calls; new webhooks
        get a polite busy message. Calls still up after the timeout are ended politely (the
        fallback verbs play), and get ``grace_s`` to close before the server stops.
        """
        state = self.state
        state.draining = True
        log = structlog.get_logger("gateway")
        log.info("gateway.draining", active_calls=len(state.calls), timeout_s=timeout_s)
        if state.calls and not await state.wait_idle(timeout_s):
            log.info("gateway.drain_timeout", ending_calls=len(state.calls))
            for bridge in list(state.calls.values()):
                bridge.request_end("drained")
            await state.wait_idle(grace_s)
        self.stop()

    async def wait_closed(self) -> None:
        """Until the server has stopped (after :meth:`stop`)."""
        await asyncio.shield(self.task)


@contextlib.asynccontextmanager
async def running_gateway(
    state: GatewayState,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
) -> AsyncIterator[RunningGateway]:
    """Run the gateway on this event loop (port 0 picks a free one) until the block exits;
    on ``sock`` instead when given (a worker accepts on the socket its master bound).

    uvicorn's own signal capture is switched off: it re-raises the signal after shutting down,
    which would kill the process before the rest of the program (the simulator, logs) has
    cleaned up. ``gateway serve`` installs its own handlers and calls :meth:`stop` instead.
    """
    records = state.records
    if records is not None:  # before any call can start: the schema, the interrupted records
        try:
            await records.start()
        except Exception as exc:
            await records.aclose()
            cause = getattr(exc, "orig", None) or exc  # the driver's own error, not SQLAlchemy's
            first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise RecordsUnavailableError(first_line) from exc
    server = uvicorn.Server(uvicorn_config(state, host, port))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(
        server.serve(sockets=[sock] if sock is not None else None), name="uvicorn"
    )
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces a bind error
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield RunningGateway(f"http://{host}:{bound}", bound, state, server, task)
    finally:
        state.stop_watching()
        server.should_exit = True
        try:
            await task
        finally:
            if records is not None:  # after the calls: their records' last writes
                await records.aclose()


SIMULATOR_KEY = "simulator-key"


async def serve(
    settings: Settings,
    graph: AgentGraph,
    *,
    host: str,
    port: int,
    simulator: bool,
    worker: WorkerContext | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (SIGHUP re-reads agents.yaml); with ``simulator`` the models
    are the built-in simulators (Gemini Live's and OpenAI Realtime's). As a ``worker`` (see
    ``gateway.workers``): on the master's socket, logging its index, its start-up warnings left
    to the master, telling the master when it serves, and draining if the master dies."""
    from pydantic import SecretStr

    configure_logging(
        settings.log_level, settings.log_format, worker=worker.index if worker else None
    )
    register_secrets(settings.secrets())
    log = structlog.get_logger("gateway")
    if worker is None:
        announce(settings, graph, simulator=simulator, log=log)
    else:  # said once, by the master; the agents' secrets are scrubbed here all the same
        register_secrets(graph.secrets())
    async with contextlib.AsyncExitStack() as stack:
        ssl_context = None
        if simulator:
            # Both providers' simulators, trusted through one throwaway CA: a reload may move
            # the agents to the other provider.
            from callsim.live.server import LiveSimulator
            from callsim.realtime.server import RealtimeSimulator
            from callsim.tls import generate_tls

            tls = generate_tls()
            sim = await stack.enter_async_context(LiveSimulator(tls=tls))
            realtime = await stack.enter_async_context(RealtimeSimulator(tls=tls))
            settings = settings.model_copy(
                update={
                    "gemini_api_key": SecretStr(SIMULATOR_KEY),
                    "gemini_base_url": sim.base_url,
                    "openai_api_key": SecretStr(SIMULATOR_KEY),
                    "openai_base_url": realtime.base_url,
                }
            )
            ssl_context = sim.tls.client_context()
            log.info("simulator.started", base_url=sim.base_url, openai_base_url=realtime.base_url)
        state = build_state(settings, graph, ssl_context=ssl_context, worker=worker)
        raise_open_file_limit(open_files_needed(settings), log)
        prepare_recordings_dir(settings)
        signals = ServeSignals(state, settings.drain_timeout)
        # Before the port opens: once healthz answers, a SIGHUP or SIGTERM must find its
        # handler (SIGHUP's default action would kill the process, SIGTERM's skip the drain).
        signals.install(asyncio.get_running_loop())
        try:
            try:
                gateway = await stack.enter_async_context(
                    running_gateway(
                        state,
                        host=host,
                        port=port,
                        sock=worker.listening_socket() if worker is not None else None,
                    )
                )
            except RecordsUnavailableError as exc:
                detail = str(exc)
                password = settings.database_password()
                if password:
                    detail = detail.replace(password, "***")
                raise ConfigError(
                    f"DATABASE_URL: the call records database cannot be used: {detail}"
                ) from None
            signals.serving(gateway)
            freeze_startup_heap()
            log.info(
                "gateway.listening",
                url=gateway.url,
                provider=graph.provider,
                model=state.model_for(graph),
                endpoints=state.providers.endpoints(),
                public_url=settings.public_url or "derived from requests",
                agents=[a.id for a in graph.spec.agents],
                pid=os.getpid(),
            )
            if worker is not None:
                worker.ready()
                signals.watch_master(worker)
            await gateway.wait_closed()
        finally:
            await signals.aclose()


class ServeSignals:
    """``gateway serve``'s signals: SIGTERM/SIGINT drain (a second one stops at once), SIGHUP
    reloads agents.yaml. Installed before the server listens; a stop asked for before the
    server is up drains it as soon as it is (with no calls yet, that is a stop)."""

    def __init__(self, state: GatewayState, drain_timeout_s: float) -> None:
        self._drain_timeout_s = drain_timeout_s
        self._gateway: RunningGateway | None = None
        self._stop_asked = False
        self._draining: list[asyncio.Task[None]] = []
        self._watching: asyncio.Task[None] | None = None
        self.reloads = Reloads(state)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self.reloads.request)

    def watch_master(self, worker: WorkerContext) -> None:
        """A worker whose master dies drains as if the master had passed SIGTERM on: nothing
        would stop it otherwise, nor restart it, nor pass it a signal."""
        self._watching = asyncio.get_running_loop().create_task(
            worker.watch_master(self._stop), name="master-watch"
        )

    def serving(self, gateway: RunningGateway) -> None:
        self._gateway = gateway
        if self._stop_asked:
            self._stop_asked = False
            self._stop()

    def _stop(self) -> None:
        gateway = self._gateway
        if gateway is None:
            self._stop_asked = True
        elif self._draining:  # a second signal: stop now
            gateway.stop()
        else:
            task = asyncio.get_running_loop().create_task(gateway.drain(self._drain_timeout_s))
            self._draining.append(task)

    async def aclose(self) -> None:
        await cancel_and_wait(self._watching, *self._draining)
        await self.reloads.aclose()


class Reloads:
    """SIGHUP's reloads of agents.yaml, as tasks this process owns.

    A burst of signals (``kill -HUP`` in a loop, a config tool that signals on every file it
    writes) collapses: while one reload runs, at most one more waits, and it reads the file
    only once the running one is done, so it sees every change signalled so far.
    """

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self._tasks: set[asyncio.Task[object]] = set()
        self._waiting: asyncio.Task[object] | None = None

    def request(self) -> None:
        """A signal handler: reload soon, unless a reload that has not started will."""
        if self._waiting is not None:
            return
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            self._reload(), name="config-reload"
        )
        self._waiting = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        for task in list(self._tasks):  # wait for the one running, if any
            if task is not asyncio.current_task():
                await asyncio.wait({task})
        self._waiting = None  # from here on the file is read after any later signal
        await self._state.reload_agents()

    async def wait(self) -> None:
        """Until every reload asked for so far is done."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        await cancel_and_wait(*self._tasks)


def raise_open_file_limit(needed: int, log: structlog.stdlib.BoundLogger) -> None:
    """Raise the soft open-file limit to the hard one (1024 soft is common), and warn when even
    that cannot hold ``needed`` descriptors: a call takes two (carrier, Gemini), and when they
    run out every new call fails at once."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft < needed:
        log.warning(
            "gateway.open_file_limit_low",
            limit=soft,
            needed=needed,
            hint="raise the nofile limit (ulimit -n, the container's ulimits) or lower "
            "MAX_CONCURRENT_CALLS",
        )


def freeze_startup_heap() -> None:
    """Keep the garbage collector off everything that exists once the gateway is up.

    The imported SDKs (google-genai's types, pydantic, numpy, FastAPI) leave ~130k objects
    that live forever; a full collection walks them all, and took 65 ms idle and over 200 ms
    under load — a stall of the event loop, heard as a gap by every caller at once. Frozen,
    they are skipped, and collections only look at what calls allocate.
    """
    gc.collect()
    gc.freeze()
