"""The three audio formats of the OpenAI Realtime API and the simulator's speech in them.

``{"type": "audio/pcm", "rate": 24000}`` is PCM16 little-endian at 24 kHz (the only PCM rate the
API accepts); ``audio/pcmu`` and ``audio/pcma`` are G.711 μ-law and A-law at 8 kHz, one byte a
sample. The VAD listens to PCM16, so G.711 input is decoded first (``gateway.audio.g711``, the
gateway's own bit-exact ``audioop`` codec). Speech is a sine tone made at the format's rate and
encoded once, so the same line in the same voice is the same bytes every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callsim.live.audio import tone_pcm16
from gateway.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

FRAME_MS = 20
"""Each response's audio is a whole number of these frames (what a phone carrier sends)."""


class FormatError(ValueError):
    """An audio format object the API would refuse; the message is the API's kind of message."""


@dataclass(frozen=True)
class AudioFormat:
    """One wire format: its name, sample rate and bytes per sample."""

    type: str
    rate: int
    sample_bytes: int

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.sample_bytes / 1000

    def as_json(self) -> dict[str, Any]:
        """The format object as the API reports it."""
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}

    def duration_ms(self, data: bytes | bytearray) -> float:
        return len(data) / self.bytes_per_ms

    def to_pcm16(self, data: bytes) -> bytes:
        """Wire bytes -> PCM16LE at ``rate`` (for the VAD)."""
        if self.type == "audio/pcmu":
            return ulaw_decode(data)
        if self.type == "audio/pcma":
            return alaw_decode(data)
        return data[: len(data) & ~1]

    def speech(self, hz: float, seconds: float, level_dbfs: float) -> bytes:
        """A tone of ``seconds`` rounded up to whole 20 ms frames, encoded in this format."""
        frames = max(1, -(-round(seconds * 1000) // FRAME_MS))
        pcm = tone_pcm16(hz, frames * FRAME_MS / 1000, level_dbfs, self.rate)
        if self.type == "audio/pcmu":
            return ulaw_encode(pcm)
        if self.type == "audio/pcma":
            return alaw_encode(pcm)
        return pcm

    def chunk_bytes(self, chunk_ms: int) -> int:
        """Bytes of ``chunk_ms`` of audio (whole samples)."""
        return max(1, self.rate * chunk_ms // 1000) * self.sample_bytes


PCM24K = AudioFormat("audio/pcm", 24_000, 2)
PCMU = AudioFormat("audio/pcmu", 8_000, 1)
PCMA = AudioFormat("audio/pcma", 8_000, 1)
_BY_TYPE = {f.type: f for f in (PCM24K, PCMU, PCMA)}


def parse_format(value: object, param: str) -> AudioFormat:
    """The format a ``session.update`` names; :class:`FormatError` for anything else."""
    if not isinstance(value, dict):
        raise FormatError(f"Invalid type for '{param}': expected an object.")
    kind = value.get("type")
    known = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if known is None:
        raise FormatError(
            f"Invalid value: {kind!r}. Supported values are: 'audio/pcm', 'audio/pcmu', and "
            "'audio/pcma'."
        )
    extra = sorted(set(value) - {"type", "rate"})
    if extra:
        raise FormatError(f"Unknown parameter: '{param}.{extra[0]}'.")
    rate = value.get("rate")
    if known is PCM24K and rate not in (None, 24_000):
        raise FormatError(f"Invalid value: {rate!r}. Supported values are: 24000.")
    if known is not PCM24K and rate is not None:
        raise FormatError(f"Unknown parameter: '{param}.rate'.")
    return known
