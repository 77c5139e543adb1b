"""``gateway serve | check | call | dial | demo | simulator``.

Configuration mistakes end here, before anything listens: one line naming the variable or
the agents.yaml field, exit status 2, and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.agents import AgentGraph, AgentsFileError, load_agents
from gateway.settings import ConfigError, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from gateway.workers import WorkerContext

EXIT_CONFIG = 2

NO_KEY_MESSAGES = {
    "gemini": """\
GEMINI_API_KEY is not set, so the gateway cannot reach Gemini.
  Set it in the environment:   export GEMINI_API_KEY=your-key   (GOOGLE_API_KEY also works)
  or in a .env file:            echo GEMINI_API_KEY=your-key >> .env
  Get a key at https://aistudio.google.com/apikey
Or try it without Gemini, answering calls with the built-in Live simulator:
  gateway serve --simulator""",
    "openai": """\
OPENAI_API_KEY is not set, so the gateway cannot reach OpenAI Realtime (agents on
provider: openai in the agents file).
  Set it in the environment:   export OPENAI_API_KEY=your-key
  or in a .env file:            echo OPENAI_API_KEY=your-key >> .env
  Get a key at https://platform.openai.com/api-keys
Or try it without OpenAI, answering calls with the built-in Realtime simulator:
  gateway serve --simulator""",
}

UNVERIFIED_MESSAGE = """\
refusing to serve {carriers} without webhook verification: anyone who finds this
server could place calls to your agents and spend your model quota.
{missing}
  Serve only the carriers you use:   CARRIERS=twilio   (or telnyx)
  Experiments only, never production: ALLOW_UNSIGNED_WEBHOOKS=true"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Callbridge: phone calls bridged to Gemini Live agents.",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway (Twilio webhooks and media streams)")
    serve.add_argument("--host", help="default: HOST, else 0.0.0.0")
    serve.add_argument("--port", type=port_number, help="default: PORT, else 8080")
    serve.add_argument(
        "--simulator",
        action="store_true",
        help="answer calls with the built-in Live simulator instead of Gemini (no key, no cost)",
    )
    serve.add_argument(
        "--workers",
        type=worker_count,
        metavar="N",
        help="processes serving calls on the one port (default: WORKERS, else one per core "
        "the container may use; 1: a single process, no master)",
    )
    serve.set_defaults(run=_cmd_serve)

    check = sub.add_parser("check", help="validate an agents file and print the agent graph")
    check.add_argument("agents_file", nargs="?", help="default: AGENTS_FILE or agents.yaml")
    check.set_defaults(run=_cmd_check)

    call = sub.add_parser(
        "call", help="place a simulated Twilio, Telnyx or browser call to a running gateway"
    )
    call.add_argument("url", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    call.add_argument("--carrier", choices=("twilio", "telnyx", "web"), default="twilio")
    call.add_argument(
        "--reorder", type=int, metavar="N",
        help="telnyx: shuffle media within windows of N frames, as Telnyx may deliver them",
    )  # fmt: skip
    call.add_argument(
        "--call-codec", choices=("PCMU", "PCMA", "G722", "L16"),
        help="telnyx: the call leg's own codec (default PCMU; Telnyx streams the caller in it "
        "unless it can transcode to the one asked for: only PCMU<->PCMA)",
    )  # fmt: skip
    call.add_argument("--wav", type=Path, help="what the caller says (a PCM WAV, any rate)")
    call.add_argument(
        "--audio",
        help="what the caller says as segments, e.g. 'silence:3,tone:440:1.5,silence:4'",
    )
    call.add_argument("--out", type=Path, help="write what the caller heard to this WAV")
    call.add_argument("--linger", type=float, default=3.0, help="seconds to listen after")
    call.add_argument("--dtmf", action="append", default=[], metavar="DIGIT@SECONDS")
    call.add_argument("--hangup", choices=("stop", "close"), default="stop")
    call.add_argument(
        "--stream-url",
        help="connect here instead of the stream URL the gateway gave (TwiML, TeXML, /web/calls)",
    )
    call.add_argument(
        "--auth-token",
        help="twilio: sign the webhook and stream as Twilio does (default: TWILIO_AUTH_TOKEN)",
    )
    call.add_argument(
        "--admin-token",
        help="web: the gateway's admin token, to issue the call (default: ADMIN_API_TOKEN)",
    )
    call.add_argument("--phase", help="web: the pipeline stage to start in (default: the first)")
    call.set_defaults(run=_cmd_call)

    dial = sub.add_parser(
        "dial",
        help="have a running gateway place a real call (POST /calls; needs ADMIN_API_TOKEN)",
    )
    dial.add_argument("--to", required=True, help="the number to call, E.164: +15551234567")
    dial.add_argument(
        "--from", dest="from_", required=True, help="the gateway's number to call from"
    )
    dial.add_argument(
        "--carrier", choices=("twilio", "telnyx"), help="default: the gateway's first"
    )
    dial.add_argument("--phase", help="the pipeline stage to start in (default: as routed)")
    dial.add_argument(
        "--var", action="append", default=[], type=variable, metavar="NAME=VALUE",
        help="a prompt variable, {{param.NAME}} in agents.yaml (repeatable)",
    )  # fmt: skip
    dial.add_argument("--url", help="the gateway's base URL (default: http://127.0.0.1:$PORT)")
    dial.set_defaults(run=_cmd_dial)

    demo = sub.add_parser(
        "demo", help="one simulated call with a handoff, against the built-in model simulator"
    )
    demo.add_argument(
        "--provider",
        choices=("gemini", "openai"),
        help="the model simulator to talk to: Gemini Live or OpenAI Realtime "
        "(default: the agents file's provider)",
    )
    demo.add_argument(
        "--agents",
        type=Path,
        help="agents file (default: AGENTS_FILE, else ./agents.yaml, else the bundled example)",
    )
    demo.add_argument("--out", type=Path, default=Path("heard.wav"))
    demo.add_argument(
        "--stay",
        action="store_true",
        help="after the call, keep the gateway up for the console (/console) until Ctrl-C",
    )
    demo.set_defaults(run=_cmd_demo)

    calls = sub.add_parser(
        "calls", help="the call records: list, show one, export as JSON Lines (admin token)"
    )
    calls.set_defaults(run=_cmd_calls)
    from gateway.records import shell  # light: argparse and the store's module

    shell.add_arguments(calls)

    sim = sub.add_parser("simulator", help="run the Live simulator alone (for GEMINI_BASE_URL)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=port_number, default=9443)
    sim.add_argument("--script", type=Path, help="YAML/JSON script of what the model says")
    sim.add_argument("--ca-file", type=Path, default=Path("live-simulator-ca.pem"))
    sim.add_argument("--provider", choices=("gemini", "openai"), default="gemini")
    sim.set_defaults(run=_cmd_simulator)
    return parser


# ---------------------------------------------------------------------- shared start-up


def port_number(text: str) -> int:
    """argparse type for ports: a short usage error, not a traceback or a wrapped number."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


def worker_count(text: str) -> int:
    """argparse type for ``--workers``: a whole number, at least 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker, got {count}")
    return count


def variable(text: str) -> tuple[str, str]:
    """argparse type for ``--var NAME=VALUE`` (the gateway checks the name itself)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def load_config(agents_file: Path | None = None) -> tuple[Settings, AgentGraph]:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    try:
        graph = load_agents(agents_file or settings.agents_file)
    except AgentsFileError as exc:
        raise ConfigError(str(exc)) from None
    return settings, graph


# ---------------------------------------------------------------------- commands


def _cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.agents_file) if args.agents_file else None
    if path is None:
        try:
            path = load_settings().agents_file
        except SettingsError as exc:
            raise ConfigError(str(exc)) from None
    try:
        graph = load_agents(path)
    except AgentsFileError as exc:
        raise ConfigError(str(exc)) from None
    print(f"{path}: OK")
    print(graph.describe())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.workers import WorkerContext  # light: no uvicorn, SDK or numpy

    worker = WorkerContext.from_environ()  # started by a master: one of its workers
    try:
        return _serve(args, worker)
    except ConfigError as exc:
        # A worker that cannot start leaves the message to its master, which says it once
        # for all its workers (and exits 2), as one process would.
        if worker is not None and worker.report_error(str(exc)):
            return EXIT_CONFIG
        raise


def _serve(args: argparse.Namespace, worker: WorkerContext | None) -> int:
    settings, graph = load_config()
    if not args.simulator:
        keyless = settings.keyless(graph.providers)
        if keyless:
            raise ConfigError(NO_KEY_MESSAGES[keyless[0]])
        missing = settings.unverified_carriers()
        if missing and not settings.allow_unsigned_webhooks:
            carriers = settings.carriers.replace(",", " and ")
            raise ConfigError(
                UNVERIFIED_MESSAGE.format(
                    carriers=carriers, missing="\n".join(f"  {line}" for line in missing)
                )
            )
    host = args.host or settings.host
    port = args.port or settings.port
    if worker is None:
        from gateway.cpus import available_cpus
        from gateway.workers import run_master

        count = args.workers or settings.workers or available_cpus()
        if count > 1:
            return run_master(
                settings, graph, host=host, port=port, count=count, simulator=args.simulator
            )
    from gateway.server import serve  # deferred: pulls in uvicorn, the SDK and numpy

    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(
            serve(settings, graph, host=host, port=port, simulator=args.simulator, worker=worker)
        )
    return 0


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when available: the gateway is a socket shuffler, and uvloop's I/O path costs
    a fraction of asyncio's per message (measured in benchmarks/load.py)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _cmd_call(args: argparse.Namespace) -> int:
    from callsim.commands import place_call

    if args.wav and args.audio:
        raise ConfigError("give either --wav or --audio, not both")
    _carrier_options(args)
    return asyncio.run(place_call(args))


#: ``gateway call``'s options that only one kind of call uses.
_PHONE_ONLY = ("reorder", "call_codec", "auth_token")
_WEB_ONLY = ("admin_token", "phase")


def _carrier_options(args: argparse.Namespace) -> None:
    """Refuse another carrier's options, and fill in the defaults the environment gives.

    Refused rather than ignored: a smoke test that silently dropped ``--reorder`` or
    ``--auth-token`` would pass without testing what its command line says. The defaults are
    read here, not in the parser, so that ``TWILIO_AUTH_TOKEN`` in the environment is not
    mistaken for an ``--auth-token`` given to a browser call.
    """
    web = args.carrier == "web"
    others = _PHONE_ONLY if web else _WEB_ONLY
    given = [name for name in others if getattr(args, name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        only = "Twilio and Telnyx calls, not --carrier web" if web else "--carrier web"
        raise ConfigError(f"{flags}: only for {only}")
    if web:
        args.admin_token = (args.admin_token or os.environ.get("ADMIN_API_TOKEN", "")).strip()
        if not args.admin_token:
            raise ConfigError(
                "--carrier web needs the admin token: --admin-token or ADMIN_API_TOKEN"
            )
    else:
        args.reorder = 0 if args.reorder is None else args.reorder
        args.call_codec = args.call_codec or "PCMU"
        args.auth_token = args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or None


def _cmd_dial(args: argparse.Namespace) -> int:
    """POST the call to the running gateway's ``/calls`` and print its answer.

    A client of the admin API, not the server: it reads only ADMIN_API_TOKEN and PORT, so it
    works from any shell that can reach the gateway, without its keys or agents file."""
    import httpx  # deferred: ``gateway check`` stays light

    from gateway.answers import error_detail

    token = os.environ.get("ADMIN_API_TOKEN", "").strip()
    if not token:
        raise ConfigError("ADMIN_API_TOKEN is not set: gateway dial sends it as the admin token")
    if args.url:
        base = args.url.rstrip("/")
    else:
        try:
            port = port_number(os.environ.get("PORT") or "8080")
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"PORT: {exc}") from None
        base = f"http://127.0.0.1:{port}"
    body: dict[str, object] = {"to": args.to, "from": args.from_}
    if args.carrier:
        body["carrier"] = args.carrier
    if args.phase:
        body["phase"] = args.phase
    if args.var:
        body["variables"] = dict(args.var)
    try:
        response = httpx.post(
            f"{base}/calls",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=20.0,
        )
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the gateway at {base}: {type(exc).__name__}", file=sys.stderr)
        return 1
    if response.status_code != 201:
        print(f"error: HTTP {response.status_code}: {error_detail(response)}", file=sys.stderr)
        return 1
    print(json.dumps(response.json()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from callsim.demo import run_demo

    return asyncio.run(
        run_demo(agents_file=args.agents, out=args.out, stay=args.stay, provider=args.provider)
    )


def _cmd_calls(args: argparse.Namespace) -> int:
    from gateway.records import shell

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    return asyncio.run(shell.run(args, settings))


def _cmd_simulator(args: argparse.Namespace) -> int:
    from callsim.commands import run_simulator

    # The simulator serves load tests too (benchmarks/load.py): uvloop's TLS and socket paths
    # let one process play the model for several times more calls.
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        return runner.run(run_simulator(args))
