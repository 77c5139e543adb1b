"""Read and write the WAV files the caller simulator speaks from and records to.

Input files come from users (``gateway call URL --wav in.wav``), so anything the simulator cannot
represent faithfully is refused with a message that says what to convert to, rather than being
played as noise. Only 16-bit PCM is accepted; stereo is averaged to mono; any sample rate is
resampled once, offline, with soxr's very-high-quality preset (a one-shot resample of a whole file
has no chunk-edge artefacts, unlike per-frame resampling).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr  # type: ignore[import-untyped]  # ships no py.typed marker

__all__ = ["WavFormatError", "read_wav", "write_wav"]


class WavFormatError(ValueError):
    """The file is not a WAV this simulator can read (not RIFF/WAVE, not 16-bit PCM, ...)."""


_HINT = "convert it to 16-bit PCM, e.g. `sox in.wav -b 16 -e signed-integer out.wav`"


def read_wav(path: str | Path, rate: int) -> bytes:
    """Return the file's audio as mono little-endian PCM16 at ``rate`` Hz."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            in_rate = wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except wave.Error as exc:  # not RIFF/WAVE, or a non-PCM format tag (float, A-law, ...)
        raise WavFormatError(f"{path}: unsupported WAV file ({exc}); {_HINT}") from exc
    except EOFError as exc:
        raise WavFormatError(f"{path}: truncated WAV file; {_HINT}") from exc
    if width != 2:
        raise WavFormatError(f"{path}: {8 * width}-bit samples are not supported; {_HINT}")
    if channels not in (1, 2):
        raise WavFormatError(f"{path}: {channels} channels; only mono or stereo is supported")
    if in_rate <= 0:
        raise WavFormatError(f"{path}: invalid sample rate {in_rate}")
    usable = len(frames) - len(frames) % (2 * channels)  # ignore a torn final frame
    samples = np.frombuffer(frames[:usable], dtype="<i2").astype(np.float64)
    if channels == 2:
        samples = samples.reshape(-1, 2).mean(axis=1)
    if in_rate != rate and samples.size:
        samples = soxr.resample(samples, in_rate, rate, quality="VHQ")
    pcm = np.clip(np.rint(samples), -32768, 32767).astype("<i2")
    return pcm.tobytes()


def write_wav(path: str | Path, pcm16: bytes, rate: int) -> None:
    """Write mono little-endian PCM16 samples as a WAV file."""
    if len(pcm16) % 2:
        raise ValueError("PCM16 data must have an even number of bytes")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm16)
