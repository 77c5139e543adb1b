"""G.711 μ-law (PCMU) and A-law (PCMA) <-> PCM16LE (plus the L16 byte swap).

Why ``audioop``: it is C, bit-exact ITU G.711, and ~1 µs per 20 ms frame — a numpy lookup table
would cost more in call overhead alone. It ships with CPython up to 3.12 (deprecated, so the import
warning is silenced right here and nowhere else); on 3.13+ the ``audioop-lts`` distribution
provides the same module name, pulled in by a marker in pyproject.toml.

``audioop`` works in native byte order; every function here speaks little-endian PCM16 (what
Gemini Live uses), swapping only on a big-endian host.

Encoders take any byte string: an odd trailing byte is half a sample and is dropped (the stateful
transcoders never produce one; a stateless function cannot carry it to the next call).
"""

from __future__ import annotations

import sys
import warnings
from typing import Final

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ULAW_SILENCE: Final = 0xFF
"""μ-law code for zero (+0). 0x00 is the most negative code: a full-scale click."""

ALAW_SILENCE: Final = 0xD5
"""A-law code closest to zero (decodes to +8 of 32768; A-law has no exact zero)."""

_SWAP: Final = sys.byteorder != "little"


def _whole_samples(pcm: bytes) -> bytes:
    return pcm[:-1] if len(pcm) & 1 else pcm


def ulaw_decode(data: bytes) -> bytes:
    """μ-law bytes -> PCM16LE (two bytes out per byte in)."""
    pcm = audioop.ulaw2lin(data, 2)
    return audioop.byteswap(pcm, 2) if _SWAP else pcm


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16LE -> μ-law bytes (a trailing odd byte is dropped)."""
    pcm = _whole_samples(pcm)
    return audioop.lin2ulaw(audioop.byteswap(pcm, 2) if _SWAP else pcm, 2)


def alaw_decode(data: bytes) -> bytes:
    """A-law bytes -> PCM16LE (two bytes out per byte in)."""
    pcm = audioop.alaw2lin(data, 2)
    return audioop.byteswap(pcm, 2) if _SWAP else pcm


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16LE -> A-law bytes (a trailing odd byte is dropped)."""
    pcm = _whole_samples(pcm)
    return audioop.lin2alaw(audioop.byteswap(pcm, 2) if _SWAP else pcm, 2)


def pcm16_byteswap(pcm: bytes) -> bytes:
    """Swap the bytes of every 16-bit sample: L16 network order (RFC 3551) <-> little-endian.

    Not G.711, but it lives here because this is the one module that imports ``audioop``
    (0.4 µs per 640-byte frame vs ~2 µs for bytes slicing). A trailing odd byte is dropped.
    """
    return audioop.byteswap(_whole_samples(pcm), 2)


def pcm16_peak(pcm: bytes) -> int:
    """Largest absolute sample value of PCM16LE audio (0..32768); a trailing odd byte is ignored.

    Here for the same reason as ``pcm16_rms``: the resampler asks this of every chunk to know
    whether its output can leave the int16 range, and ``audioop.max`` answers in ~0.1 µs where
    the two numpy clamps it saves cost ~0.9 µs.
    """
    pcm = _whole_samples(pcm)
    return int(audioop.max(audioop.byteswap(pcm, 2) if _SWAP else pcm, 2))


def pcm16_rms(pcm: bytes) -> int:
    """Root-mean-square level of PCM16LE audio (0..32767); a trailing odd byte is ignored.

    Also not G.711, and here for the same reason: the Live simulator's voice-activity detector
    measures every 20 ms window it hears, and ``audioop.rms`` does that in ~1 µs where numpy's
    per-call overhead costs ten times as much (it was a sixth of the simulator's CPU under load).
    """
    pcm = _whole_samples(pcm)
    return int(audioop.rms(audioop.byteswap(pcm, 2) if _SWAP else pcm, 2))
