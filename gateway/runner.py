"""The long-running CLI commands: ``serve``, ``call`` and ``simulator``.

Kept apart from ``cli.py`` so that ``gateway check`` (and a mistyped command) answers at once,
without importing uvicorn, numpy and the google-genai SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal

import structlog

from gateway.agents import AgentGraph
from gateway.aio import cancel_and_wait
from gateway.logs import configure_logging, register_secrets
from gateway.server import build_state, open_files_needed, running_gateway
from gateway.settings import Settings

SIMULATOR_KEY = "simulator-key"


async def serve(
    settings: Settings, graph: AgentGraph, *, host: str, port: int, simulator: bool
) -> None:
    """Run until SIGTERM/SIGINT; with ``simulator`` Gemini is the built-in Live simulator."""
    from pydantic import SecretStr

    configure_logging(settings.log_level, settings.log_format)
    register_secrets(settings.secrets())
    log = structlog.get_logger("gateway")
    for warning in graph.warnings:
        log.warning("agents.warning", detail=warning)
    unverified = [] if simulator else settings.unverified_carriers()
    if unverified:  # only reachable with ALLOW_UNSIGNED_WEBHOOKS=true (cli.py refuses otherwise)
        log.warning(
            "security.unsigned_webhooks_allowed",
            risk="anyone who finds this server can place calls to your agents and spend your "
            "Gemini quota; set the verification keys before taking real calls",
            missing=unverified,
        )
    async with contextlib.AsyncExitStack() as stack:
        ssl_context = None
        if simulator:
            from callsim.live.server import LiveSimulator

            sim = await stack.enter_async_context(LiveSimulator())
            settings = settings.model_copy(
                update={"gemini_api_key": SecretStr(SIMULATOR_KEY), "gemini_base_url": sim.base_url}
            )
            ssl_context = sim.tls.client_context()
            log.info("simulator.started", base_url=sim.base_url)
        state = build_state(settings, graph, ssl_context=ssl_context)
        raise_open_file_limit(open_files_needed(settings), log)
        gateway = await stack.enter_async_context(running_gateway(state, host=host, port=port))
        freeze_startup_heap()
        loop = asyncio.get_running_loop()
        draining: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            if draining:  # a second signal: stop now
                gateway.stop()
            else:
                draining.append(loop.create_task(gateway.drain(settings.drain_timeout)))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        log.info(
            "gateway.listening",
            url=gateway.url,
            model=settings.gemini_model or graph.model,
            live_endpoint=settings.gemini_base_url or "default",
            public_url=settings.public_url or "derived from requests",
            agents=[a.id for a in graph.spec.agents],
        )
        await gateway.wait_closed()
        for task in draining:
            await cancel_and_wait(task)


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
