"""Small numpy measurement helpers for tests, the demo and benchmarks (not used on the call path).

Conventions, chosen so numbers from different helpers agree:

* Inputs are PCM16LE ``bytes``, an int16 array of either byte order (both scaled by 1/32768) or a
  float array already in full-scale units (|x| <= 1).
* dBFS follows AES17: a full-scale *sine* reads 0 dBFS in both ``rms_dbfs`` and ``tone_dbfs``
  (so a square wave can read +3 dBFS).
* ``tone_dbfs`` evaluates the DFT of a Blackman-Harris (4-term, -92 dB sidelobes) windowed signal
  *at exactly* the requested frequency and divides by the window's coherent gain, so there is no
  bin scalloping: a -20 dBFS sine reads -20.00 whatever its frequency. The sidelobes set how far
  below a strong neighbour a weak tone can be seen (~-90 dB beyond 4 bins away); int16 noise in the
  ~2-bin equivalent noise bandwidth of a 1 s window sits near -130 dBFS.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt

Signal = bytes | npt.NDArray[np.int16] | npt.NDArray[np.floating[Any]]
Float64Array = npt.NDArray[np.float64]

FULL_SCALE: Final = 32768.0
_BH4: Final = (0.35875, 0.48829, 0.14128, 0.01168)


def to_float(x: Signal) -> Float64Array:
    """Samples as float64 in full-scale units."""
    if isinstance(x, bytes | bytearray | memoryview):
        return np.frombuffer(x, dtype="<i2", count=len(x) // 2).astype(np.float64) / FULL_SCALE
    if x.dtype.kind == "i":  # int16 samples in either byte order
        return x.astype(np.float64) / FULL_SCALE
    return np.asarray(x, dtype=np.float64)


def blackman_harris(n: int) -> Float64Array:
    """Symmetric 4-term Blackman-Harris window."""
    phase = 2.0 * np.pi * np.arange(n) / max(n - 1, 1)
    a0, a1, a2, a3 = _BH4
    window: Float64Array = (
        a0 - a1 * np.cos(phase) + a2 * np.cos(2.0 * phase) - a3 * np.cos(3.0 * phase)
    )
    return window


def _db(amplitude: float) -> float:
    return 20.0 * math.log10(amplitude) if amplitude > 0.0 else -math.inf


def rms_dbfs(x: Signal) -> float:
    """RMS level in dBFS (full-scale sine = 0 dBFS); ``-inf`` for digital silence."""
    samples = to_float(x)
    if samples.size == 0:
        return -math.inf
    return _db(math.sqrt(2.0 * float(np.mean(samples * samples))))


def tone_dbfs(x: Signal, rate: float, freq_hz: float) -> float:
    """Level in dBFS of the sinusoid at ``freq_hz`` (full-scale sine = 0 dBFS).

    Accurate for frequencies at least ~4 DFT bins (``4 * rate / len(x)``) away from DC, Nyquist and
    any stronger component.
    """
    samples = to_float(x)
    window = blackman_harris(samples.size)
    phasor = np.exp(-2j * np.pi * freq_hz / rate * np.arange(samples.size))
    amplitude = 2.0 * abs(complex(np.dot(samples * window, phasor))) / float(window.sum())
    return _db(amplitude)


def dominant_frequency(x: Signal, rate: float) -> float:
    """Frequency in Hz of the strongest spectral peak (DC removed), with sub-bin precision.

    Gaussian (log-parabolic) interpolation over the peak bin and its neighbours of a 4x
    zero-padded Blackman-Harris spectrum: a pure tone comes out within ~0.01 bin.
    """
    samples = to_float(x)
    if samples.size < 4:
        raise ValueError(f"need at least 4 samples to find a frequency, got {samples.size}")
    samples = samples - samples.mean()
    size = 4 * samples.size
    spectrum = np.abs(np.fft.rfft(samples * blackman_harris(samples.size), n=size))
    peak = int(np.argmax(spectrum[1:-1])) + 1
    left, centre, right = (math.log(max(float(v), 1e-300)) for v in spectrum[peak - 1 : peak + 2])
    curvature = left - 2.0 * centre + right
    offset = 0.5 * (left - right) / curvature if curvature < 0.0 else 0.0
    return float((peak + offset) * rate / size)


def _sample_count(rate: float, seconds: float) -> int:
    count = round(seconds * rate)
    if count < 0:
        raise ValueError(f"duration must be non-negative, got {seconds} s")
    return count


def sine(
    freq_hz: float, seconds: float, rate: int, dbfs: float = -6.0, *, phase: float = 0.0
) -> npt.NDArray[np.int16]:
    """A sine as int16 samples; 0 dBFS is amplitude 32767 (the largest that does not clip)."""
    n = np.arange(_sample_count(rate, seconds))
    amplitude = 32767.0 * 10.0 ** (dbfs / 20.0)
    wave = amplitude * np.sin(2.0 * np.pi * freq_hz / rate * n + phase)
    samples: npt.NDArray[np.int16] = np.clip(np.rint(wave), -32768, 32767).astype(np.int16)
    return samples


def sine_pcm16(
    freq_hz: float, seconds: float, rate: int, dbfs: float = -6.0, *, phase: float = 0.0
) -> bytes:
    """Same as ``sine`` but as PCM16LE bytes, ready for the transcoders."""
    return sine(freq_hz, seconds, rate, dbfs, phase=phase).astype("<i2").tobytes()


def estimate_delay_ms(
    reference: Signal, observed: Signal, rate: float, *, max_delay_ms: float | None = None
) -> float:
    """Delay of ``observed`` relative to ``reference`` (same rate), in ms; positive = later.

    Peak of the FFT cross-correlation, refined with a parabola through the peak and its two
    neighbours (sub-sample precision for band-limited signals). ``max_delay_ms`` bounds the search
    in both directions, useful when the signal is periodic.
    """
    ref = to_float(reference)
    obs = to_float(observed)
    size = 1 << (ref.size + obs.size - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(obs, size) * np.conj(np.fft.rfft(ref, size)), size)
    # corr[k] = sum_n obs[n + k] * ref[n]; negative lags wrap to the end of the array.
    lags = np.concatenate((np.arange(obs.size), np.arange(-(ref.size - 1), 0)))
    values = np.concatenate((corr[: obs.size], corr[size - (ref.size - 1) :]))
    if max_delay_ms is not None:
        keep = np.abs(lags) <= max_delay_ms * rate / 1000.0
        lags, values = lags[keep], values[keep]
    order = np.argsort(lags)
    lags, values = lags[order], values[order]
    best = int(np.argmax(values))
    shift = 0.0
    if 0 < best < values.size - 1:
        left, centre, right = (float(v) for v in values[best - 1 : best + 2])
        curvature = left - 2.0 * centre + right
        if curvature < 0.0:
            shift = 0.5 * (left - right) / curvature
    return (float(lags[best]) + shift) * 1000.0 / rate
