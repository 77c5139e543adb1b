"""Compare streaming resamplers for the call path: delay, alias/image rejection, CPU per frame.

Run by hand (not a test):  .venv/bin/python benchmarks/audio_resamplers.py [--quick]

For 24 kHz -> 8 kHz (model to phone) and 8 kHz -> 16 kHz (phone to model), fed in 20 ms chunks:

* delay      cross-correlation lag of the emitted stream against the ideal output (ms)
* held mean/max  output the resampler owes but has not emitted yet after each chunk (ms); soxr
             trims its filter delay from the stream and holds input back instead, so for a fair
             comparison the latency a caller hears is delay + held
* per-tone columns  level (dBFS, 0 dBFS input) at the alias/image frequency; lower is better
* pass 3.4k  gain of a -20 dBFS 3.4 kHz tone (dB)
* us/frame   CPU per 20 ms chunk (best of several runs; the machine may be shared, see load)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]

from gateway.audio import analysis, g711, transcode
from gateway.audio.resample import (
    StreamResampler,
    model_to_telephone,
    model_to_wideband,
    telephone_to_model,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


class Streamer:
    """Uniform bytes-in/bytes-out interface over the candidates."""

    def process(self, pcm: bytes) -> bytes:
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""


class Ours(Streamer):
    def __init__(self, factory: Callable[[], StreamResampler]) -> None:
        self._resampler = factory()

    def process(self, pcm: bytes) -> bytes:
        return self._resampler.process(pcm)

    def flush(self) -> bytes:
        return self._resampler.flush()


class Ratecv(Streamer):
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._rates = (in_rate, out_rate)
        self._state: tuple[int, tuple[tuple[int, int], ...]] | None = None

    def process(self, pcm: bytes) -> bytes:
        out, self._state = audioop.ratecv(pcm, 2, 1, *self._rates, self._state)
        return out


class Soxr(Streamer):
    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, pcm: bytes) -> bytes:
        out: npt.NDArray[np.int16] = self._stream.resample_chunk(np.frombuffer(pcm, "<i2"))
        return out.astype("<i2").tobytes()

    def flush(self) -> bytes:
        empty = np.zeros(0, dtype=np.int16)
        out: npt.NDArray[np.int16] = self._stream.resample_chunk(empty, last=True)
        return out.astype("<i2").tobytes()


@dataclass(frozen=True)
class Conversion:
    name: str
    in_rate: int
    out_rate: int
    tones: tuple[tuple[float, float], ...]  # (input tone, alias/image frequency) in Hz
    ours: Callable[[], StreamResampler]


CONVERSIONS = (
    Conversion(
        "24k->8k",
        24000,
        8000,
        ((4100.0, 3900.0), (4500.0, 3500.0), (6000.0, 2000.0), (9000.0, 1000.0), (11000.0, 3000.0)),
        model_to_telephone,
    ),
    Conversion(
        "8k->16k",
        8000,
        16000,
        ((3400.0, 4600.0), (3000.0, 5000.0), (2000.0, 6000.0), (1000.0, 7000.0)),
        telephone_to_model,
    ),
    Conversion(
        "24k->16k",
        24000,
        16000,
        ((8200.0, 7800.0), (9000.0, 7000.0), (11000.0, 5000.0)),
        model_to_wideband,
    ),
)


def candidates(conv: Conversion) -> dict[str, Callable[[], Streamer]]:
    rates = (conv.in_rate, conv.out_rate)
    return {
        "ours": lambda: Ours(conv.ours),
        "audioop.ratecv": lambda: Ratecv(*rates),
        "soxr QQ": lambda: Soxr(*rates, "QQ"),
        "soxr HQ": lambda: Soxr(*rates, "HQ"),
        "soxr VHQ": lambda: Soxr(*rates, "VHQ"),
    }


def chunks(pcm: bytes, rate: int) -> list[bytes]:
    size = 2 * rate // 50
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def bandlimited(rate: int, seconds: float, max_hz: float) -> npt.NDArray[np.float64]:
    """Periodic band-limited noise, the same waveform at every rate > 2 * max_hz."""
    rng = np.random.default_rng(1)
    n = round(rate * seconds)
    bins = int(max_hz * seconds)
    spectrum = np.zeros(n // 2 + 1, dtype=complex)
    spectrum[1:bins] = rng.normal(size=bins - 1) + 1j * rng.normal(size=bins - 1)
    wave = np.fft.irfft(spectrum, n) * n
    return np.asarray(0.5 * wave / np.abs(wave).max())


def measure_delay(make: Callable[[], Streamer], conv: Conversion) -> tuple[float, float, float]:
    """(cross-correlation delay, mean held-back, max held-back) in ms."""
    seconds = 1.0
    source = (bandlimited(conv.in_rate, seconds, 3000.0) * 32767).astype("<i2").tobytes()
    reference = bandlimited(conv.out_rate, seconds, 3000.0)
    streamer = make()
    emitted, fed, held = 0, 0, []
    parts = []
    for chunk in chunks(source, conv.in_rate):
        out = streamer.process(chunk)
        parts.append(out)
        emitted += len(out) // 2
        fed += len(chunk) // 2
        held.append((fed * conv.out_rate / conv.in_rate - emitted) * 1000.0 / conv.out_rate)
    stream = b"".join(parts)
    delay = analysis.estimate_delay_ms(reference, stream, conv.out_rate, max_delay_ms=200.0)
    return delay, statistics.fmean(held), max(held)


def steady_output(make: Callable[[], Streamer], pcm: bytes, conv: Conversion) -> bytes:
    streamer = make()
    out = b"".join(streamer.process(c) for c in chunks(pcm, conv.in_rate)) + streamer.flush()
    skip = 2 * conv.out_rate // 5  # 200 ms: past soxr's start-up hold-back too
    return out[skip : skip + 2 * conv.out_rate]


def tone_level(make: Callable[[], Streamer], conv: Conversion, tone: float, at: float) -> float:
    pcm = analysis.sine_pcm16(tone, 1.5, conv.in_rate, 0.0)
    return analysis.tone_dbfs(steady_output(make, pcm, conv), conv.out_rate, at)


def passband_gain(make: Callable[[], Streamer], conv: Conversion, freq: float) -> float:
    pcm = analysis.sine_pcm16(freq, 1.5, conv.in_rate, -20.0)
    return analysis.tone_dbfs(steady_output(make, pcm, conv), conv.out_rate, freq) + 20.0


def cpu_us_per_frame(process: Callable[[bytes], object], frame: bytes, quick: bool) -> float:
    """Best-of-N mean time per call over a long run of 20 ms frames."""
    calls = 500 if quick else 3000
    best = float("inf")
    for _ in range(3 if quick else 7):
        start = time.perf_counter()
        for _ in range(calls):
            process(frame)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


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
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}  {platform.node()}\n"
        f"{cpu}, {os.cpu_count()} CPUs, load average {load}\n"
        f"Python {platform.python_version()}, numpy {np.__version__}, soxr {soxr.__version__}, "
        f"{platform.platform()}"
    )


def conversion_table(conv: Conversion, quick: bool) -> None:
    tone_heads = [f"{t / 1000:g}k>{a / 1000:g}k" for t, a in conv.tones]
    head = ["resampler", "delay", "held mean/max", *tone_heads, "pass 3.4k", "us/frame"]
    widths = [15, 7, 13, *[max(len(h), 8) for h in tone_heads], 9, 9]
    print(f"\n{conv.name}  (levels in dBFS for a 0 dBFS tone; delay/held in ms)")
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    frame = analysis.sine_pcm16(1000.0, 0.02, conv.in_rate, -6.0)
    for name, make in candidates(conv).items():
        delay, held_mean, held_max = measure_delay(make, conv)
        levels = [tone_level(make, conv, t, a) for t, a in conv.tones]
        gain = passband_gain(make, conv, 3400.0)
        us = cpu_us_per_frame(make().process, frame, quick)
        cells = [
            name,
            f"{delay:.2f}",
            f"{held_mean:.1f}/{held_max:.1f}",
            *[f"{level:.1f}" for level in levels],
            f"{gain:+.3f}",
            f"{us:.1f}",
        ]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))


def transcoder_table(quick: bool) -> None:
    print("\nper-call transcoders, us per 20 ms frame (what the bridge pays per direction)")
    model_frame = analysis.sine_pcm16(1000.0, 0.02, 24000, -6.0)
    for fmt in (transcode.PCMU_8K, transcode.PCMA_8K, transcode.L16_16K):
        uplink, downlink = transcode.uplink_for(fmt), transcode.downlink_for(fmt)
        carrier_frame = downlink.feed(model_frame + model_frame)[0]
        up = cpu_us_per_frame(uplink.feed, carrier_frame, quick)
        down = cpu_us_per_frame(downlink.feed, model_frame, quick)
        print(f"  {fmt!s:22}  uplink {up:5.1f}   downlink {down:5.1f}")
    pcm8k = analysis.sine_pcm16(1000.0, 0.02, 8000, -6.0)
    ulaw = g711.ulaw_encode(pcm8k)
    enc = cpu_us_per_frame(g711.ulaw_encode, pcm8k, quick)
    dec = cpu_us_per_frame(g711.ulaw_decode, ulaw, quick)
    print(f"  G.711 u-law alone: encode {enc:.2f}, decode {dec:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    args = parser.parse_args()
    print(machine_info())
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        print("note: OPENBLAS_NUM_THREADS is not 1; small matmuls may still be single-threaded")
    for conv in CONVERSIONS:
        conversion_table(conv, args.quick)
    transcoder_table(args.quick)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
