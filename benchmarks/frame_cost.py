"""CPU per 20 ms frame of every transcoder path a call uses, as the call bridge drives it.

Run by hand (not a test; ~10 s, or ~1.5 min for a ``--compare`` of three revisions):

    PYTHONPATH=. .venv/bin/python benchmarks/frame_cost.py             # markdown table
    PYTHONPATH=. .venv/bin/python benchmarks/frame_cost.py --quick     # fewer repetitions

It measures whichever ``gateway`` package is imported (the header names its folder), so the same
script times an older revision too. ``--compare`` does that for several at once, each in a
process of its own, alternating, and prints one column per revision:

    mkdir -p /tmp/old && git archive REV gateway | tar -x -C /tmp/old
    .venv/bin/python benchmarks/frame_cost.py --compare before=/tmp/old after=.

Why this exists next to ``audio_resamplers.py`` and ``audio_quality.py``: those time a resampler
alone, fed one tone frame over and over. The gateway pays for the whole transcoder of each
direction (decode, resample, encode, framing) and, on the uplink, for the voice-activity check
the bridge runs on every frame. So this script builds the transcoders with ``uplink_for`` and
``downlink_for`` exactly as ``gateway/call/bridge.py`` does (``_wire_audio``) and times exactly
the calls the bridge makes per frame:

* uplink: ``audio = uplink.feed(payload)`` then ``uplink.voiced(audio)`` (``_on_caller_audio``;
  the bridge always has an idle watch, so the check runs on every frame). ``payload`` is already
  bytes there: the carrier codec did the base64 and JSON, which this script does not time.
* downlink: ``downlink.feed(pcm)`` (``_on_agent_audio``), model audio in ``--chunk-ms`` chunks
  (default 20 ms: every per-call overhead is charged to every frame, the expensive case; the
  Live simulator sends 40 ms).

The audio is speech-like, not zeros or one tone: a voice with a wandering pitch and moving
formants, syllables, fricative noise and pauses with line noise, so the codecs see the values and
the voice check sees both answers that a call gives them (see ``speech_like``).

Timing: each path streams ``--frames`` frames (cycling over 10 s of audio) per round,
round-robin over all paths so that a burst of load from the machine's other users hits them all
alike; the figure is the best round, in process CPU time (time the process was descheduled is not
counted). The transcoder keeps its state across rounds like a long call.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

import gateway
from gateway.audio import g711, g722
from gateway.audio.transcode import (
    FRAME_MS,
    G722_16K,
    L16_16K,
    PCM16_16K,
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
    downlink_for,
    uplink_for,
)

Float64Array = npt.NDArray[np.float64]

SECONDS = 10.0
"""Length of the speech-like signal; the frames cycle over it."""


# --------------------------------------------------------------------------------------------
# Speech-like audio
# --------------------------------------------------------------------------------------------


def _noise(rate: int, seconds: float, low_hz: float, high_hz: float, seed: int) -> Float64Array:
    """Band-limited noise defined in Hz, so it is the same waveform at every rate (unit RMS)."""
    n = round(rate * seconds)
    rng = np.random.default_rng(seed)
    spectrum = np.zeros(n // 2 + 1, dtype=complex)
    lo, hi = int(low_hz * seconds), min(int(high_hz * seconds), n // 2)
    spectrum[lo:hi] = rng.normal(size=hi - lo) + 1j * rng.normal(size=hi - lo)
    wave = np.fft.irfft(spectrum, n)
    return np.asarray(wave / np.sqrt(np.mean(wave * wave)))


@cache
def speech_like(rate: int, seconds: float = SECONDS, seed: int = 7) -> Float64Array:
    """A deterministic voice-like signal at ``rate`` in full-scale units (|x| < 1).

    Voiced sound is a sum of harmonics of a pitch that wanders between ~100 and ~220 Hz, shaped by
    three formants that move from syllable to syllable; syllables come at ~4 a second with an
    attack and a decay, between them short fricatives (noise above 2.5 kHz), and every ~2 s a
    pause of ~0.4 s holding only line noise at -60 dBFS. Active speech sits near -20 dBFS with
    peaks near -6 dBFS, so μ-law and A-law use their whole range. Everything is defined in Hz and
    seconds, so the same voice comes out at 8, 16 and 24 kHz (each band-limited to its Nyquist).
    """
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    t = np.arange(n) / rate
    syllable = 0.25  # seconds
    count = int(seconds / syllable) + 1
    # Per-syllable parameters, interpolated smoothly over time.
    pitch = (
        150.0
        + 50.0 * np.sin(2 * np.pi * 0.3 * t)
        + np.interp(t, np.arange(count) * syllable, rng.uniform(-30.0, 30.0, count))
    )
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    formants = [
        np.interp(t, np.arange(count) * syllable, rng.uniform(lo, hi, count))
        for lo, hi in ((300.0, 800.0), (900.0, 2200.0), (2300.0, 3200.0))
    ]
    bandwidths = (90.0, 120.0, 180.0)
    voiced = np.zeros(n)
    for k in range(1, int(min(rate / 2, 11000.0) / 100.0)):
        freq = k * pitch
        gain = np.zeros(n)
        for centre, width in zip(formants, bandwidths, strict=True):
            gain += 1.0 / (1.0 + ((freq - centre) / width) ** 2)
        gain *= (freq < 0.47 * rate) / k**0.5  # each rate keeps what it can represent
        voiced += gain * np.sin(k * phase)
    voiced /= np.sqrt(np.mean(voiced * voiced))
    in_syllable = (t % syllable) / syllable
    envelope = np.clip(in_syllable / 0.15, 0.0, 1.0) * np.clip((0.8 - in_syllable) / 0.3, 0.0, 1.0)
    fricative = ((in_syllable > 0.8) & (np.floor(t / syllable) % 3 == 0)).astype(float)
    paused = (t % 2.0) > 1.6
    hiss = _noise(rate, seconds, 2500.0, 7500.0, seed + 1)
    line = _noise(rate, seconds, 100.0, 3400.0, seed + 2)
    speech = 0.1 * envelope * voiced + 0.03 * fricative * hiss
    out = np.where(paused, 0.0, speech) + 0.001 * line
    signal = np.clip(out, -0.999, 0.999)
    signal.setflags(write=False)  # cached: shared by every path
    return signal


def pcm16(samples: Float64Array) -> bytes:
    return bytes(np.round(samples * 32767.0).astype("<i2").tobytes())


def frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def carrier_payloads(fmt: AudioFormat) -> list[bytes]:
    """What the carrier sends for ``fmt``: 20 ms payloads of the speech-like signal."""
    pcm = pcm16(speech_like(fmt.sample_rate))
    if fmt.encoding == "PCMU":
        coded = g711.ulaw_encode(pcm)
    elif fmt.encoding == "PCMA":
        coded = g711.alaw_encode(pcm)
    elif fmt.encoding == "G722":
        coded = g722.G722Encoder().encode(pcm)
    elif fmt.byteorder == "big":
        coded = g711.pcm16_byteswap(pcm)
    else:
        coded = pcm
    return frames(coded, fmt.frame_bytes)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One direction of one call set-up: the call the bridge makes per frame, and its inputs."""

    name: str
    direction: str
    step: Callable[[bytes], object]
    inputs: list[bytes]
    frames_per_input: float  # 20 ms frames of audio per input chunk


def uplink_path(name: str, carrier: AudioFormat, model: AudioFormat) -> Case:
    uplink = uplink_for(carrier, model)

    def step(payload: bytes) -> object:
        return uplink.voiced(uplink.feed(payload))  # _on_caller_audio, minus the send

    return Case(name, "uplink", step, carrier_payloads(carrier), 1.0)


def uplink_feed_only(name: str, carrier: AudioFormat, model: AudioFormat) -> Case:
    uplink = uplink_for(carrier, model)
    return Case(name, "uplink", uplink.feed, carrier_payloads(carrier), 1.0)


def voiced_only(name: str, carrier: AudioFormat, model: AudioFormat) -> Case:
    uplink = uplink_for(carrier, model)
    outputs = [uplink.feed(p) for p in carrier_payloads(carrier)]
    return Case(name, "uplink", uplink.voiced, outputs, 1.0)


def downlink_path(name: str, model: AudioFormat, carrier: AudioFormat, chunk_ms: int) -> Case:
    downlink = downlink_for(carrier, model)
    if model == PCM16_24K:
        source = pcm16(speech_like(model.sample_rate))
    else:  # the model speaks the carrier's G.711 (OpenAI)
        source = b"".join(carrier_payloads(carrier))
    size = model.frame_bytes * chunk_ms // FRAME_MS
    return Case(name, "downlink", downlink.feed, frames(source, size), chunk_ms / FRAME_MS)


def all_paths(chunk_ms: int) -> list[Case]:
    up, down = uplink_path, downlink_path
    return [
        up("PCMU 8k -> PCM16 16k (Gemini)", PCMU_8K, PCM16_16K),
        up("PCMA 8k -> PCM16 16k (Gemini)", PCMA_8K, PCM16_16K),
        up("PCMU 8k -> PCM16 24k (OpenAI)", PCMU_8K, PCM16_24K),
        up("PCMA 8k -> PCM16 24k (OpenAI)", PCMA_8K, PCM16_24K),
        up("PCMU 8k pass-through (OpenAI)", PCMU_8K, PCMU_8K),
        up("PCMA 8k pass-through (OpenAI)", PCMA_8K, PCMA_8K),
        up("G.722 -> PCM16 16k (Gemini)", G722_16K, PCM16_16K),
        up("G.722 -> PCM16 24k (OpenAI)", G722_16K, PCM16_24K),
        up("L16 16k -> PCM16 16k (Gemini)", L16_16K, PCM16_16K),
        up("L16 16k -> PCM16 24k (OpenAI)", L16_16K, PCM16_24K),
        up("browser PCM16 16k -> 16k (Gemini)", PCM16_16K, PCM16_16K),
        up("browser PCM16 16k -> 24k (OpenAI)", PCM16_16K, PCM16_24K),
        uplink_feed_only("  of which feed: PCMU 8k -> 16k", PCMU_8K, PCM16_16K),
        voiced_only("  of which voiced(): PCM16 16k", PCMU_8K, PCM16_16K),
        voiced_only("  of which voiced(): PCMU pass-through", PCMU_8K, PCMU_8K),
        down("PCM16 24k -> PCMU 8k", PCM16_24K, PCMU_8K, chunk_ms),
        down("PCM16 24k -> PCMA 8k", PCM16_24K, PCMA_8K, chunk_ms),
        down("PCM16 24k -> L16 16k", PCM16_24K, L16_16K, chunk_ms),
        down("PCM16 24k -> G.722", PCM16_24K, G722_16K, chunk_ms),
        down("PCM16 24k -> browser 24k (framing only)", PCM16_24K, PCM16_24K, chunk_ms),
        down("PCMU pass-through (OpenAI; framing only)", PCMU_8K, PCMU_8K, chunk_ms),
        down("PCMA pass-through (OpenAI; framing only)", PCMA_8K, PCMA_8K, chunk_ms),
    ]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def run_frames(path: Case, count: int, start: int) -> float:
    """Process CPU seconds for ``count`` inputs of ``path``, starting at input ``start``."""
    step, inputs = path.step, path.inputs
    size = len(inputs)
    batch = [inputs[(start + i) % size] for i in range(count)]
    begin = time.process_time()
    for data in batch:
        step(data)
    return time.process_time() - begin


def measure(paths: list[Case], frames_per_round: int, rounds: int) -> dict[str, float]:
    """Best µs per 20 ms frame of each path, round-robin over ``rounds`` rounds."""
    best = {p.name: float("inf") for p in paths}
    position = dict.fromkeys(best, 0)
    for path in paths:  # warm-up: caches, buffers, the first compaction
        run_frames(path, min(200, len(path.inputs)), 0)
    for _ in range(rounds):
        for path in paths:
            count = max(1, round(frames_per_round / path.frames_per_input))
            seconds = run_frames(path, count, position[path.name])
            position[path.name] += count
            per_frame = seconds / (count * path.frames_per_input) * 1e6
            best[path.name] = min(best[path.name], per_frame)
    return best


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {cpu}, "
        f"{os.cpu_count()} CPUs, load average {load}\n"
        f"Python {platform.python_version()}, numpy {np.__version__}, {platform.platform()}\n"
        f"gateway from {Path(gateway.__file__).parent.parent}"
    )


_ROW = re.compile(r"^\| (.+?) \| (uplink|downlink) \| ([0-9.]+) \|$")


def compare(trees: list[tuple[str, str]], runs: int, child_args: list[str]) -> None:
    """Time each tree in a process of its own, ``runs`` times in alternating order; best per row.

    Alternating spreads the machine's load over all trees, and each child is the very same
    script, so a before/after table differs only in the ``gateway`` it imported.
    """
    best: dict[tuple[str, str], dict[str, float]] = {}
    for run in range(runs):
        for label, folder in trees if run % 2 == 0 else trees[::-1]:
            env = {**os.environ, "PYTHONPATH": folder}
            child = [sys.executable, __file__, *child_args]
            output = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
            for line in output.stdout.splitlines():
                if match := _ROW.match(line):
                    figures = best.setdefault((match[1], match[2]), {})
                    figures[label] = min(figures.get(label, math.inf), float(match[3]))
    labels = [label for label, _ in trees]
    print(f"best of {runs} alternating runs of each: {', '.join(f'{n}={f}' for n, f in trees)}\n")
    print(f"| path | direction | {' | '.join(labels)} | change |")
    print(f"|---|---|{'---:|' * len(labels)}---:|")
    for (name, direction), figures in best.items():
        first, last = figures[labels[0]], figures[labels[-1]]
        cells = " | ".join(f"{figures[label]:.2f}" for label in labels)
        print(f"| {name} | {direction} | {cells} | {100 * (last / first - 1):+.0f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and frames")
    parser.add_argument("--frames", type=int, default=2000, help="20 ms frames per round")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; the best one counts")
    parser.add_argument("--chunk-ms", type=int, default=20, help="model audio chunk (20 or 40)")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=DIR",
        help="time the gateway package in each DIR instead (a folder holding gateway/)",
    )
    parser.add_argument("--runs", type=int, default=4, help="with --compare: runs of each DIR")
    args = parser.parse_args()
    if args.chunk_ms % FRAME_MS:
        parser.error(f"--chunk-ms must be a multiple of {FRAME_MS}")
    frames_per_round, rounds = (500, 5) if args.quick else (args.frames, args.rounds)
    if args.compare:
        trees = [item.partition("=") for item in args.compare]
        if not all(label and sep and folder for label, sep, folder in trees):
            parser.error("--compare takes LABEL=DIR items")
        child_args = ["--frames", str(frames_per_round), "--rounds", str(rounds)]
        print(machine_info().rsplit("\n", 1)[0])  # the children name no gateway of their own
        compare(
            [(label, folder) for label, _, folder in trees],
            args.runs,
            [*child_args, "--chunk-ms", str(args.chunk_ms)],
        )
        return
    print(machine_info())
    print(
        f"best of {rounds} rounds x {frames_per_round} frames, model chunks of {args.chunk_ms} ms\n"
    )
    paths = all_paths(args.chunk_ms)
    best = measure(paths, frames_per_round, rounds)
    print("| path | direction | µs / 20 ms frame |")
    print("|---|---|---:|")
    for path in paths:
        print(f"| {path.name} | {path.direction} | {best[path.name]:.2f} |")


if __name__ == "__main__":
    main()
