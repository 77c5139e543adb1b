"""The simulator-backed CLI commands: ``gateway call`` (one simulated call) and ``gateway
simulator`` (a model simulator alone). ``gateway.cli`` imports this module only to run them."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from callsim.callers.audio import Segment, Silence, Wav, parse_spec, render
from callsim.callers.result import CallResult
from callsim.callers.telnyx import TelnyxCaller
from callsim.callers.twilio import TwilioCaller
from callsim.callers.web import WebCaller
from callsim.live.script import ScriptError, load_script
from callsim.live.server import LiveSimulator
from callsim.realtime.server import RealtimeSimulator
from gateway.logs import configure_logging
from gateway.settings import ConfigError


async def place_call(args: argparse.Namespace) -> int:
    """``gateway call``: one simulated Twilio, Telnyx or browser call; prints what happened.

    ``gateway.cli`` has checked the options against the carrier and filled in their defaults.
    """
    telnyx, web = args.carrier == "telnyx", args.carrier == "web"
    segments: list[Segment]
    if args.wav:
        segments = [Silence(0.5), Wav(args.wav)]
    elif args.audio:
        try:  # a Telnyx or browser call may be wideband: allow tones up to 8 kHz there
            segments = parse_spec(args.audio, rate=16000 if telnyx or web else 8000)
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
    caller: TwilioCaller | TelnyxCaller | WebCaller
    try:
        common = {"dtmf": dtmf, "hangup": args.hangup, "linger_s": args.linger,
                  "stream_url": args.stream_url}  # fmt: skip
        if web:
            caller = WebCaller(
                args.url, admin_token=args.admin_token, speech=segments, phase=args.phase, **common
            )
        elif telnyx:
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
    codecs = f" ({result.codec} in, {result.bidirectional_codec} back)" if telnyx or web else ""
    print(f"carrier:     {args.carrier}{codecs}")
    if web:
        print(f"call:        {result.call_sid or 'not issued'} (HTTP {result.webhook_status})")
    print(f"stream:      {result.stream_url}")
    print(f"parameters:  {', '.join(sorted(result.parameters)) or 'none'}")
    if web:  # PCM as received: its bytes are its length (a message may hold several frames)
        agent_s = result.media_bytes_received / result.heard_bytes_per_second
    else:
        agent_s = result.media_messages_received * 0.020  # the carriers get 20 ms per message
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
    """``gateway simulator``: the Live (or, with ``--provider openai``, the Realtime) simulator
    alone, for a gateway run separately."""
    configure_logging("info", "console")
    script = None
    if args.script:
        try:
            script = load_script(args.script)
        except (OSError, ScriptError) as exc:
            raise ConfigError(f"{args.script}: {exc}") from None
    simulator: LiveSimulator | RealtimeSimulator
    if getattr(args, "provider", "gemini") == "openai":
        simulator = RealtimeSimulator(script=script, host=args.host, port=args.port)
        name, exports = "Realtime", ("OPENAI_BASE_URL", "OPENAI_API_KEY")
    else:
        simulator = LiveSimulator(script=script, host=args.host, port=args.port)
        name, exports = "Live", ("GEMINI_BASE_URL", "GEMINI_API_KEY")
    async with simulator as sim:
        ca_file = await asyncio.to_thread(Path(args.ca_file).resolve)
        await asyncio.to_thread(sim.tls.write_ca, ca_file)
        print(f"{name} simulator listening. Point a gateway at it with:", file=sys.stderr)
        print(f"  export {exports[0]}={sim.base_url}", file=sys.stderr)
        print(f"  export SSL_CERT_FILE={ca_file}", file=sys.stderr)
        print(f"  export {exports[1]}=anything", file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return 0
