"""Load benchmark: N concurrent simulated calls through a gateway running as its own process.

Run by hand (not a test)::

    .venv/bin/python benchmarks/load.py --calls 1,10,50,100 --duration 20

The gateway (``gateway serve``) runs alone in a child process, so its CPU and memory are its
own. The Live simulator runs in this process and the callers in worker processes; all share
the machine's CLOCK_MONOTONIC, so timestamps taken by different peers can be subtracted.

Each caller speaks a tone at its own frequency (which also identifies its Live session),
pauses, speaks again; the simulated model answers every caller turn and hands the call to the
other agent on the second turn, so handoffs happen under load. Measured per level:

- added latency, caller → Live: a caller frame's send time → its arrival at the simulator
  (frames sent while the gateway had no Live connection, i.e. during a connect or handoff,
  are excluded here and counted under "replayed");
- added latency, Live → caller: the first audio chunk of a model turn leaving the simulator →
  the first media message of that turn reaching the caller;
- first-audio latency (the gateway's histogram, net of the simulator's think time) and the
  handoff gap heard by the caller (old voice's last frame → new voice's first), net of the
  simulator's setup delay and think time;
- the gateway's CPU per call (% of one core), RSS per call, event-loop lag p99;
- frames lost (sent by callers, never reaching the simulator) and late (a gap inside an agent
  utterance at the caller: its playback ran dry).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callsim.callers.audio import Segment, Silence, Tone, render  # noqa: E402
from callsim.callers.twilio import TwilioCaller  # noqa: E402
from callsim.live.model import ModelOptions  # noqa: E402
from callsim.live.server import LiveSimulator  # noqa: E402
from callsim.live.voices import voice_pitch_hz  # noqa: E402
from gateway.audio.analysis import dominant_frequency, rms_dbfs  # noqa: E402
from gateway.cli import _fast_loop  # noqa: E402

FRAME_S = 0.020
#: The Live simulator's end-of-utterance silence (its VAD's ``silence_ms``; the default is used).
VAD_SILENCE_S = ModelOptions().vad_silence_ms / 1000
VOICES = ("Aoede", "Charon")


# ---------------------------------------------------------------------- callers (workers)


def caller_hz(index: int) -> float:
    """A distinct tone per caller, inside the phone band and away from the agents' voices."""
    return 1000.0 + 7.0 * index


def caller_audio(index: int, duration: float) -> list[Segment]:
    segments: list[Segment] = [Silence(1.0)]
    used = 1.0
    while used + 4.0 <= duration:
        segments += [Tone(caller_hz(index), 0.8, -15), Silence(3.2)]
        used += 4.0
    segments.append(Silence(max(0.0, duration - used)))
    return segments


def _worker(
    url: str, indexes: list[int], total: int, duration: float, ramp: float, nice: int, out: Any
) -> None:
    """One caller process: runs its callers, sends back what each observed."""
    # Callers yield the CPU to the gateway (and the simulator) when they share a core. Only
    # workers are niced: a process that was niced would pass it on to later gateways it starts.
    os.nice(nice)

    async def one(i: int) -> dict[str, Any]:
        await asyncio.sleep(ramp * i / total)
        result = await TwilioCaller(
            url, audio=render(caller_audio(i, duration)), linger_s=0.3
        ).run()
        sent = [(t, int(m["media"]["chunk"])) for t, m in result.sent if m.get("event") == "media"]
        media = [t for t, m in result.received if m.get("event") == "media"]
        return {"index": i, "sent": sent, "media": media, "heard": result.heard_pcm(),
                "started_at": result.started_at, "violations": result.violations}  # fmt: skip

    async def run() -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(i) for i in indexes))

    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        out.send(runner.run(run()))
    out.close()


# ---------------------------------------------------------------------- the gateway process


def _cpus(spec: str) -> set[int]:
    return {int(c) for c in spec.split(",") if c.strip()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_cpu_s(workers: list[Any]) -> float:
    """CPU seconds of the load generators: this process (the Live simulator) and the callers."""
    own = os.times()
    return own.user + own.system + sum(_cpu_s(w.pid) for w in workers)


def _rss_mb(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def _histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float]:
    """Cumulative (upper bound, count) buckets and the sum of a Prometheus histogram."""
    buckets = []
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        buckets.append((float(m.group(1)), float(m.group(2))))
    total = re.search(rf"^{name}_sum (\S+)$", text, re.M)
    return buckets, float(total.group(1)) if total else 0.0


def _quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    for le, cumulative in counts:
        if total and cumulative >= q * total:
            return le
    return float("nan")


# ---------------------------------------------------------------------- analysis


def _sessions_by_caller(sim: LiveSimulator) -> dict[int, list[Any]]:
    """Caller index → its Live connections in order (identified by the caller's tone)."""
    by_session: dict[int, list[Any]] = {}
    for conn in sim.connections:
        if conn.session_id is not None:
            by_session.setdefault(conn.session_id, []).append(conn)
    out: dict[int, list[Any]] = {}
    for conns in by_session.values():
        audio = bytes(conns[0].audio_in)
        loud = [i for i in range(0, len(audio) - 3200, 3200) if rms_dbfs(audio[i : i + 3200]) > -30]
        if not loud:
            continue
        hz = dominant_frequency(audio[loud[0] : loud[0] + 6400], 16000)
        out[round((hz - 1000.0) / 7.0)] = conns
    return out


def _windows_without_connection(sim: LiveSimulator, setup_s: float) -> list[tuple[float, float]]:
    """Intervals where a session had no usable Live connection (connect, handoff)."""
    windows = []
    for conn in sim.connections:
        ready = conn.opened_at + setup_s + 0.05
        windows.append((conn.opened_at - 10.0 if conn.index == 0 else conn.opened_at - 0.5, ready))
        if conn.closed_at is not None:
            windows.append((conn.closed_at - 0.05, conn.closed_at + setup_s + 0.5))
    return windows


def _turn_starts(conns: list[Any]) -> list[float]:
    """Send times of the first audio chunk of every model turn on these connections."""
    starts = []
    for conn in conns:
        in_turn = False
        for message in conn.sent:
            if message.kind == "serverContent" and message.summary.startswith("audio"):
                if not in_turn:
                    starts.append(message.at)
                in_turn = True
            elif message.kind == "serverContent" and message.summary.startswith(
                ("turnComplete", "interrupted")
            ):
                in_turn = False
    return starts


def _voice_frames(heard: bytes, rate: int = 8000) -> list[str | None]:
    """Per 20 ms frame: which agent voice (by pitch) was heard, or None for silence."""
    pitches = {v: voice_pitch_hz(v) for v in VOICES}
    step = int(rate * FRAME_S) * 2
    out: list[str | None] = []
    for i in range(0, len(heard) - step + 1, step):
        chunk = heard[i : i + step]
        if rms_dbfs(chunk) < -40:
            out.append(None)
            continue
        hz = dominant_frequency(chunk, rate)
        voice = min(pitches, key=lambda v: abs(pitches[v] - hz))
        out.append(voice if abs(pitches[voice] - hz) < 25 else None)
    return out


def _gaps(frames: list[str | None]) -> tuple[list[int], int]:
    """Handoff gaps (frames between one voice and the next) and late frames inside utterances."""
    handoffs: list[int] = []
    late = 0
    last_voice, last_index = None, -1
    for i, voice in enumerate(frames):
        if voice is None:
            continue
        if last_voice is not None:
            silent = i - last_index - 1
            if voice != last_voice:
                handoffs.append(silent)
            elif 0 < silent <= 5:  # a hole of ≤ 100 ms inside one agent's speech
                late += silent
        last_voice, last_index = voice, i
    return handoffs, late


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Level:
    calls: int
    up: list[float]
    down: list[float]
    replayed: int
    first_audio: list[float]
    handoff_gaps: list[float]
    cpu_pct_per_call: float
    rss_mb_per_call: float
    lag_p99_ms: float
    load_cpu_pct: float
    lost: int
    late: int
    violations: int

    @property
    def ok(self) -> bool:
        return (
            _pct(self.up, 99) < 20
            and _pct(self.down, 99) < 20
            and self.lost == 0
            and self.late == 0
            and self.violations == 0
        )


async def run_level(n: int, args: argparse.Namespace) -> Level:
    setup_s = args.setup_delay_ms / 1000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
        async with LiveSimulator(
            think_ms=args.think_ms, setup_delay_ms=args.setup_delay_ms, speed=args.speed
        ) as sim:
            sim.tls.write_ca(tmp / "ca.pem")
            port = _free_port()
            env = {
                **os.environ,
                "GEMINI_API_KEY": "bench-key",
                "SSL_CERT_FILE": str(tmp / "ca.pem"),
                "GEMINI_BASE_URL": sim.base_url,
                "LOG_LEVEL": "warning",
                "MAX_CONCURRENT_CALLS": "10000",
                "CARRIERS": "twilio",
                "ALLOW_UNSIGNED_WEBHOOKS": "true",  # a benchmark, not a deployment
                "OPENBLAS_NUM_THREADS": "1",
            }
            log = (
                open(args.gateway_log, "ab")  # noqa: SIM115, ASYNC230 -- before any load
                if args.gateway_log
                else subprocess.DEVNULL
            )
            gateway_cpus, load_cpus = _cpus(args.gateway_cpus), _cpus(args.load_cpus)
            gateway = subprocess.Popen(  # noqa: ASYNC220 -- started once per level
                [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port",
                 str(port)], cwd=tmp, env=env, stderr=log,
                preexec_fn=(lambda: os.sched_setaffinity(0, gateway_cpus)) if gateway_cpus
                else None,
            )  # fmt: skip
            if load_cpus:
                # The simulator (this process) and the caller workers (spawned later, they
                # inherit it) stay off the gateway's cores, so "% of a core" is the gateway's own.
                os.sched_setaffinity(0, load_cpus)
            url = f"http://127.0.0.1:{port}"
            try:
                return await _drive(n, args, sim, gateway.pid, url, setup_s)
            finally:
                gateway.send_signal(signal.SIGTERM)
                await asyncio.to_thread(gateway.wait, 30)


async def _drive(
    n: int, args: argparse.Namespace, sim: LiveSimulator, pid: int, url: str, setup_s: float
) -> Level:
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(200):
            try:
                if (await http.get(url + "/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        warm = await TwilioCaller(url, audio=render([Silence(1.5)]), linger_s=0.1).run()
        assert not warm.violations, warm.violations
        await asyncio.sleep(0.5)
        idle_rss = _rss_mb(pid)
        metrics_before = (await http.get(url + "/metrics")).text

        workers = max(1, min(args.workers, n))
        pipes, procs = [], []
        ctx = mp.get_context("spawn")
        for w in range(workers):
            receiver, sender = ctx.Pipe(duplex=False)
            indexes = list(range(w, n, workers))
            proc = ctx.Process(
                target=_worker, args=(url, indexes, n, args.duration, args.ramp, args.nice, sender)
            )
            proc.start()
            pipes.append(receiver)
            procs.append(proc)
        # Steady window: after the ramp, before the first callers finish.
        await asyncio.sleep(args.ramp + 0.5)
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        load0 = _load_cpu_s(procs)
        peak_rss = _rss_mb(pid)
        while time.monotonic() - t0 < max(2.0, args.duration - args.ramp - 2.0):
            await asyncio.sleep(0.5)
            peak_rss = max(peak_rss, _rss_mb(pid))
        cpu1, t1 = _cpu_s(pid), time.monotonic()
        load1 = _load_cpu_s(procs)
        results: list[dict[str, Any]] = []
        for receiver in pipes:
            results += await asyncio.to_thread(receiver.recv)
        for proc in procs:
            proc.join()
        await asyncio.sleep(1.0)
        metrics_after = (await http.get(url + "/metrics")).text

    # caller → Live
    sessions = _sessions_by_caller(sim)
    gaps_without = _windows_without_connection(sim, setup_s)
    up: list[float] = []
    replayed = lost = 0
    for r in results:
        arrivals = [t for c in sessions.get(r["index"], []) for t, _ in c.audio_in_chunks]
        lost += max(0, len(r["sent"]) - len(arrivals) - 3)  # ≤ 3 in flight at hang-up
        for (sent_at, _), arrived in zip(r["sent"], arrivals, strict=False):
            if any(a <= sent_at <= b for a, b in gaps_without):
                replayed += 1
            else:
                up.append((arrived - sent_at) * 1000)
                if os.environ.get("LOAD_DEBUG") and up[-1] > 8:
                    near = min((abs(sent_at - c.opened_at), "open") for c in sim.connections)
                    print(f"  slow up: caller {r['index']} +{sent_at - r['started_at']:.2f}s "
                          f"{up[-1]:.1f} ms; nearest {near}", file=sys.stderr)  # fmt: skip
    # Live → caller: first chunk of each model turn → first media of it at the caller;
    # first audio: the caller frame that ended an utterance (by the simulator's VAD) → the
    # first media of the answer at the caller, net of the simulator's think time.
    down: list[float] = []
    first_audio: list[float] = []
    think_s = args.think_ms / 1000
    for r in results:
        media = np.array(sorted(r["media"]))
        conns = sessions.get(r["index"], [])
        arrivals = np.array([t for c in conns for t, _ in c.audio_in_chunks])
        for start in _turn_starts(conns):
            j = int(np.searchsorted(media, start))
            if j < len(media) and (j == 0 or media[j - 1] < start - 0.3):
                down.append((media[j] - start) * 1000)
                if os.environ.get("LOAD_DEBUG") and down[-1] > 10:
                    print(f"  slow down: caller {r['index']} +{start - r['started_at']:.2f}s "
                          f"{down[-1]:.1f} ms", file=sys.stderr)  # fmt: skip
            i = int(np.searchsorted(arrivals, start - think_s, side="right")) - 1
            if j >= len(media) or i < 0 or i >= len(r["sent"]):
                continue
            sent_at, chunk = r["sent"][i]
            after_tone = ((chunk - 1) * FRAME_S - 1.0) % 4.0 - 0.8
            if abs(after_tone - VAD_SILENCE_S) <= 0.06:  # a turn that answers the caller
                first_audio.append((media[j] - sent_at - think_s) * 1000)
    # handoff gaps and late frames, from what the callers heard
    handoff_gaps: list[float] = []
    late = 0
    for r in results:
        frames = _voice_frames(r["heard"])
        gaps, holes = _gaps(frames)
        late += holes
        handoff_gaps += [g * FRAME_S * 1000 for g in gaps]
    lag_before, _ = _histogram(metrics_before, "gateway_event_loop_lag_seconds")
    lag_after, _ = _histogram(metrics_after, "gateway_event_loop_lag_seconds")
    return Level(
        calls=n,
        up=up,
        down=down,
        replayed=replayed,
        first_audio=first_audio,
        handoff_gaps=handoff_gaps,
        cpu_pct_per_call=(cpu1 - cpu0) / (t1 - t0) / n * 100,
        rss_mb_per_call=(peak_rss - idle_rss) / n,
        lag_p99_ms=_quantile(lag_before, lag_after, 0.99) * 1000,
        load_cpu_pct=(load1 - load0) / (t1 - t0) * 100,
        lost=lost,
        late=late,
        violations=sum(len(r["violations"]) for r in results),
    )


def _row(level: Level) -> str:
    def trio(xs: list[float]) -> str:
        return f"{_pct(xs, 50):.1f} / {_pct(xs, 99):.1f} / {max(xs, default=float('nan')):.1f}"

    gaps = level.handoff_gaps
    return (
        f"| {level.calls} | {trio(level.up)} | {trio(level.down)} | "
        f"{_pct(level.first_audio, 50):.1f} / {_pct(level.first_audio, 99):.1f} "
        f"({len(level.first_audio)}) | "
        f"{_pct(gaps, 50):.0f} / {max(gaps, default=float('nan')):.0f} ({len(gaps)}) | "
        f"{level.cpu_pct_per_call:.2f} | {level.rss_mb_per_call:.2f} | ≤{level.lag_p99_ms:.0f} | "
        f"{level.load_cpu_pct:.0f} | "
        f"{level.lost} | {level.late} | {level.violations} | {'yes' if level.ok else 'no'} |"
    )


HEADER = (
    "| calls | caller→Live ms p50/p99/max | Live→caller ms p50/p99/max | first audio net ms "
    "p50/p99 (n) | handoff gap heard ms p50/max (n) | CPU % core/call | RSS MB/call | loop lag "
    "p99 ms | load gen. CPU % | lost | late | violations | SLO met |\n|" + "---|" * 13
)


def _machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return f"{cpu.group(1) if cpu else platform.processor()}, {os.cpu_count()} cores"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="1,10,50,100")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--think-ms", type=int, default=150)
    parser.add_argument("--setup-delay-ms", type=int, default=100)
    parser.add_argument("--speed", type=float, default=2.0, help="model audio vs real time")
    parser.add_argument("--gateway-log", help="append the gateway's stderr (logs) to this file")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the caller workers")
    parser.add_argument(
        "--gateway-cpus", default="0", help="CPUs the gateway may run on ('' = any)"
    )
    parser.add_argument("--load-cpus", default="1", help="CPUs of the simulator and callers")
    args = parser.parse_args()
    print(f"machine: {_machine()}; Python {platform.python_version()}; "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    print(f"command: {' '.join(sys.argv)}")
    print(f"simulator: think {args.think_ms} ms, setup {args.setup_delay_ms} ms, "
          f"audio at {args.speed}x real time\n")  # fmt: skip
    print(HEADER, flush=True)
    for n in (int(x) for x in args.calls.split(",")):
        level = await run_level(n, args)
        print(_row(level), flush=True)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(main())
