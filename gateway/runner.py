"""The long-running CLI commands: ``serve``, ``call`` and ``simulator``.

Kept apart from ``cli.py`` so that ``gateway check`` (and a mistyped command) answers at once,
without importing uvicorn, numpy and the google-genai SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from pathlib import Path

import structlog

from gateway.agents import AgentGraph
from gateway.aio import cancel_and_wait
from gateway.logs import configure_logging, register_secrets
from gateway.server import build_state, open_files_needed, running_gateway
from gateway.settings import ConfigError, Settings

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
            from gateway.simulator.live_server import LiveSimulator

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


async def place_call(args: argparse.Namespace) -> int:
    """``gateway call``: one simulated Twilio or Telnyx call; prints what happened."""
    from gateway.simulator.caller import TwilioCaller
    from gateway.simulator.caller_audio import Segment, Silence, Wav, parse_spec, render
    from gateway.simulator.caller_result import CallResult
    from gateway.simulator.telnyx_caller import TelnyxCaller

    telnyx = args.carrier == "telnyx"
    segments: list[Segment]
    if args.wav:
        segments = [Silence(0.5), Wav(args.wav)]
    elif args.audio:
        try:  # a Telnyx call may be wideband: allow tones up to 8 kHz there
            segments = parse_spec(args.audio, rate=16000 if telnyx else 8000)
        except ValueError as exc:
            raise ConfigError(f"--audio: {exc}") from None
    else:
        segments = [Silence(5.0)]
    dtmf: list[tuple[float, str]] = []
    for item in args.dtmf:
        digit, _, at = item.partition("@")
        try:
            dtmf.append((float(at), digit))
        except ValueError:
            raise ConfigError(f"--dtmf {item!r}: expected DIGIT@SECONDS, e.g. 5@2.5") from None
    caller: TwilioCaller | TelnyxCaller
    try:
        common = {"dtmf": dtmf, "hangup": args.hangup, "linger_s": args.linger,
                  "stream_url": args.stream_url}  # fmt: skip
        if telnyx:
            caller = TelnyxCaller(
                args.url,
                speech=segments,
                reorder_window=args.reorder,
                call_codec=args.call_codec,
                **common,
            )
        else:
            caller = TwilioCaller(
                args.url, audio=render(segments), auth_token=args.auth_token, **common
            )
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    result: CallResult = await caller.run()
    codecs = f" ({result.codec} in, {result.bidirectional_codec} back)" if telnyx else ""
    print(f"carrier:     {args.carrier}{codecs}")
    print(f"stream:      {result.stream_url}")
    print(f"parameters:  {', '.join(sorted(result.parameters)) or 'none'}")
    agent_s = result.media_messages_received * 0.020  # the gateway sends 20 ms per message
    print(f"heard:       {result.heard_s:.2f} s of call, {agent_s:.2f} s of it agent audio")
    print(f"clears:      {len(result.clear_times)}   marks echoed: {len(result.mark_echoes)}")
    print(f"ended by:    {result.closed_by} (code {result.close_code})")
    for violation in result.violations:
        print(f"VIOLATION:   {violation}")
    if args.out:
        await asyncio.to_thread(result.write_wav, args.out)
        print(f"wrote:       {args.out}")
    return 1 if result.violations else 0


async def run_simulator(args: argparse.Namespace) -> int:
    """``gateway simulator``: the Live simulator alone, for a gateway run separately."""
    from gateway.simulator.live_server import LiveSimulator
    from gateway.simulator.script import ScriptError, load_script

    configure_logging("info", "console")
    script = None
    if args.script:
        try:
            script = load_script(args.script)
        except (OSError, ScriptError) as exc:
            raise ConfigError(f"{args.script}: {exc}") from None
    async with LiveSimulator(script=script, host=args.host, port=args.port) as sim:
        ca_file = await asyncio.to_thread(Path(args.ca_file).resolve)
        await asyncio.to_thread(sim.tls.write_ca, ca_file)
        print("Live simulator listening. Point a gateway at it with:", file=sys.stderr)
        print(f"  export GEMINI_BASE_URL={sim.base_url}", file=sys.stderr)
        print(f"  export SSL_CERT_FILE={ca_file}", file=sys.stderr)
        print("  export GEMINI_API_KEY=anything", file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return 0
