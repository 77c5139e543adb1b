"""G.722 (wideband ADPCM, 16 kHz at 64 kbit/s) <-> PCM16LE, one stateful object per direction.

Why the ``G722`` distribution (sippy/libg722): it is C, bit-exact ITU G.722 (it passes the ITU test
vectors), ships wheels for the Pythons we run, and costs ~17 µs to encode and ~13 µs to decode a
20 ms frame (2-core AMD EPYC VM; the wrappers add < 1 µs). This module is the only place that
imports it; it has no type information, so it is seen through the ``_Libg722`` protocol below.

Things the library leaves to the caller, handled here:

* **State.** G.722 is ADPCM: every code depends on the ones before it, so a call needs one
  encoder and one decoder per direction for its whole life, and ``reset`` after a stream restart.
  A libg722 instance has no reset of its own; ``reset`` builds a fresh one (< 1 µs).
* **Sample pairs.** The encoder's QMF turns each *pair* of 16 kHz samples into one 8-bit code.
  Given an odd count, libg722 sizes its output for ``n // 2`` codes but still encodes the unpaired
  last sample, reading one sample past its input and writing one code past its output.
  ``G722Encoder`` therefore holds the odd sample (and an odd byte) back for the next call, which
  also makes its output independent of how the input stream is chunked.
* **Byte order and types.** Bytes passed to ``encode`` are taken as 8-bit samples, so PCM goes in as
  a memoryview of 16-bit native samples (byte-swapped first on a big-endian host). ``decode``
  accepts only exact ``bytes``, returns ``array('h')`` (or a numpy array when the optional
  ``G722-numpy`` is installed, unless ``use_numpy=False`` is passed, as here).
"""

from __future__ import annotations

import sys
from array import array
from functools import cache
from typing import Final, Protocol

import G722

SAMPLE_RATE: Final = 16000
"""Audio rate on both sides of the codec (RTP still clocks G.722 at 8000: RFC 3551, 4.5.2)."""

BIT_RATE: Final = 64000
"""Mode 1, what RTP payload type 9 carries: 6 bits for the 0-4 kHz band, 2 for 4-8 kHz."""

CODEC_DELAY_SAMPLES: Final = 22
"""Delay of an encode -> decode pair at 16 kHz (1.375 ms), measured by cross-correlation. The
transmit and receive QMFs are the same 24-tap filter, so each direction is charged half."""

_HALF_DELAY_MS: Final = 1000.0 * CODEC_DELAY_SAMPLES / 2 / SAMPLE_RATE
_PAIR_BYTES: Final = 4  # one G.722 code = two PCM16 samples
_SWAP: Final = sys.byteorder != "little"


class _Libg722(Protocol):
    def encode(self, samples: memoryview | array[int], /) -> bytes: ...

    def decode(self, data: bytes, /) -> array[int]: ...


def _new_codec() -> _Libg722:
    codec: _Libg722 = G722.G722(SAMPLE_RATE, BIT_RATE, use_numpy=False)
    return codec


def _native_samples(pcm: bytes, size: int) -> memoryview | array[int]:
    """``size`` (even) bytes of PCM16LE as host-order 16-bit samples, without a copy if we can."""
    if not _SWAP:
        return memoryview(pcm)[:size].cast("h")
    samples = array("h", pcm[:size])
    samples.byteswap()
    return samples


class G722Encoder:
    """PCM16LE at 16 kHz (any byte count) -> G.722 codes, one byte per two samples.

    Up to three trailing bytes (an unpaired sample and/or half a sample) wait for the next call;
    at the end of a stream they are dropped (at most 62.5 µs of audio).
    """

    __slots__ = ("_codec", "_held")

    def __init__(self) -> None:
        self._codec = _new_codec()
        self._held = b""

    @property
    def delay_ms(self) -> float:
        """This side's share of the codec delay (the transmit QMF)."""
        return _HALF_DELAY_MS

    @property
    def pending_bytes(self) -> int:
        """PCM bytes held back for lack of a whole sample pair (0-3)."""
        return len(self._held)

    def encode(self, pcm: bytes) -> bytes:
        """Encode a PCM16LE chunk; returns ``(held + len(pcm)) // 4`` codes, possibly none."""
        if self._held:
            pcm = self._held + pcm
        usable = len(pcm) - len(pcm) % _PAIR_BYTES
        self._held = bytes(pcm[usable:])
        if not usable:
            return b""
        return self._codec.encode(_native_samples(pcm, usable))

    def reset(self) -> None:
        """Forget the ADPCM state and any held-back samples."""
        self._codec = _new_codec()
        self._held = b""


class G722Decoder:
    """G.722 codes (any byte count) -> PCM16LE at 16 kHz, two samples (four bytes) per byte."""

    __slots__ = ("_codec",)

    def __init__(self) -> None:
        self._codec = _new_codec()

    @property
    def delay_ms(self) -> float:
        """This side's share of the codec delay (the receive QMF)."""
        return _HALF_DELAY_MS

    def decode(self, data: bytes | bytearray | memoryview) -> bytes:
        """Decode G.722 codes to PCM16LE; every byte stands alone, so nothing is held back."""
        samples = self._codec.decode(bytes(data))  # libg722 rejects bytearray and memoryview
        if _SWAP:
            samples.byteswap()
        return samples.tobytes()

    def reset(self) -> None:
        """Forget the ADPCM state (e.g. after a media stream restart)."""
        self._codec = _new_codec()


@cache
def encoded_silence(samples: int) -> bytes:
    """What a fresh encoder makes of ``samples`` PCM zeros (the start of a silent stream).

    Not one repeated byte, and not the same every frame: on digital silence the ADPCM predictors
    idle in a limit cycle, so later silent frames code differently (they still decode to within
    4 LSBs of zero, -85 dBFS).
    """
    return G722Encoder().encode(bytes(2 * samples))
