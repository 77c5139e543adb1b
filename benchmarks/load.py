"""Load benchmark: N concurrent simulated calls through a gateway running as its own process.

Run by hand (not a test)::

    .venv/bin/python benchmarks/load.py --calls 1,10,50,100 --duration 20 --provider both

The gateway (``gateway serve``) runs alone in a child process, so its CPU and memory are its
own. The model simulator runs in this process and the callers in worker processes; all share
the machine's CLOCK_MONOTONIC, so timestamps taken by different peers can be subtracted.

``--provider`` picks the model side: ``gemini`` (the repository's agents.yaml against the Live
simulator, ``callsim.live``), ``openai`` (the same two agents and handoff on ``provider:
openai`` with two different OpenAI voices, so a handoff opens a new session, against the
Realtime simulator, ``callsim.realtime``) or ``both`` (each level runs on Gemini, then on
OpenAI, and a side-by-side table follows the per-provider ones). ``--same-voice`` gives both
OpenAI agents one voice, so a handoff is an in-place ``session.update`` instead.

Each caller speaks a tone at its own frequency (which also identifies its Live session),
pauses, speaks again; the simulated model answers every caller turn and hands the call to the
other agent on the second turn, so handoffs happen under load. Measured per level:

- added latency, caller → Live: a caller frame's send time → its arrival at the simulator
  (frames sent while the gateway had no Live connection, i.e. during a connect or handoff,
  are excluded here and counted under "replayed"); on OpenAI the arrival is the
  ``input_audio_buffer.append`` in the connection's ``client_events``;
- added latency, Live → caller: the first audio chunk of a model turn leaving the simulator →
  the first media message of that turn reaching the caller; on OpenAI the first
  ``response.output_audio.delta`` after a ``response.created`` in ``sent_events``;
- first-audio latency (the caller frame that ended an utterance → the answer's first frame at
  the caller, net of the simulator's think time) and the
  handoff gap heard by the caller (old voice's last frame → new voice's first; with
  ``--same-voice``, the silence after the old agent's "Let me transfer you." up to the new
  agent's first frame);
- the gateway's CPU per call (% of one core), RSS per call, event-loop lag p99;
- frames lost (sent by callers, never reaching the simulator) and late (a gap inside an agent
  utterance at the caller: its playback ran dry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import wire  # noqa: E402 -- benchmarks/wire.py

from callsim.callers.audio import Segment, Silence, Tone, render  # noqa: E402
from callsim.callers.twilio import TwilioCaller  # noqa: E402
from callsim.live.model import ModelOptions  # noqa: E402
from callsim.live.script import HANDOFF_FUNCTION  # noqa: E402
from callsim.live.server import LiveSimulator  # noqa: E402
from callsim.live.voices import voice_pitch_hz  # noqa: E402
from callsim.realtime.records import RealtimeConnectionRecord  # noqa: E402
from callsim.realtime.server import RealtimeSimulator  # noqa: E402
from gateway.audio.analysis import dominant_frequency, rms_dbfs  # noqa: E402
from gateway.audio.g711 import ulaw_decode  # noqa: E402
from gateway.cli import _fast_loop  # noqa: E402
from gateway.realtime.config import TURN_DETECTION  # noqa: E402

FRAME_S = 0.020
#: The Live simulator's end-of-utterance silence (its VAD's ``silence_ms``; the default is used).
VAD_SILENCE_S = ModelOptions().vad_silence_ms / 1000
VOICES = ("Aoede", "Charon")

Provider = Literal["gemini", "openai"]
#: The Realtime simulator's end-of-utterance silence: the gateway's ``server_vad`` setting,
#: which the simulator's VAD takes from the session (500 ms, against the Live simulator's 400).
OPENAI_VAD_SILENCE_S = int(TURN_DETECTION["silence_duration_ms"]) / 1000
#: The OpenAI agents' voices: far apart on the simulator's pitch grid (1112 Hz and 920 Hz).
OPENAI_VOICES = ("marin", "alloy")
OPENAI_MODEL = "gpt-realtime"
#: The caller's number carries its index, so every Realtime connection (its instructions
#: render ``{{caller_number}}``) is told apart exactly, with or without caller speech on it.
CALLER_NUMBER = "+1415555{:04d}"
_CALLER_IN_PROMPT = re.compile(r"\+1415555(\d{4})")


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
            url,
            audio=render(caller_audio(i, duration)),
            linger_s=0.3,
            from_number=CALLER_NUMBER.format(i),
        ).run()
        sent = [(t, int(m["media"]["chunk"])) for t, m in result.sent if m.get("event") == "media"]
        media = [t for t, m in result.received if m.get("event") == "media"]
        return {"index": i, "sent": sent, "media": media, "heard": result.heard_pcm(),
                "started_at": result.started_at, "violations": result.violations,
                "stream_sid": result.stream_sid}  # fmt: skip

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
    """CPU seconds of the load generators: this process (the simulator) and the callers."""
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


def _openai_agents(same_voice: bool) -> str:
    """The repository's agents.yaml on ``provider: openai``: same agents, tools and pipeline,
    OpenAI voices, and the caller's number in each prompt (to tell connections apart)."""
    spec = yaml.safe_load((ROOT / "agents.yaml").read_text())
    spec = {"provider": "openai", **spec, "model": OPENAI_MODEL}
    voices = (OPENAI_VOICES[0],) * 2 if same_voice else OPENAI_VOICES
    for agent, voice in zip(spec["agents"], voices, strict=True):
        agent["voice"] = voice
        agent["system_prompt"] = f"{agent['system_prompt']} Caller: {{{{caller_number}}}}."
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------- analysis: Gemini Live


def _sessions_by_caller(sim: LiveSimulator, loud_dbfs: float = -30.0) -> dict[int, list[Any]]:
    """Caller index → its Live connections in order, by the pitch of the caller's tone (0.2 s
    from its first 0.1 s above ``loud_dbfs``)."""
    by_session: dict[int, list[Any]] = {}
    for conn in sim.connections:
        if conn.session_id is not None:
            by_session.setdefault(conn.session_id, []).append(conn)
    out: dict[int, list[Any]] = {}
    for conns in by_session.values():
        audio = bytes(conns[0].audio_in)
        windows = range(0, len(audio) - 6400, 3200)
        loud = [i for i in windows if rms_dbfs(audio[i : i + 3200]) > loud_dbfs]
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


# ---------------------------------------------------------------------- analysis: OpenAI Realtime


def _rt_connections_by_caller(
    sim: RealtimeSimulator,
) -> dict[int, list[RealtimeConnectionRecord]]:
    """Caller index → its Realtime connections in order, by the caller's number in the
    instructions (a Realtime session has no id that outlives its socket; a connection opened
    after a call's last utterance hears no caller tone to tell it by)."""
    out: dict[int, list[RealtimeConnectionRecord]] = {}
    for conn in sim.connections:
        match = _CALLER_IN_PROMPT.search(conn.instructions)
        if match is not None:
            out.setdefault(int(match.group(1)), []).append(conn)
    return out


def _rt_caller_hz(conns: list[RealtimeConnectionRecord]) -> float | None:
    """The caller tone's pitch on these connections (μ-law 8 kHz in), a cross-check."""
    audio = ulaw_decode(b"".join(bytes(c.audio_in) for c in conns))
    step = 1600  # 100 ms of PCM16 at 8 kHz
    loud = [i for i in range(0, len(audio) - step, step) if rms_dbfs(audio[i : i + step]) > -30]
    return dominant_frequency(audio[loud[0] : loud[0] + 2 * step], 8000) if loud else None


def _rt_arrivals(conns: list[RealtimeConnectionRecord]) -> list[float]:
    """Arrival times of caller audio: every ``input_audio_buffer.append`` (one per frame)."""
    return [t for c in conns for t, kind in c.client_events if kind == "input_audio_buffer.append"]


def _rt_ready_at(conn: RealtimeConnectionRecord) -> float:
    """When the connection took the gateway's configuration (its first ``session.updated``)."""
    return next((t for t, kind in conn.sent_events if kind == "session.updated"), conn.opened_at)


def _rt_windows_without_connection(sim: RealtimeSimulator) -> list[tuple[float, float]]:
    """As :func:`_windows_without_connection`: a new connection's dial and configuration, and
    around every close (the Realtime simulator has no setup delay; the gateway releases the
    audio it held once the new connection is configured and seeded)."""
    windows = []
    for conn in sim.connections:
        ready = _rt_ready_at(conn) + 0.05
        windows.append((conn.opened_at - 10.0 if conn.index == 0 else conn.opened_at - 0.5, ready))
        if conn.closed_at is not None:
            windows.append((conn.closed_at - 0.05, conn.closed_at + 0.5))
    return windows


def _rt_turn_starts(conns: list[RealtimeConnectionRecord]) -> list[float]:
    """Send times of the first ``response.output_audio.delta`` of every response."""
    return [at for conn in conns for at, _ in _rt_responses(conn) if at is not None]


def _rt_responses(conn: RealtimeConnectionRecord) -> list[tuple[float | None, int]]:
    """Per response of the connection, in order: when its first audio delta was sent (None:
    it had no audio) and, for a handoff turn, how many 20 ms frames it spoke before the call
    (0 for any other response)."""
    starts: list[float | None] = []
    waiting = False
    for at, kind in conn.sent_events:
        if kind == "response.created":
            starts.append(None)
            waiting = True
        elif kind == "response.output_audio.delta" and waiting:
            starts[-1] = at
            waiting = False
    out = []
    for start, response in zip(starts, conn.responses, strict=False):
        items = [conn.item(i) for i in response.output_item_ids]
        spoken = sum(len(it.audio) for it in items if it is not None and it.type == "message")
        handoff = any(it is not None and it.name == HANDOFF_FUNCTION for it in items)
        out.append((start, round(spoken / (8000 * FRAME_S)) if handoff else 0))
    return out


# ---------------------------------------------------------------------- analysis: the caller


def _voice_frames(
    heard: bytes, rate: int = 8000, voices: tuple[str, ...] = VOICES
) -> list[str | None]:
    """Per 20 ms frame: which agent voice (by pitch) was heard, or None for silence."""
    pitches = {v: voice_pitch_hz(v) for v in voices}
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


def _gap_after(frames: list[str | None], start: int, length: int) -> int | None:
    """Silent frames after an utterance of ``length`` frames that starts playing near frame
    ``start`` (the one-voice handoff: pitch cannot tell the agents apart, so the old agent's
    last utterance is located by when it reached the caller and how long it was)."""
    first = next((i for i in range(max(0, start - 3), start + 10) if i < len(frames) and
                  frames[i] is not None), None)  # fmt: skip
    if first is None:
        return None
    k = first + length - 2  # fades may leave an edge frame under the silence threshold
    while k < min(first + length + 3, len(frames)) and frames[k] is not None:
        k += 1
    silent = 0
    while k + silent < len(frames) and frames[k + silent] is None:
        silent += 1
    return silent if k + silent < len(frames) else None


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
    #: Handoff call → the new agent's first audio, both at the simulator (see _switch_ms).
    switch_ms: list[float]
    cpu_pct_per_call: float
    rss_mb_per_call: float
    lag_p99_ms: float
    load_cpu_pct: float
    lost: int
    late: int
    violations: int
    #: Calls whose model connections the analysis could not find (0 unless something broke).
    unattributed: int = 0
    #: ``--wire`` (Gemini): the same up and down latencies read off a loopback capture, over
    #: the steady window (:func:`_wire_live`), and the capture's dropped packets and cut
    #: streams (both must be 0).
    wire_up: list[float] | None = None
    wire_down: list[float] | None = None
    wire_faults: tuple[int | None, int] = (0, 0)

    @property
    def ok(self) -> bool:
        return (
            _pct(self.up, 99) < 20
            and _pct(self.down, 99) < 20
            and self.lost == 0
            and self.late == 0
            and self.violations == 0
        )


@dataclass
class Observed:
    """What one provider's simulator saw, reduced to what the measurements need: per caller,
    the arrival times of its audio frames (one per carrier frame, in order) and the send times
    of the first audio of each model turn; and the windows in which a call had no usable model
    connection (frames sent then were held and replayed)."""

    arrivals: dict[int, list[float]]
    turn_starts: dict[int, list[float]]
    windows: list[tuple[float, float]]
    vad_silence_s: float
    #: Per caller, (first audio sent, frames spoken) of every handoff turn (Realtime only).
    handoffs: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    #: Per caller, when each handoff call left the simulator (the gateway acts on it then).
    handoff_calls: dict[int, list[float]] = field(default_factory=dict)


def _switch_ms(seen: Observed) -> list[float]:
    """Per handoff: the call leaving the simulator → the new agent's first audio leaving it,
    in ms (the gateway's switch plus the simulator's think time and, on Live, setup delay)."""
    out = []
    for caller, calls in seen.handoff_calls.items():
        starts = np.array(sorted(seen.turn_starts.get(caller, [])))
        for at in calls:
            j = int(np.searchsorted(starts, at))
            if j < len(starts):
                out.append((starts[j] - at) * 1000)
    return out


def _observed_live(sim: LiveSimulator, setup_s: float) -> Observed:
    sessions = _sessions_by_caller(sim)
    return Observed(
        arrivals={i: [t for c in cs for t, _ in c.audio_in_chunks] for i, cs in sessions.items()},
        turn_starts={i: _turn_starts(cs) for i, cs in sessions.items()},
        windows=_windows_without_connection(sim, setup_s),
        vad_silence_s=VAD_SILENCE_S,
        handoff_calls={
            i: [m.at for c in cs for m in c.sent if m.kind == "toolCall"]
            for i, cs in sessions.items()
        },
    )


def _observed_realtime(sim: RealtimeSimulator) -> Observed:
    by_caller = _rt_connections_by_caller(sim)
    for i, conns in by_caller.items():
        hz = _rt_caller_hz(conns)
        if hz is not None and abs(hz - caller_hz(i)) > 3.5:
            print(f"  warning: caller {i}'s connections carry {hz:.0f} Hz", file=sys.stderr)
        if os.environ.get("LOAD_DEBUG"):
            print(f"  caller {i}: connections " + ", ".join(
                f"{c.index} {c.voice} ({len(c.session_updates)} session.update, "
                f"{sum(1 for r in c.responses if r.status == 'completed')} responses)"
                for c in conns), file=sys.stderr)  # fmt: skip
    return Observed(
        arrivals={i: _rt_arrivals(cs) for i, cs in by_caller.items()},
        turn_starts={i: _rt_turn_starts(cs) for i, cs in by_caller.items()},
        windows=_rt_windows_without_connection(sim),
        vad_silence_s=OPENAI_VAD_SILENCE_S,
        handoffs={
            i: [(at, n) for c in cs for at, n in _rt_responses(c) if at is not None and n]
            for i, cs in by_caller.items()
        },
        handoff_calls={i: [t for c in cs for t in _rt_call_done(c)] for i, cs in by_caller.items()},
    )


def _rt_call_done(conn: RealtimeConnectionRecord) -> list[float]:
    """When each response that made a function call (here: only handoffs) was done: the
    gateway hands calls over on ``response.done``."""
    out, called = [], False
    for at, kind in conn.sent_events:
        if kind == "response.function_call_arguments.done":
            called = True
        elif kind == "response.done" and called:
            out.append(at)
            called = False
    return out


# ---------------------------------------------------------------------- one level


async def run_level(n: int, args: argparse.Namespace, provider: Provider) -> Level:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with _simulator(provider, args, tmp) as (sim, sim_env):
            if provider == "gemini":
                agents = (ROOT / "agents.yaml").read_text()
            else:
                agents = _openai_agents(args.same_voice)
            (tmp / "agents.yaml").write_text(agents)
            port = _free_port()
            env = {
                **os.environ,
                **sim_env,
                "SSL_CERT_FILE": str(tmp / "ca.pem"),
                "LOG_LEVEL": "warning",
                "MAX_CONCURRENT_CALLS": "10000",
                "CARRIERS": "twilio",
                "ALLOW_UNSIGNED_WEBHOOKS": "true",  # a benchmark, not a deployment
                "OPENBLAS_NUM_THREADS": "1",
                # One process: what is measured is what one event loop (a core) carries, and
                # the CPU and RSS read are that process's; workers multiply it.
                "WORKERS": "1",
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
                return await _drive(n, args, sim, gateway.pid, url, provider)
            finally:
                gateway.send_signal(signal.SIGTERM)
                await asyncio.to_thread(gateway.wait, 30)


@contextlib.asynccontextmanager
async def _simulator(
    provider: Provider, args: argparse.Namespace, tmp: Path
) -> AsyncIterator[tuple[LiveSimulator | RealtimeSimulator, dict[str, str]]]:
    """The provider's simulator, its CA written to ``tmp/ca.pem``, and the gateway's settings."""
    if provider == "gemini":
        async with LiveSimulator(
            think_ms=args.think_ms, setup_delay_ms=args.setup_delay_ms, speed=args.speed
        ) as live:
            live.tls.write_ca(tmp / "ca.pem")
            yield live, {"GEMINI_API_KEY": "bench-key", "GEMINI_BASE_URL": live.base_url}
        return
    async with RealtimeSimulator(think_ms=args.think_ms, speed=args.speed) as realtime:
        realtime.tls.write_ca(tmp / "ca.pem")
        yield realtime, {"OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": realtime.base_url}


async def _drive(
    n: int,
    args: argparse.Namespace,
    sim: LiveSimulator | RealtimeSimulator,
    pid: int,
    url: str,
    provider: Provider,
) -> Level:
    capture: wire.Capture | None = None
    wire_up: list[float] | None = None
    wire_down: list[float] | None = None
    wire_faults: tuple[int | None, int] = (0, 0)
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as http:
        for _ in range(200):
            try:
                if (await http.get(url + "/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        warm = await TwilioCaller(
            url, audio=render([Silence(1.5)]), linger_s=0.1, from_number=CALLER_NUMBER.format(9999)
        ).run()
        assert not warm.violations, warm.violations
        await asyncio.sleep(0.5)
        idle_rss = _rss_mb(pid)
        metrics_before = (await http.get(url + "/metrics")).text
        if args.wire and isinstance(sim, LiveSimulator):
            where = stack.enter_context(wire.scratch_dir())
            capturing = await stack.enter_async_context(contextlib.AsyncExitStack())
            capture = await capturing.enter_async_context(
                wire.capturing(where / "lo.pcap", [_port_of(url), _port_of(sim.base_url)],
                               _cpus(args.load_cpus))
            )  # fmt: skip

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
        if capture is not None:
            await capturing.aclose()  # stopped and written (its directory goes with the block)
            assert isinstance(sim, LiveSimulator)
            wire_up, wire_down, wire_faults = await asyncio.to_thread(
                _wire_live, capture, sim, results, (t0, t1), _port_of(url),
                capture.offset,
            )  # fmt: skip

    if isinstance(sim, LiveSimulator):
        seen = _observed_live(sim, args.setup_delay_ms / 1000)
    else:
        seen = _observed_realtime(sim)
    voices = VOICES if provider == "gemini" else _openai_voices(args.same_voice)
    # caller → model
    up: list[float] = []
    replayed = lost = 0
    for r in results:
        arrivals = seen.arrivals.get(r["index"], [])
        lost += max(0, len(r["sent"]) - len(arrivals) - 3)  # ≤ 3 in flight at hang-up
        for (sent_at, _), arrived in zip(r["sent"], arrivals, strict=False):
            if any(a <= sent_at <= b for a, b in seen.windows):
                replayed += 1
            else:
                up.append((arrived - sent_at) * 1000)
                if os.environ.get("LOAD_DEBUG") and up[-1] > 8:
                    print(f"  slow up: caller {r['index']} +{sent_at - r['started_at']:.2f}s "
                          f"{up[-1]:.1f} ms", file=sys.stderr)  # fmt: skip
    # model → caller: first chunk of each model turn → first media of it at the caller;
    # first audio: the caller frame that ended an utterance (by the simulator's VAD) → the
    # first media of the answer at the caller, net of the simulator's think time.
    down: list[float] = []
    first_audio: list[float] = []
    think_s = args.think_ms / 1000
    for r in results:
        media = np.array(sorted(r["media"]))
        arrivals_in = np.array(seen.arrivals.get(r["index"], []))
        for start in seen.turn_starts.get(r["index"], []):
            j = int(np.searchsorted(media, start))
            if j < len(media) and (j == 0 or media[j - 1] < start - 0.3):
                down.append((media[j] - start) * 1000)
                if os.environ.get("LOAD_DEBUG") and down[-1] > 10:
                    print(f"  slow down: caller {r['index']} +{start - r['started_at']:.2f}s "
                          f"{down[-1]:.1f} ms", file=sys.stderr)  # fmt: skip
            i = int(np.searchsorted(arrivals_in, start - think_s, side="right")) - 1
            if j >= len(media) or i < 0 or i >= len(r["sent"]):
                continue
            sent_at, chunk = r["sent"][i]
            after_tone = ((chunk - 1) * FRAME_S - 1.0) % 4.0 - 0.8
            if abs(after_tone - seen.vad_silence_s) <= 0.06:  # a turn that answers the caller
                first_audio.append((media[j] - sent_at - think_s) * 1000)
    # handoff gaps and late frames, from what the callers heard
    handoff_gaps: list[float] = []
    late = 0
    for r in results:
        frames = _voice_frames(r["heard"], voices=voices)
        gaps, holes = _gaps(frames)
        if len(voices) == 1:  # one voice: _gaps sees no handoff; a short one looked "late"
            heard_at = sorted(r["media"])
            gaps = []
            for sent_at, spoken in seen.handoffs.get(r["index"], []):
                j = int(np.searchsorted(heard_at, sent_at))
                if j < len(heard_at):
                    start = round((heard_at[j] - r["started_at"]) / FRAME_S)
                    gap = _gap_after(frames, start, spoken)
                    if gap is not None:
                        gaps.append(gap)
                        holes -= gap if 0 < gap <= 5 else 0
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
        switch_ms=_switch_ms(seen),
        cpu_pct_per_call=(cpu1 - cpu0) / (t1 - t0) / n * 100,
        rss_mb_per_call=(peak_rss - idle_rss) / n,
        lag_p99_ms=_quantile(lag_before, lag_after, 0.99) * 1000,
        load_cpu_pct=(load1 - load0) / (t1 - t0) * 100,
        lost=lost,
        late=late,
        violations=sum(len(r["violations"]) for r in results),
        unattributed=sum(1 for r in results if r["index"] not in seen.arrivals),
        wire_up=wire_up,
        wire_down=wire_down,
        wire_faults=wire_faults,
    )


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _wire_live(
    capture: wire.Capture,
    sim: LiveSimulator,
    results: list[dict[str, Any]],
    window: tuple[float, float],
    gateway_port: int,
    offset: float,
) -> tuple[list[float], list[float], tuple[int | None, int]]:
    """The added latency up and down over the steady ``window``, from the capture's kernel
    timestamps (:class:`wire.Traffic`): each caller frame as it reached the gateway → the
    model frame it became leaving it (the n-th of each, per call, over all its Live
    connections: a handoff's takeover is text and replays no audio); each answer's first
    record leaving the simulator → its first media message leaving the gateway. Frames sent
    while a call had no usable Live connection were held: left out, as by the callers'
    stamps."""
    traffic = wire.Traffic(capture.path.read_bytes(), gateway_port, _port_of(sim.base_url), offset)
    windows = _windows_without_connection(sim, sim.setup_delay_ms / 1000)
    t0, t1 = window
    up: list[float] = []
    down: list[float] = []
    for index, conns in _sessions_by_caller(sim).items():
        sid = next((r["stream_sid"] for r in results if r["index"] == index), "")
        if not traffic.has_call(sid):
            continue
        ports = [c.client_port for c in conns]
        for at, written in zip(traffic.caller_frames(sid), traffic.model_frames(ports),
                               strict=False):  # fmt: skip
            if t0 <= at <= t1 and not any(a <= at <= b for a, b in windows):
                up.append((written - at) * 1000)
        media = [at for at, _ in traffic.gateway_media(sid)]
        answers = wire.answer_latencies(_turn_starts(conns), traffic.model_records(ports), media)
        down += [ms for at, ms in answers if t0 <= at <= t1]
    return up, down, (capture.dropped, traffic.broken)


def _openai_voices(same_voice: bool) -> tuple[str, ...]:
    return (OPENAI_VOICES[0],) if same_voice else OPENAI_VOICES


# ---------------------------------------------------------------------- output


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
OPENAI_HEADER = HEADER.replace("caller→Live", "caller→Realtime").replace(
    "Live→caller", "Realtime→caller"
)


WIRE_HEADER = (
    "| calls | caller→Live ms p50 / p99 (frames) | Live→caller ms p50 / p99 (answers) | "
    "packets dropped / streams cut |\n|---|---|---|---|"
)


def _wire_row(level: Level) -> str:
    up, down = level.wire_up or [], level.wire_down or []
    dropped, broken = level.wire_faults
    return (
        f"| {level.calls} | {_pct(up, 50):.1f} / {_pct(up, 99):.1f} ({len(up)}) | "
        f"{_pct(down, 50):.1f} / {_pct(down, 99):.1f} ({len(down)}) | "
        f"{'?' if dropped is None else dropped} / {broken} |"
    )


def _title(provider: Provider, same_voice: bool) -> str:
    if provider == "gemini":
        return "Gemini Live"
    return "OpenAI Realtime" + (
        " (one voice: handoff in place)" if same_voice else " (two voices: new session)"
    )


def _side_by_side(n: int, levels: dict[Provider, Level], same_voice: bool) -> str:
    """One level of calls, the providers in columns."""

    def p50_p99(xs: list[float]) -> str:
        return f"{_pct(xs, 50):.1f} / {_pct(xs, 99):.1f}"

    rows: list[tuple[str, Any]] = [
        ("CPU ms per call-second (% of one core per call)",
         lambda v: f"{v.cpu_pct_per_call * 10:.1f} ({v.cpu_pct_per_call:.2f} %)"),
        ("RSS MB per call", lambda v: f"{v.rss_mb_per_call:.2f}"),
        ("added latency caller→model ms p50 / p99", lambda v: p50_p99(v.up)),
        ("added latency model→caller ms p50 / p99", lambda v: p50_p99(v.down)),
        ("first audio net of think time ms p50 / p99 (n)",
         lambda v: f"{p50_p99(v.first_audio)} ({len(v.first_audio)})"),
        ("handoff gap heard ms p50 / max (n)",
         lambda v: f"{_pct(v.handoff_gaps, 50):.0f} / "
                   f"{max(v.handoff_gaps, default=float('nan')):.0f} ({len(v.handoff_gaps)})"),
        ("handoff at the model: call → new agent's first audio ms p50 / max (n)",
         lambda v: f"{_pct(v.switch_ms, 50):.0f} / "
                   f"{max(v.switch_ms, default=float('nan')):.0f} ({len(v.switch_ms)})"),
        ("frames lost / late", lambda v: f"{v.lost} / {v.late}"),
        ("gateway loop lag p99 ms", lambda v: f"≤{v.lag_p99_ms:.0f}"),
        ("frames replayed after a connect or handoff (not in the latency)",
         lambda v: f"{v.replayed}"),
        ("load generators' CPU % of their core", lambda v: f"{v.load_cpu_pct:.0f}"),
        ("protocol violations / calls unattributed",
         lambda v: f"{v.violations} / {v.unattributed}"),
    ]  # fmt: skip
    providers = list(levels)
    lines = [
        f"{n} calls:\n",
        "| | " + " | ".join(_title(p, same_voice) for p in providers) + " |",
        "|---|" + "---|" * len(providers),
    ]
    lines += [f"| {name} | " + " | ".join(cell(levels[p]) for p in providers) + " |"
              for name, cell in rows]  # fmt: skip
    return "\n".join(lines)


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
    parser.add_argument(
        "--setup-delay-ms", type=int, default=100, help="Live simulator only (Realtime has none)"
    )
    parser.add_argument("--speed", type=float, default=2.0, help="model audio vs real time")
    parser.add_argument("--provider", choices=("gemini", "openai", "both"), default="both")
    parser.add_argument(
        "--same-voice",
        action="store_true",
        help="OpenAI: both agents on one voice, so a handoff is an in-place session.update",
    )
    parser.add_argument("--gateway-log", help="append the gateway's stderr (logs) to this file")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the caller workers")
    parser.add_argument(
        "--gateway-cpus", default="0", help="CPUs the gateway may run on ('' = any)"
    )
    parser.add_argument("--load-cpus", default="1", help="CPUs of the simulator and callers")
    parser.add_argument(
        "--wire",
        action="store_true",
        help="Gemini: also read the added latency off a loopback capture (tcpdump, root)",
    )
    args = parser.parse_args()
    providers: list[Provider] = ["gemini", "openai"] if args.provider == "both" else [args.provider]
    print(f"machine: {_machine()}; Python {platform.python_version()}; "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    print(f"command: {' '.join(sys.argv)}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "gemini" in providers:
        print(f"Live simulator: think {args.think_ms} ms, setup {args.setup_delay_ms} ms, "
              f"audio at {args.speed}x real time, VAD end after "
              f"{VAD_SILENCE_S * 1000:.0f} ms; agents {' / '.join(VOICES)}")  # fmt: skip
    if "openai" in providers:
        print(f"Realtime simulator: think {args.think_ms} ms, no setup delay, "
              f"audio at {args.speed}x real time, VAD end after "
              f"{OPENAI_VAD_SILENCE_S * 1000:.0f} ms (the gateway's server_vad); agents "
              f"{' / '.join(_openai_voices(args.same_voice))}")  # fmt: skip
    print(flush=True)
    levels: dict[int, dict[Provider, Level]] = {}
    for n in (int(x) for x in args.calls.split(",")):
        for provider in providers:
            print(f"  running {n} calls on {provider}…", file=sys.stderr, flush=True)
            levels.setdefault(n, {})[provider] = level = await run_level(n, args, provider)
            print(f"  {provider} {_row(level)}", file=sys.stderr, flush=True)
    for provider in providers:
        print(f"{_title(provider, args.same_voice)}:\n")
        print(HEADER if provider == "gemini" else OPENAI_HEADER)
        for by_provider in levels.values():
            print(_row(by_provider[provider]))
        print()
        if provider == "gemini" and args.wire:
            print("On the wire (kernel timestamps of a loopback capture, steady window: the "
                  "gateway's share alone):\n")  # fmt: skip
            print(WIRE_HEADER)
            for by_provider in levels.values():
                print(_wire_row(by_provider[provider]))
            print()
    for n, by_provider in levels.items():
        print(_side_by_side(n, by_provider, args.same_voice) + "\n")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(main())
