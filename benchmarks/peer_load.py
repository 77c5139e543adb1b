"""Peer-comparable load benchmark: the workload an issue used to compare this gateway with pipecat.

Run by hand (not a test)::

    .venv/bin/python benchmarks/peer_load.py --calls 10,20,30,40,50 --duration 30
    .venv/bin/python benchmarks/peer_load.py --gateway-root /path/to/older/checkout   # "before"
    .venv/bin/python benchmarks/peer_load.py --calls 10,20,30 --capacity              # largest N
    .venv/bin/python benchmarks/peer_load.py --calls 30,50 --against ../before --rounds 2  # A/B
    .venv/bin/python benchmarks/peer_load.py --calls 50 --against ../before --side-by-side
    .venv/bin/python benchmarks/peer_load.py --calls 10,30,50 --wire   # root, tcpdump: on the wire

The workload, as the issue describes pipecat 1.14's run on one 2-core machine: the same fake
Gemini Live, a Twilio load generator sending caller audio every 20 ms for the whole call, the
simulated model answering with 1 s of audio after every 1.5 s of caller audio it received, the
gateway process pinned to one core. ``load.py`` measures a different workload (callers that
speak in turns, handoffs under load); this one has no turns, no handoffs and no tools, so its
figures can sit next to the peer's.

- The gateway is its own ``gateway serve`` process (``--gateway-workers N`` > 1: ``gateway
  serve --workers N``), pinned to ``--gateway-cpus``. It is started as ``PYTHONPATH=ROOT python
  -m gateway serve`` in ROOT, this checkout or ``--gateway-root``'s, with its agents file and
  call records in a temporary directory, and the modules it imports are checked to come from
  ROOT: a "before" run measures only the old code.
- The Live simulator (``callsim.live``, this process, uvloop) answers on a schedule
  (``answer_every_s`` / ``answer_s``): independent of its VAD, so the caller who never stops is
  never taken for a barge-in; model audio streams in 40 ms chunks at ``--speed`` times real
  time, as Gemini's does. The caller processes (``--workers``, niced) share ``--load-cpus``
  with it.
- Each caller (``callsim.callers.twilio``) sends a tone at ``--caller-dbfs`` at its own pitch
  in every 20 ms frame: every frame is real audio, and the pitch tells the calls' Live
  sessions apart.

Measured per level, all peers sharing CLOCK_MONOTONIC:

- gateway CPU over the steady window (all callers connected), from /proc for the gateway
  process and its children: % of one core, and ms of CPU per call-second;
- added latency up: a caller frame's send → its arrival at the simulator (frames sent before
  the call's Live connection was set up are held and replayed by the gateway: counted apart);
- added latency down: the first audio chunk of each model answer leaving the simulator → the
  first media message of that answer at the caller;
- lost: caller frames that never reached the simulator; late: holes of ≤ 100 ms inside an
  answer as the caller heard it (its playback ran dry);
- RSS per call (peak over idle, over the process tree), the gateway's own event-loop lag p99
  (``/metrics``), the load generators' CPU, and the media messages the gateway sent each call;
- the load generators' loop lag p99: how late the simulator's loop, and the callers', ran a
  5 ms timer. Both stamp what arrives from their loops (the simulator a caller frame, the
  callers the model's audio), so a busy load generator adds about that much to the latency
  measured; the gateway's share of a p99 is what is left above it.

``--wire`` reads the added latency again from a capture of the loopback (:mod:`wire`): both
ends are the kernel's timestamps of the packets in and out of the gateway, so the load
generators' own delays drop out (:func:`_wire_latency`).

"SLO met": p99 ≤ 5 ms added each way and nothing lost, late or violated; a second column says
whether both p99s stayed under 20 ms (``load.py``'s bound).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import wire  # noqa: E402 -- benchmarks/wire.py
from load import (  # noqa: E402 -- load.py's helpers; it runs nothing at import
    FRAME_S,
    _cpu_s,
    _cpus,
    _free_port,
    _gaps,
    _histogram,
    _load_cpu_s,
    _machine,
    _pct,
    _port_of,
    _quantile,
    _sessions_by_caller,
    _turn_starts,
    _voice_frames,
    caller_hz,
)

from callsim.callers.audio import Silence, Tone, render  # noqa: E402
from callsim.callers.twilio import TwilioCaller  # noqa: E402
from callsim.live.server import LiveSimulator  # noqa: E402
from gateway.aio import cancel_and_wait  # noqa: E402
from gateway.cli import _fast_loop  # noqa: E402

VOICE = "Aoede"
CALLER_NUMBER = "+1415555{:04d}"
#: One agent, no greeting, no tools: the model speaks only on the simulator's schedule.
AGENTS_YAML = f"""\
model: gemini-2.5-flash-native-audio-preview-12-2025
agents:
  - id: agent
    role: Assistant
    system_prompt: Answer the caller.
    voice: {VOICE}
pipeline:
  - phase: main
    agent_id: agent
    next: null
"""
SLO_P99_MS = 5.0
RELAXED_P99_MS = 20.0
#: Caller tones are 7 Hz apart from 1000 Hz (load.py's ``caller_hz``); keep them in the band.
MAX_CALLS = 340
#: Imports the gateway's main modules; prints the file each gateway or callsim module came from.
_WHERE_FROM = """\
import importlib, json, sys
import gateway.cli
for name in ("gateway.server", "gateway.web.app", "gateway.call.bridge"):  # where they exist
    try:
        importlib.import_module(name)
    except ImportError:
        pass
print(json.dumps({name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                  if name.split(".")[0] in ("gateway", "callsim")}))
"""


# ---------------------------------------------------------------------- callers (workers)


#: How often the load generators' loops are probed for lag (see :func:`_lag_probe`).
LAG_PROBE_S = 0.005


async def _lag_probe(out: list[tuple[float, float]]) -> None:
    """Until cancelled: every :data:`LAG_PROBE_S`, how late this process's loop ran a timer,
    as ``(when, ms late)``. A message that reaches a busy load generator waits about as long
    before it is stamped, so this is the share of the measured latency that is theirs (the
    timers' 1 ms grain included)."""
    while True:
        due = time.monotonic() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        now = time.monotonic()
        out.append((now, max(0.0, now - due) * 1000))


@contextlib.asynccontextmanager
async def _probing_lag() -> AsyncIterator[list[tuple[float, float]]]:
    """:func:`_lag_probe` for the block: the samples, the probe cancelled and awaited after."""
    lags: list[tuple[float, float]] = []
    probe = asyncio.create_task(_lag_probe(lags))
    try:
        yield lags
    finally:
        await cancel_and_wait(probe)


def _worker(
    url: str,
    indexes: list[int],
    total: int,
    args: dict[str, float],
    out: Any,
) -> None:
    """One caller process: runs its callers, sends back what each observed, and its loop's
    lag over the run (:func:`_lag_probe`)."""
    os.nice(int(args["nice"]))  # callers yield to the simulator on their shared core

    async def one(i: int) -> dict[str, Any]:
        await asyncio.sleep(args["ramp"] * i / total)
        tone = Tone(caller_hz(i), args["duration"], args["dbfs"])
        result = await TwilioCaller(
            url, audio=render([tone]), linger_s=0.2, from_number=CALLER_NUMBER.format(i)
        ).run()
        sent = [t for t, m in result.sent if m.get("event") == "media"]
        media = [t for t, m in result.received if m.get("event") == "media"]
        return {"index": i, "sent": sent, "media": media, "heard": result.heard_pcm(),
                "violations": result.violations, "stream_sid": result.stream_sid}  # fmt: skip

    async def run() -> dict[str, Any]:
        async with _probing_lag() as lags:
            callers = await asyncio.gather(*(one(i) for i in indexes))
        return {"callers": callers, "lags": lags}

    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        out.send(runner.run(run()))
    out.close()


# ---------------------------------------------------------------------- the gateway process


def _gateway_env(root: Path) -> dict[str, str]:
    """The environment without this checkout on the path: the gateway imports ``root``'s."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(root)
    return env


def _check_root(root: Path) -> str:
    """Fail unless ``root``'s gateway is what ``python -m gateway`` imports there; describe it."""
    if not (root / "gateway" / "__main__.py").is_file():
        sys.exit(f"--gateway-root {root}: no gateway/__main__.py there")
    done = subprocess.run(
        [sys.executable, "-c", _WHERE_FROM],
        cwd=root,
        env=_gateway_env(root),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"the gateway in {root} does not import:\n{done.stderr}")
    files: dict[str, str | None] = json.loads(done.stdout)
    foreign = sorted(f for f in files.values() if f and not Path(f).resolve().is_relative_to(root))
    if foreign:
        sys.exit(f"modules from outside {root} would be imported: {foreign[:5]}")
    git = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h %cs %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = git.stdout.strip() or "not a git checkout"
    commit = commit if len(commit) <= 60 else commit[:59] + "…"
    return f"{root} ({commit}{', with local changes' if dirty.stdout.strip() else ''})"


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``gateway serve --workers`` runs one process per worker)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError, IndexError):  # exited meanwhile
            total += _cpu_s(p)
    return total


def _tree_runtime_s(pid: int) -> float:
    """The scheduler's own count of the CPU time of ``pid``'s process tree, every thread
    (``/proc/PID/task/TID/schedstat``, nanoseconds): exact, where ``/proc/PID/stat`` samples
    whoever runs at each timer tick (4 ms on this VM's kernel). Stolen time is in neither."""
    total = 0
    for p in _tree(pid):
        for stat in Path(f"/proc/{p}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):  # exited meanwhile
                total += int(stat.read_text().split()[0])
    return total / 1e9


def _tree_rss_mb(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


# ---------------------------------------------------------------------- one level


@dataclass
class Level:
    calls: int
    up: list[float]
    down: list[float]
    #: Model answers sent to the calls; ``down`` has one sample per answer it could pair.
    answers: int
    replayed: int
    lost: int
    late: int
    cpu_s: float
    window_s: float
    rss_mb_per_call: float
    lag_p99_ms: float
    load_cpu_pct: float
    media_per_call_s: float
    violations: int
    unattributed: int
    #: The load generators' loop lag p99 (:func:`_lag_probe`) over the steady window: the
    #: simulator's (which stamps caller frames' arrival) and the caller processes' (which
    #: stamp the model's audio arriving).
    sim_lag_p99_ms: float = float("nan")
    callers_lag_p99_ms: float = float("nan")
    #: ``--wire``: the same latencies from the kernel's timestamps of a loopback capture
    #: (:func:`_wire_latency`), and the packets the capture dropped.
    wire: WireLatency | None = None
    #: Time the hypervisor took the gateway's cores for something else over the steady window
    #: (``steal`` in /proc/stat), in % of them: the gateway waits that long, unseen by its CPU.
    steal_pct: float = float("nan")
    #: The gateway's CPU over the window by the scheduler's exact count (:func:`_tree_runtime_s`),
    #: beside ``cpu_s``, the ticks sampled: the two should agree.
    runtime_s: float = float("nan")

    @property
    def cpu_pct(self) -> float:
        return self.cpu_s / self.window_s * 100

    @property
    def cpu_ms_per_call_s(self) -> float:
        return self.cpu_s * 1000 / self.window_s / self.calls

    def met(self, p99_ms: float, *, inclusive: bool) -> bool:
        """p99 within ``p99_ms`` both ways, and nothing lost, late or violated."""
        p99s = (_pct(self.up, 99), _pct(self.down, 99))
        within = all((p <= p99_ms) if inclusive else (p < p99_ms) for p in p99s)
        clean = self.lost == 0 and self.late == 0 and self.violations == 0
        return within and clean and bool(self.up and self.down)

    @property
    def slo(self) -> bool:
        return self.met(SLO_P99_MS, inclusive=True)

    @property
    def relaxed(self) -> bool:
        return self.met(RELAXED_P99_MS, inclusive=False)

    @property
    def wire_slo(self) -> bool:
        """``--wire``: the gateway's own p99 ≤ 5 ms each way over the steady window, nothing
        lost or violated, and no hole in what it sent beyond those in what it was sent."""
        w = self.wire
        clean = self.lost == 0 and self.violations == 0
        return w is not None and w.slo and clean and w.late <= w.late_upstream


def _simulator(args: argparse.Namespace) -> LiveSimulator:
    return LiveSimulator(
        think_ms=args.think_ms,
        setup_delay_ms=args.setup_delay_ms,
        speed=args.speed,
        answer_every_s=args.answer_every,
        answer_s=args.answer_s,
    )


@contextlib.asynccontextmanager
async def _gateway(
    root: Path, args: argparse.Namespace, sim: LiveSimulator, tmp: Path
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``root``'s ``gateway serve``, pinned to ``--gateway-cpus``, on ``sim``: its process,
    URL and log (its files in ``tmp``); stopped with SIGTERM on the way out."""
    await asyncio.to_thread(tmp.mkdir, exist_ok=True)
    sim.tls.write_ca(tmp / "ca.pem")
    (tmp / "agents.yaml").write_text(AGENTS_YAML)
    port = _free_port()
    env = {
        **_gateway_env(root),
        "GEMINI_API_KEY": "bench-key",
        "GEMINI_BASE_URL": sim.base_url,
        "SSL_CERT_FILE": str(tmp / "ca.pem"),
        "AGENTS_FILE": str(tmp / "agents.yaml"),
        "DATABASE_URL": f"sqlite:///{tmp / 'calls.db'}",  # not in the checkout
        "LOG_LEVEL": "warning",
        "MAX_CONCURRENT_CALLS": "10000",
        "CARRIERS": "twilio",
        "ALLOW_UNSIGNED_WEBHOOKS": "true",  # a benchmark, not a deployment
        "OPENBLAS_NUM_THREADS": "1",
        # One process unless asked: `gateway serve` would otherwise start a worker per
        # core it may use (an older checkout ignores the variable).
        "WORKERS": str(args.gateway_workers),
    }
    if args.against and args.side_by_side:
        # Each gateway carries half the calls, near the load where pacing starts (about 20 %
        # of a core): a change that saves CPU could turn its pacing off and hide the saving.
        # Paced always, both measure in the regime of one gateway under load. (A checkout
        # from before LOOP_PACING_BUSY_PCT ignores it: compare such with LOOP_PACING_MS=0.)
        env.setdefault("LOOP_PACING_BUSY_PCT", "0")
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    if args.gateway_workers > 1:
        # Only then: a checkout without --workers still runs the one-process levels.
        command += ["--workers", str(args.gateway_workers)]
        # A stream token must verify in whichever worker takes the stream.
        env["GATEWAY_SECRET"] = secrets.token_hex(32)
    log_path = Path(args.gateway_log) if args.gateway_log else tmp / "gateway.log"
    gateway_cpus = _cpus(args.gateway_cpus)
    with log_path.open("ab") as log:
        gateway = subprocess.Popen(  # noqa: ASYNC220 -- started once per level
            command, cwd=root, env=env, stderr=log,
            preexec_fn=(lambda: os.sched_setaffinity(0, gateway_cpus)) if gateway_cpus
            else None,
        )  # fmt: skip
    try:
        yield gateway, f"http://127.0.0.1:{port}", log_path
    finally:
        gateway.send_signal(signal.SIGTERM)
        await asyncio.to_thread(gateway.wait, 30)


def _keep_off_the_gateway(args: argparse.Namespace) -> None:
    """The simulator (this process) and the caller workers (spawned later, they inherit it)
    stay off the gateway's cores."""
    load_cpus = _cpus(args.load_cpus)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)


async def run_level(n: int, args: argparse.Namespace, root: Path) -> Level:
    with tempfile.TemporaryDirectory() as tmp_name:
        async with _simulator(args) as sim, _gateway(root, args, sim, Path(tmp_name)) as started:
            gateway, url, log_path = started
            _keep_off_the_gateway(args)
            return await _drive(n, args, sim, gateway, url, log_path)


async def run_pair(
    n: int, args: argparse.Namespace, roots: tuple[Path, Path]
) -> tuple[tuple[float, float], Level]:
    """Two checkouts' gateways at once, on the same core(s), the same simulator and load
    generators, each with half of ``n`` calls (even callers on the first, odd ones on the
    second): the ms of CPU per call-second of each over the same window, and the run's
    figures over all ``n`` calls. Taken at the same moments, the two CPU figures share every
    drift of this VM's speed, which sequential runs do not (``compare``)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with (
            _simulator(args) as sim,
            _gateway(roots[0], args, sim, tmp / "a") as first,
            _gateway(roots[1], args, sim, tmp / "b") as second,
        ):
            _keep_off_the_gateway(args)
            pids = (first[0].pid, second[0].pid)
            async with httpx.AsyncClient(timeout=10) as http:
                for gateway, url, log_path in (first, second):
                    await _wait_healthy(http, url, gateway, log_path)
                    await _warm(url)
            await asyncio.sleep(0.5)
            per_side = max(1, args.workers // 2)
            pipes, procs = _start_callers(
                [(url, list(range(side, n, 2))[w::per_side])
                 for side, (_, url, _) in enumerate((first, second)) for w in range(per_side)],
                n, args,
            )  # fmt: skip
            async with _probing_lag() as sim_lags:
                await asyncio.sleep(args.ramp + 0.5)
                cpu0, load0, t0 = (
                    [_tree_cpu_s(p) for p in pids],
                    _load_cpu_s(procs),
                    time.monotonic(),
                )
                await asyncio.sleep(max(2.0, args.duration - args.ramp - 2.0))
                cpu1, load1, t1 = (
                    [_tree_cpu_s(p) for p in pids],
                    _load_cpu_s(procs),
                    time.monotonic(),
                )
            results, caller_lags = await _collect(pipes, procs)
    level = _analyse(n, sim, results, args.setup_delay_ms / 1000)
    level.sim_lag_p99_ms = _lag_p99_within(sim_lags, t0, t1)
    level.callers_lag_p99_ms = _lag_p99_within(caller_lags, t0, t1)
    level.cpu_s, level.window_s = sum(cpu1) - sum(cpu0), t1 - t0
    level.load_cpu_pct = (load1 - load0) / (t1 - t0) * 100
    calls = (len(range(0, n, 2)), len(range(1, n, 2)))
    ms = tuple((b - a) * 1000 / (t1 - t0) / c for a, b, c in zip(cpu0, cpu1, calls, strict=True))
    return (ms[0], ms[1]), level


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_healthy(
    http: httpx.AsyncClient, url: str, gateway: subprocess.Popen[bytes], log: Path
) -> None:
    for _ in range(400):
        if gateway.poll() is not None:
            sys.exit(f"the gateway exited with {gateway.returncode}:\n{_tail(log)}")
        try:
            if (await http.get(url + "/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    sys.exit("the gateway did not become healthy within 20 s")


async def _lag_p99_ms(http: httpx.AsyncClient, url: str, workers: int, before: str | None) -> float:
    """Loop lag p99 from ``/metrics``. One process: over the run (before → after). Several:
    each scrape may reach another worker and none can be matched to an earlier one, so the
    worst of a few scrapes over each worker's whole life (start-up included)."""
    name = "gateway_event_loop_lag_seconds"
    if workers == 1:
        assert before is not None
        after = (await http.get(url + "/metrics")).text
        return _quantile(_histogram(before, name)[0], _histogram(after, name)[0], 0.99) * 1000
    worst = float("nan")
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(4 * workers):
            buckets = _histogram((await c.get(url + "/metrics")).text, name)[0]
            zero = [(le, 0.0) for le, _ in buckets]
            p99 = _quantile(zero, buckets, 0.99) * 1000
            worst = p99 if np.isnan(worst) else max(worst, p99)
    return worst


async def _warm(url: str) -> None:
    """One answer through every path of the gateway at ``url``, before measuring."""
    warm = await TwilioCaller(
        url, audio=render([Silence(2.0)]), linger_s=1.2, from_number=CALLER_NUMBER.format(9999)
    ).run()
    assert not warm.violations, warm.violations


def _start_callers(
    assignments: list[tuple[str, list[int]]], n: int, args: argparse.Namespace
) -> tuple[list[Any], list[mp.process.BaseProcess]]:
    """One caller process per (gateway URL, caller indexes): their result pipes and processes."""
    job = {"ramp": args.ramp, "duration": args.duration, "dbfs": args.caller_dbfs,
           "nice": args.nice}  # fmt: skip
    pipes: list[Any] = []
    procs: list[mp.process.BaseProcess] = []
    ctx = mp.get_context("spawn")
    for url, indexes in assignments:
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(url, indexes, n, job, sender))
        proc.start()
        pipes.append(receiver)
        procs.append(proc)
    return pipes, procs


def _stolen_s(cpus: list[int]) -> float:
    """Seconds stolen from ``cpus`` by the hypervisor since boot (/proc/stat's 8th field)."""
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted and len(fields) > 8:
            ticks += int(fields[8])
    return ticks / os.sysconf("SC_CLK_TCK")


def _lag_p99_within(lags: list[tuple[float, float]], t0: float, t1: float) -> float:
    """The p99 of the lags probed between ``t0`` and ``t1``."""
    within = [ms for at, ms in lags if t0 <= at <= t1]
    return float(np.percentile(within, 99)) if within else float("nan")


async def _collect(
    pipes: list[Any], procs: list[mp.process.BaseProcess]
) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """What every caller observed, and the caller processes' loop lags, once they finished."""
    results: list[dict[str, Any]] = []
    lags: list[tuple[float, float]] = []
    for receiver in pipes:
        sent = await asyncio.to_thread(receiver.recv)
        results += sent["callers"]
        lags += sent["lags"]
    for proc in procs:
        proc.join()
    return results, lags


async def _drive(
    n: int,
    args: argparse.Namespace,
    sim: LiveSimulator,
    gateway: subprocess.Popen[bytes],
    url: str,
    log: Path,
) -> Level:
    pid = gateway.pid
    gateway_cpus = sorted(_cpus(args.gateway_cpus) or range(os.cpu_count() or 1))
    gateway_port = _port_of(url)
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as http:
        await _wait_healthy(http, url, gateway, log)
        if args.gateway_workers > 1:
            await asyncio.sleep(1.0)  # the other workers
        await _warm(url)
        await asyncio.sleep(0.5)
        idle_rss = _tree_rss_mb(pid)
        before = (await http.get(url + "/metrics")).text if args.gateway_workers == 1 else None
        capture = None
        capturing = await stack.enter_async_context(contextlib.AsyncExitStack())
        if args.wire:
            where = stack.enter_context(wire.scratch_dir())
            ports = [gateway_port, _port_of(sim.base_url)]
            capture = await capturing.enter_async_context(
                wire.capturing(where / "lo.pcap", ports, _cpus(args.load_cpus))
            )

        workers = max(1, min(args.workers, n))
        pipes, procs = _start_callers(
            [(url, list(range(w, n, workers))) for w in range(workers)], n, args
        )
        async with _probing_lag() as sim_lags:
            # Steady window: every caller connected, none finished.
            await asyncio.sleep(args.ramp + 0.5)
            cpu0, load0, t0 = _tree_cpu_s(pid), _load_cpu_s(procs), time.monotonic()
            stolen0, runtime0 = _stolen_s(gateway_cpus), _tree_runtime_s(pid)
            peak_rss = _tree_rss_mb(pid)
            while time.monotonic() - t0 < max(2.0, args.duration - args.ramp - 2.0):
                await asyncio.sleep(0.5)
                peak_rss = max(peak_rss, _tree_rss_mb(pid))
            cpu1, load1, t1 = _tree_cpu_s(pid), _load_cpu_s(procs), time.monotonic()
            stolen1, runtime1 = _stolen_s(gateway_cpus), _tree_runtime_s(pid)
        results, caller_lags = await _collect(pipes, procs)
        await capturing.aclose()  # the capture, if any, stopped and written
        on_wire = None
        if capture is not None:  # read before its directory goes, with the block
            on_wire = await asyncio.to_thread(
                _wire_latency, capture, sim, results, args.setup_delay_ms / 1000, gateway_port,
                capture.offset, (t0, t1),
            )  # fmt: skip
        await asyncio.sleep(1.0)
        lag_p99_ms = await _lag_p99_ms(http, url, args.gateway_workers, before)
    level = _analyse(n, sim, results, args.setup_delay_ms / 1000)
    level.cpu_s, level.window_s = cpu1 - cpu0, t1 - t0
    level.steal_pct = (stolen1 - stolen0) / (t1 - t0) / len(gateway_cpus) * 100
    level.runtime_s = runtime1 - runtime0
    level.rss_mb_per_call = (peak_rss - idle_rss) / n
    level.lag_p99_ms = lag_p99_ms
    level.load_cpu_pct = (load1 - load0) / (t1 - t0) * 100
    level.sim_lag_p99_ms = _lag_p99_within(sim_lags, t0, t1)
    level.callers_lag_p99_ms = _lag_p99_within(caller_lags, t0, t1)
    level.wire = on_wire
    return level


# ---------------------------------------------------------------------- analysis


def _analyse(n: int, sim: LiveSimulator, results: list[dict[str, Any]], setup_s: float) -> Level:
    # The tone is quieter than load.py's speech: -45 dBFS tells it from line noise.
    by_caller = _sessions_by_caller(sim, loud_dbfs=-45.0)
    up: list[float] = []
    down: list[float] = []
    answers = replayed = lost = late = media = 0
    for r in results:
        conns = by_caller.get(r["index"], [])
        arrivals = [t for c in conns for t, _ in c.audio_in_chunks]
        lost += max(0, len(r["sent"]) - len(arrivals) - 3)  # ≤ 3 in flight at hang-up
        # Frames sent before the call's Live connection was set up wait in the gateway and
        # are replayed when it is: their wait is the connection's, not added latency.
        ready = conns[0].opened_at + setup_s + 0.05 if conns else float("inf")
        for sent_at, arrived in zip(r["sent"], arrivals, strict=False):
            if sent_at < ready:
                replayed += 1
            else:
                up.append((arrived - sent_at) * 1000)
        heard_at = np.array(sorted(r["media"]))
        starts = _turn_starts(conns)
        answers += len(starts)
        for start in starts:
            j = int(np.searchsorted(heard_at, start))
            # The answer's first media: the previous answer's last one is long gone (answers
            # are answer_every_s apart and play in answer_s).
            if j < len(heard_at) and (j == 0 or heard_at[j - 1] < start - 0.3):
                down.append((heard_at[j] - start) * 1000)
        late += _gaps(_voice_frames(r["heard"], voices=(VOICE,)))[1]
        media += len(r["media"])
    call_s = sum(len(r["sent"]) for r in results) * FRAME_S
    return Level(
        calls=n,
        up=up,
        down=down,
        answers=answers,
        replayed=replayed,
        lost=lost,
        late=late,
        cpu_s=0.0,
        window_s=1.0,
        rss_mb_per_call=0.0,
        lag_p99_ms=float("nan"),
        load_cpu_pct=0.0,
        media_per_call_s=media / call_s if call_s else 0.0,
        violations=sum(len(r["violations"]) for r in results),
        unattributed=sum(1 for r in results if r["index"] not in by_caller),
    )


@dataclass
class WireLatency:
    """Added latency read on the wire (:mod:`wire`): up, a caller's media message reaching the
    gateway's socket → the model frame it became leaving the gateway; down, an answer's first
    audio record leaving the simulator → the answer's first media message leaving the gateway.
    Both ends are the kernel's timestamps, taken in the writer's system call."""

    #: (when the frame reached the gateway, ms added), every frame paired after its call's
    #: Live connection was ready; (when the answer left the simulator, ms added), every answer.
    up: list[tuple[float, float]]
    down: list[tuple[float, float]]
    #: Packets the capture dropped (tcpdump's count), and streams it left with a hole.
    dropped: int | None
    broken: int
    #: Frames of silence inside an answer (holes of ≤ 100 ms) that a carrier playing each
    #: media message as it left the gateway would have played: the gateway's share of "late".
    late: int
    #: The same for the simulator's answers, played as they left it (its stamps, taken just
    #: before each write): holes the gateway was handed, which it can only pass on.
    late_upstream: int
    #: The steady window (every call connected, none finished), as the CPU's.
    window: tuple[float, float]

    def _within(self, samples: list[tuple[float, float]], steady: bool) -> list[float]:
        t0, t1 = self.window if steady else (float("-inf"), float("inf"))
        return [ms for at, ms in samples if t0 <= at <= t1]

    def ups(self, *, steady: bool = True) -> list[float]:
        return self._within(self.up, steady)

    def downs(self, *, steady: bool = True) -> list[float]:
        return self._within(self.down, steady)

    @property
    def slo(self) -> bool:
        """p99 ≤ 5 ms each way over the steady window."""
        up, down = self.ups(), self.downs()
        return bool(up and down) and max(_pct(up, 99), _pct(down, 99)) <= SLO_P99_MS


def _wire_latency(
    capture: wire.Capture,
    sim: LiveSimulator,
    results: list[dict[str, Any]],
    setup_s: float,
    gateway_port: int,
    offset: float,
    window: tuple[float, float],
) -> WireLatency:
    """Pair what the callers sent and the simulator got, as :func:`_analyse` does, but with the
    times of the packets on the wire (:class:`wire.Traffic`; ``offset``: the capture's clock
    less the monotonic one)."""
    traffic = wire.Traffic(capture.path.read_bytes(), gateway_port, _port_of(sim.base_url), offset)
    by_caller = _sessions_by_caller(sim, loud_dbfs=-45.0)
    up: list[tuple[float, float]] = []
    down: list[tuple[float, float]] = []
    late = late_upstream = 0
    for r in results:
        conns = by_caller.get(r["index"], [])
        sid = r.get("stream_sid", "")
        if not conns or not traffic.has_call(sid):
            continue
        ports = [c.client_port for c in conns]
        ready = conns[0].opened_at + setup_s + 0.05
        pairs = zip(traffic.caller_frames(sid), traffic.model_frames(ports), strict=False)
        up += [(at, (written - at) * 1000) for at, written in pairs if at >= ready]
        media = traffic.gateway_media(sid)
        late += wire.playback_holes(media)
        late_upstream += wire.playback_holes(
            [(m.at, _audio_ms(m.summary) / 1000 / wire.FRAME_S)
             for c in conns for m in c.sent if m.summary.startswith("audio")]
        )  # fmt: skip
        down += wire.answer_latencies(
            _turn_starts(conns), traffic.model_records(ports), [at for at, _ in media]
        )
    return WireLatency(up, down, capture.dropped, traffic.broken, late, late_upstream, window)


def _audio_ms(summary: str) -> float:
    """The length of the audio a simulator message summary names (``audio 40ms, …``)."""
    found = re.match(r"audio (\d+(?:\.\d+)?)ms", summary)
    return float(found.group(1)) if found else 0.0


# ---------------------------------------------------------------------- output

HEADER = (
    "| calls | gateway CPU % of a core | CPU ms per call-second | added up ms p50 / p99 | "
    "added down ms p50 / p99 (answers) | lost | late | RSS MB/call | loop lag p99 ms | "
    "load gen. CPU % | load gen. lag p99 ms (sim. / callers) | media msgs down per call-s | "
    "SLO met (p99 ≤ 5 ms) | p99 < 20 ms |\n|" + "---|" * 14
)
PEER_HEADER = (
    "| calls | gateway CPU % of a core (ms of CPU per call-second) | added latency down "
    "(model → caller) ms p50 / p99 |\n|---|---|---|"
)


def _p50_p99(xs: list[float]) -> str:
    return f"{_pct(xs, 50):.1f} / {_pct(xs, 99):.1f}"


def _row(v: Level) -> str:
    return (
        f"| {v.calls} | {v.cpu_pct:.1f} | {v.cpu_ms_per_call_s:.1f} | {_p50_p99(v.up)} | "
        f"{_p50_p99(v.down)} ({len(v.down)}/{v.answers}) | {v.lost} | {v.late} | "
        f"{v.rss_mb_per_call:.2f} | ≤{v.lag_p99_ms:.0f} | {v.load_cpu_pct:.0f} | "
        f"{v.sim_lag_p99_ms:.1f} / {v.callers_lag_p99_ms:.1f} | {v.media_per_call_s:.1f} | "
        f"{'yes' if v.slo else 'no'} | {'yes' if v.relaxed else 'no'} |"
    )


WIRE_HEADER = (
    "| calls | steady: added up ms p50 / p99 (frames) | steady: added down ms p50 / p99 "
    "(answers) | whole run: up / down p99 | late: gateway's / simulator's | gateway core "
    "stolen % | packets dropped / streams cut | p99 ≤ 5 ms each way (steady) |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _wire_row(v: Level) -> str:
    w = v.wire
    if w is None:
        return f"| {v.calls} | — | — | — | — | — | — | — |"
    up, down = w.ups(), w.downs()
    return (
        f"| {v.calls} | {_p50_p99(up)} ({len(up)}) | {_p50_p99(down)} ({len(down)}) | "
        f"{_pct(w.ups(steady=False), 99):.1f} / {_pct(w.downs(steady=False), 99):.1f} | "
        f"{w.late} / {w.late_upstream} | {v.steal_pct:.1f} | "
        f"{'?' if w.dropped is None else w.dropped} / {w.broken} | {'yes' if w.slo else 'no'} |"
    )


def _runtime_ms(v: Level) -> float:
    return v.runtime_s * 1000 / v.window_s / v.calls


def _peer_row(v: Level) -> str:
    return f"| {v.calls} | {v.cpu_pct:.1f} ({v.cpu_ms_per_call_s:.1f}) | {_p50_p99(v.down)} |"


def _largest(levels: list[Level], ok: str) -> int | None:
    """The largest N met with every smaller level run also met (noise above a miss is no
    capacity)."""
    best = None
    for level in sorted(levels, key=lambda v: v.calls):
        if not getattr(level, ok):
            break
        best = level.calls
    return best


def _calls_to_run(args: argparse.Namespace) -> list[int]:
    calls = [int(x) for x in args.calls.split(",") if x.strip()]
    if not calls or min(calls) < 1 or max(calls) > MAX_CALLS:
        sys.exit(f"--calls: between 1 and {MAX_CALLS} (the callers' tones must stay in band)")
    return calls


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="10,20,30,40,50", help="levels, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per call")
    parser.add_argument("--ramp", type=float, default=3.0, help="callers start over this long")
    parser.add_argument("--workers", type=int, default=2, help="caller processes")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the caller processes")
    parser.add_argument(
        "--gateway-workers", type=int, default=1, help="N > 1: gateway serve --workers N"
    )
    parser.add_argument("--gateway-root", help="run the gateway of this checkout (default: ours)")
    parser.add_argument("--gateway-cpus", default="0", help="CPUs of the gateway ('' = any)")
    parser.add_argument("--load-cpus", default="1", help="CPUs of the simulator and callers")
    parser.add_argument("--gateway-log", help="append the gateway's stderr (logs) to this file")
    parser.add_argument("--speed", type=float, default=2.0, help="model audio vs real time")
    parser.add_argument("--think-ms", type=int, default=150, help="before each answer's audio")
    parser.add_argument("--setup-delay-ms", type=int, default=100, help="Live session set-up")
    parser.add_argument("--answer-every", type=float, default=1.5, help="s of caller audio")
    parser.add_argument("--answer-s", type=float, default=1.0, help="s of model audio")
    parser.add_argument("--caller-dbfs", type=float, default=-30.0, help="the callers' tone")
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="go on past --calls by --capacity-step until the SLO fails; print the largest N",
    )
    parser.add_argument("--capacity-step", type=int, default=10)
    parser.add_argument(
        "--against",
        help="A/B: run each level on this checkout and on the gateway's in turns, --rounds times",
    )
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (with --against)")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="with --against: both gateways at once on the same core, half the calls each",
    )
    parser.add_argument(
        "--max-calls", type=int, default=MAX_CALLS, help="--capacity stops here at the latest"
    )
    parser.add_argument(
        "--wire",
        action="store_true",
        help="also read the added latency off a loopback capture (tcpdump, root): kernel "
        "timestamps, free of the load generators' delays",
    )
    args = parser.parse_args()
    if args.wire and args.against:
        parser.error("--wire measures one gateway's latency: not with --against")
    return args


async def main(args: argparse.Namespace, root: Path) -> None:
    calls = _calls_to_run(args)
    where = await asyncio.to_thread(_check_root, root)
    gateway_cpus = _cpus(args.gateway_cpus)
    cores = len(gateway_cpus) or os.cpu_count() or 1
    serve = f"--workers {args.gateway_workers}" if args.gateway_workers > 1 else "(one process)"

    print(f"machine: {_machine()}; Python {platform.python_version()}; "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    print(f"command: {' '.join(sys.argv)}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"gateway: {where}; `gateway serve` {serve} on CPUs "
          f"{args.gateway_cpus or 'any'}; simulator and {args.workers} caller processes "
          f"(nice {args.nice}) on CPUs {args.load_cpus or 'any'}")  # fmt: skip
    print(f"Live simulator: {args.answer_s:g} s of audio after every {args.answer_every:g} s of "
          f"caller audio received, think {args.think_ms} ms, setup {args.setup_delay_ms} ms, "
          f"audio at {args.speed:g}x real time in 40 ms chunks")  # fmt: skip
    print(
        f"callers: Twilio, a {args.caller_dbfs:g} dBFS tone in every 20 ms frame for "
        f"{args.duration:g} s, started over {args.ramp:g} s; CPU over the steady window"
    )
    print(flush=True)
    if args.against and args.side_by_side:
        await compare_side_by_side(calls, args, Path(args.against), root)
        return
    if args.against:
        await compare(calls, args, Path(args.against), root)
        return

    levels: list[Level] = []
    todo = list(calls)
    while todo:
        n = todo.pop(0)
        print(f"  running {n} calls…", file=sys.stderr, flush=True)
        level = await run_level(n, args, root)
        levels.append(level)
        print(f"  {_row(level)}", file=sys.stderr, flush=True)
        exact = f"CPU by the scheduler's count: {_runtime_ms(level):.1f} ms per call-second"
        stolen = f"gateway core stolen {level.steal_pct:.1f} %"
        print(f"  {exact}; {stolen}", file=sys.stderr, flush=True)
        if level.wire is not None:
            print(f"  on the wire: {_wire_row(level)}", file=sys.stderr, flush=True)
        if level.unattributed:
            print(f"  warning: {level.unattributed} calls not found at the simulator",
                  file=sys.stderr)  # fmt: skip
        if args.capacity:
            if not (level.relaxed or level.wire_slo):
                break  # every SLO has failed: nothing above is capacity
            if not todo and n + args.capacity_step <= min(args.max_calls, MAX_CALLS):
                todo.append(n + args.capacity_step)

    print(HEADER)
    for level in levels:
        print(_row(level))
    if any(level.wire is not None for level in levels):
        print("\nOn the wire (kernel timestamps of a loopback capture: the gateway's share "
              "alone):\n")  # fmt: skip
        print(WIRE_HEADER)
        for level in levels:
            print(_wire_row(level))
    print("\nIn the issue's format:\n")
    print(PEER_HEADER)
    for level in levels:
        print(_peer_row(level))
    print()
    if args.capacity:
        slos = [("p99 ≤ 5 ms, nothing lost or late", "slo"),
                ("p99 < 20 ms, nothing lost or late", "relaxed")]  # fmt: skip
        if args.wire:
            slos.append(("on the wire: the gateway's p99 ≤ 5 ms, nothing lost, no hole of its "
                         "own", "wire_slo"))  # fmt: skip
        for label, ok in slos:
            best = _largest(levels, ok)
            if best is None:
                print(f"capacity ({label}): not met at {min(v.calls for v in levels)} calls")
                continue
            # Every level run met it: the search stopped at --max-calls, not at a failure.
            floor = "at least " if best == max(v.calls for v in levels) else ""
            print(f"capacity ({label}): {floor}{best} calls, {best / cores:.1f} calls per core "
                  f"({cores} gateway core{'s' if cores > 1 else ''})")  # fmt: skip
        print()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


async def compare(calls: list[int], args: argparse.Namespace, before: Path, after: Path) -> None:
    """CPU per call-second of two checkouts, each level run on both in turns.

    This VM's speed drifts by up to 40 % within hours (benchmarks/README.md), far more than most
    changes save: figures of two checkouts compare only when taken close together. Each round
    runs every level on both, and the order flips from round to round, so a drift during the
    run weighs on both sides alike.
    """
    where = await asyncio.to_thread(_check_root, before)
    print(f"A/B against: {where}; {args.rounds} rounds, the order flipping each round\n")
    ms: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        sides = [("before", before), ("after", after)]
        for label, root in sides if round_ % 2 == 0 else sides[::-1]:
            for n in calls:
                print(f"  round {round_ + 1}, {label}: {n} calls…", file=sys.stderr, flush=True)
                level = await run_level(n, args, root)
                print(f"  {_row(level)}", file=sys.stderr, flush=True)
                ms.setdefault((label, n), []).append(level.cpu_ms_per_call_s)
    print("| calls | before: ms per call-second, each run | after | change of the means |")
    print("|---:|---|---|---:|")
    for n in calls:
        runs = {label: ms[label, n] for label in ("before", "after")}
        change = float(np.mean(runs["after"])) / float(np.mean(runs["before"])) - 1
        shown = {k: " / ".join(f"{v:.1f}" for v in vs) for k, vs in runs.items()}
        print(f"| {n} | {shown['before']} | {shown['after']} | {change:+.0%} |")


async def compare_side_by_side(
    calls: list[int], args: argparse.Namespace, before: Path, after: Path
) -> None:
    """CPU per call-second of two checkouts run at once (:func:`run_pair`), each level
    ``--rounds`` times, the two swapping their callers (even, odd) and start order each round.

    Sequential runs (:func:`compare`) see this VM's speed drift between them: at 50 calls the
    same code read 7.4 and 8.2 ms in successive runs, as large as most single changes. Two
    gateways measured over the same seconds on the same core see the same drift, so their ratio
    keeps what each change saved; each serves half of the level's calls, so the absolute
    figures are those of a level of half the calls on a shared core, not of a level of its own.
    """
    where = await asyncio.to_thread(_check_root, before)
    print(f"side by side with: {where}; {args.rounds} rounds, each level's calls split\n")
    print("| calls (each) | round | before ms per call-second | after | after / before |")
    print("|---:|---:|---:|---:|---:|")
    ratios: dict[int, list[float]] = {}
    for round_ in range(args.rounds):
        for n in calls:
            swap = round_ % 2 == 1
            print(f"  round {round_ + 1}: {n} calls…", file=sys.stderr, flush=True)
            pair, level = await run_pair(n, args, (after, before) if swap else (before, after))
            ms_before, ms_after = pair[::-1] if swap else pair
            ratios.setdefault(n, []).append(ms_after / ms_before)
            print(f"  {_row(level)}", file=sys.stderr, flush=True)
            print(f"| {n} ({n // 2}) | {round_ + 1} | {ms_before:.2f} | {ms_after:.2f} | "
                  f"{ms_after / ms_before:.3f} |", flush=True)  # fmt: skip
    print("\n| calls | after / before, mean of the rounds | spread (min-max) |\n|---:|---:|---|")
    for n, rs in ratios.items():
        print(f"| {n} | {float(np.mean(rs)):.3f} | {min(rs):.3f}-{max(rs):.3f} |")


if __name__ == "__main__":
    arguments = _arguments()
    gateway_root = Path(arguments.gateway_root).resolve() if arguments.gateway_root else ROOT
    if arguments.against:
        arguments.against = str(Path(arguments.against).resolve())
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(main(arguments, gateway_root))
