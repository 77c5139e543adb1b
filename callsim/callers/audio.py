"""What the simulated caller says: a small description rendered to a carrier's wire format.

A call script is a list of segments (``Silence``, ``Tone``, ``Wav``) rendered once, before the call:
to μ-law 8 kHz bytes (:func:`render`), the only format Twilio sends, or to PCM16 at any rate
(:func:`render_pcm`), which the Telnyx caller encodes with the negotiated codec. Rendering at the
codec's own rate matters for wideband codecs: a 16 kHz script can hold a 6 kHz tone, which an
8 kHz one upsampled could not, so the wideband path is really exercised. Rendering ahead of time
keeps the real-time sender free of DSP, and makes what the gateway should receive exactly known
to tests.

The CLI form is a comma-separated list, e.g. ``"silence:1.5,tone:440:1.0:-12,wav:hello.wav"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callsim.callers.playback import ULAW_SILENCE
from callsim.wav import read_wav

with warnings.catch_warnings():
    # Deprecated stdlib module on 3.11/3.12; the `audioop-lts` package provides it on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "SAMPLE_RATE",
    "Segment",
    "Silence",
    "Tone",
    "Wav",
    "parse_spec",
    "pcm16_to_ulaw",
    "render",
    "render_pcm",
    "ulaw_to_pcm16",
]

SAMPLE_RATE = 8000
"""Twilio Media Streams audio is always μ-law, 8000 Hz, mono: one byte per sample."""

MAX_RATE = 16000
"""The highest rate a segment is rendered at (L16 and G.722 carry 16 kHz audio)."""

FADE_S = 0.005
"""Tone fade-in/out length: long enough to avoid clicks, short enough not to blur onset timing."""


def pcm16_to_ulaw(pcm16: bytes) -> bytes:
    """Encode little-endian PCM16 samples as G.711 μ-law."""
    return audioop.lin2ulaw(pcm16, 2)


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode G.711 μ-law to little-endian PCM16 samples."""
    return audioop.ulaw2lin(ulaw, 2)


def _samples(seconds: float, rate: int = SAMPLE_RATE) -> int:
    return round(seconds * rate)


def _check_rate(rate: int) -> None:
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE}] Hz, got {rate}")


def _check_seconds(seconds: float) -> None:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {seconds}")


@dataclass(frozen=True)
class Silence:
    """Digital silence (μ-law 0xFF)."""

    seconds: float

    def __post_init__(self) -> None:
        _check_seconds(self.seconds)

    def render(self) -> bytes:
        """Return the segment as μ-law 8 kHz."""
        return bytes([ULAW_SILENCE]) * _samples(self.seconds)

    def pcm(self, rate: int) -> bytes:
        """Return the segment as PCM16LE at ``rate`` Hz."""
        _check_rate(rate)
        return bytes(2 * _samples(self.seconds, rate))


@dataclass(frozen=True)
class Tone:
    """A sine tone, ``dbfs`` relative to a full-scale sine, with 5 ms raised-cosine fades.

    Any frequency below 8 kHz can be described, but it must also be below half the rate it is
    rendered at: a 6 kHz tone renders at 16 kHz only (``render`` and μ-law 8 kHz refuse it).
    """

    hz: float
    seconds: float
    dbfs: float = -12.0

    def __post_init__(self) -> None:
        _check_seconds(self.seconds)
        _check_tone(self.hz, MAX_RATE)
        if not (math.isfinite(self.dbfs) and self.dbfs <= 0):
            raise ValueError(f"tone level must be <= 0 dBFS, got {self.dbfs}")

    def render(self) -> bytes:
        """Return the segment as μ-law 8 kHz."""
        return pcm16_to_ulaw(self.pcm(SAMPLE_RATE))

    def pcm(self, rate: int) -> bytes:
        """Return the segment as PCM16LE at ``rate`` Hz."""
        _check_rate(rate)
        _check_tone(self.hz, rate)
        n = _samples(self.seconds, rate)
        t = np.arange(n) / rate
        wave = 32767.0 * 10.0 ** (self.dbfs / 20.0) * np.sin(2.0 * np.pi * self.hz * t)
        fade = min(_samples(FADE_S, rate), n // 2)
        if fade:
            ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
            wave[:fade] *= ramp
            wave[n - fade :] *= ramp[::-1]
        pcm: bytes = np.rint(wave).astype("<i2").tobytes()
        return pcm


def _check_tone(hz: float, rate: int) -> None:
    if not (math.isfinite(hz) and 0 < hz < rate / 2):
        raise ValueError(f"tone frequency must be in (0, {rate // 2}) Hz, got {hz}")


@dataclass(frozen=True)
class Wav:
    """A WAV file (16-bit PCM, mono or stereo, any rate), resampled to 8 kHz."""

    path: Path

    def render(self) -> bytes:
        """Return the segment as μ-law 8 kHz."""
        return pcm16_to_ulaw(read_wav(self.path, SAMPLE_RATE))

    def pcm(self, rate: int) -> bytes:
        """Return the segment as PCM16LE at ``rate`` Hz."""
        _check_rate(rate)
        return read_wav(self.path, rate)


Segment = Silence | Tone | Wav


def render(segments: Sequence[Segment]) -> bytes:
    """Render segments back to back as μ-law 8 kHz bytes."""
    return b"".join(segment.render() for segment in segments)


def render_pcm(segments: Sequence[Segment], rate: int) -> bytes:
    """Render segments back to back as PCM16LE at ``rate`` Hz (each segment rendered natively)."""
    return b"".join(segment.pcm(rate) for segment in segments)


def _number(text: str, what: str, item: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{item!r}: {what} must be a number, got {text!r}") from None


def _parse_item(item: str, rate: int) -> Segment:
    kind, _, rest = item.partition(":")
    kind = kind.strip().lower()
    if kind == "wav":
        # Everything after "wav:" is the path, so paths may contain ':' (but not ',').
        if not rest.strip():
            raise ValueError(f"{item!r}: expected wav:PATH")
        return Wav(Path(rest.strip()))
    args = [a.strip() for a in rest.split(":")] if rest else []
    if kind == "silence":
        if len(args) != 1:
            raise ValueError(f"{item!r}: expected silence:SECONDS")
        return Silence(_number(args[0], "SECONDS", item))
    if kind == "tone":
        if len(args) not in (2, 3):
            raise ValueError(f"{item!r}: expected tone:HZ:SECONDS[:DBFS]")
        hz = _number(args[0], "HZ", item)
        _check_tone(hz, rate)
        seconds = _number(args[1], "SECONDS", item)
        if len(args) == 3:
            return Tone(hz, seconds, _number(args[2], "DBFS", item))
        return Tone(hz, seconds)
    raise ValueError(f"{item!r}: unknown segment {kind!r} (use silence, tone or wav)")


def parse_spec(spec: str, rate: int = SAMPLE_RATE) -> list[Segment]:
    """Parse ``"silence:1.5,tone:440:1.0:-12,wav:hello.wav"`` into segments to render at ``rate``.

    Raises ``ValueError`` naming the offending item. Value checks (ranges, tones below half of
    ``rate``) happen here too, so a bad spec fails before the call starts; WAV files are only
    opened when rendered.
    """
    items = [item.strip() for item in spec.split(",")]
    if not any(items):
        raise ValueError("empty caller audio spec")
    segments: list[Segment] = []
    for item in items:
        if not item:
            raise ValueError(f"empty item in caller audio spec {spec!r}")
        try:
            segments.append(_parse_item(item, rate))
        except ValueError as exc:
            if str(exc).startswith(repr(item)):
                raise
            raise ValueError(f"{item!r}: {exc}") from None
    return segments
