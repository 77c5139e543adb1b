"""Carrier codec <-> Gemini Live PCM, as the call bridge sees it: bytes in, bytes out.

Gemini Live takes PCM16LE at 16 kHz and speaks PCM16LE at 24 kHz. Carriers send 20 ms RTP-style
frames of G.711 (8 kHz) or L16 (16 kHz, big-endian network order by default). The bridge never
touches numpy; it holds one ``Uplink`` and one ``Downlink`` per call.

Framing policy: the uplink passes audio straight through (the model does not care about frame
boundaries), while the downlink returns only whole 20 ms frames because carriers play fixed-ptime
packets; the remainder waits for the next model chunk or for ``flush`` at the end of a turn, which
pads it with codec silence (never zeros for μ-law: 0x00 is a loud click).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from gateway.audio import g711
from gateway.audio.resample import (
    StreamResampler,
    model_to_telephone,
    model_to_wideband,
    telephone_to_model,
)

Encoding = Literal["PCMU", "PCMA", "L16"]
ByteOrder = Literal["big", "little"]

FRAME_MS: Final = 20
MODEL_INPUT_RATE: Final = 16000
MODEL_OUTPUT_RATE: Final = 24000

_BYTES_PER_SAMPLE: Final[dict[str, int]] = {"PCMU": 1, "PCMA": 1, "L16": 2}
_SILENCE_BYTE: Final[dict[str, int]] = {
    "PCMU": g711.ULAW_SILENCE,
    "PCMA": g711.ALAW_SILENCE,
    "L16": 0x00,
}


class UnsupportedAudioFormat(ValueError):  # noqa: N818 -- name fixed by the bridge's API
    """The carrier format has no transcoder (or is not a valid format at all)."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A carrier's media format.

    ``byteorder`` only matters for L16; RFC 3551 puts L16 on the wire big-endian, which is the
    default, but some carriers document little-endian PCM so it is a field rather than assumed.
    """

    encoding: Encoding
    sample_rate: int
    byteorder: ByteOrder = "big"

    def __post_init__(self) -> None:
        if self.encoding not in _BYTES_PER_SAMPLE:
            raise UnsupportedAudioFormat(
                f"unknown encoding {self.encoding!r}; known: {', '.join(_BYTES_PER_SAMPLE)}"
            )
        if self.byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {self.byteorder!r}")
        if self.sample_rate <= 0 or self.sample_rate * FRAME_MS % 1000:
            raise ValueError(
                f"sample_rate {self.sample_rate} Hz does not give whole {FRAME_MS} ms frames"
            )

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate * FRAME_MS // 1000

    @property
    def frame_bytes(self) -> int:
        """Bytes per 20 ms frame: 160 for G.711 at 8 kHz, 640 for L16 at 16 kHz."""
        return self.samples_per_frame * _BYTES_PER_SAMPLE[self.encoding]

    @property
    def silence(self) -> bytes:
        """One 20 ms frame of codec silence."""
        return bytes((_SILENCE_BYTE[self.encoding],)) * self.frame_bytes

    def __str__(self) -> str:
        suffix = f"/{self.byteorder}-endian" if self.encoding == "L16" else ""
        return f"{self.encoding}/{self.sample_rate}{suffix}"


PCMU_8K: Final = AudioFormat("PCMU", 8000)
PCMA_8K: Final = AudioFormat("PCMA", 8000)
L16_16K: Final = AudioFormat("L16", 16000)

_SUPPORTED: Final = "PCMU/8000, PCMA/8000, L16/16000 (either byte order)"


def _identity(data: bytes) -> bytes:
    return data


def _check_supported(fmt: AudioFormat) -> None:
    rate_ok = fmt.sample_rate == (16000 if fmt.encoding == "L16" else 8000)
    if not rate_ok:
        raise UnsupportedAudioFormat(f"no transcoder for {fmt}; supported: {_SUPPORTED}")


def _l16_swap(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """Carrier L16 <-> PCM16LE (the swap is its own inverse)."""
    return g711.pcm16_byteswap if fmt.byteorder == "big" else _identity


class Uplink:
    """Carrier payloads -> PCM16LE at 16 kHz for the model.

    G.711 is decoded and upsampled 8 -> 16 kHz (so output bytes are exactly 4x input bytes); L16 at
    16 kHz is only byte-swapped. A malformed odd-length L16 payload keeps its dangling byte for the
    next call rather than shifting every later sample by one byte.
    """

    __slots__ = ("_decode", "_format", "_odd", "_resampler")

    def __init__(
        self,
        fmt: AudioFormat,
        decode: Callable[[bytes], bytes],
        resampler: StreamResampler | None,
    ) -> None:
        self._format = fmt
        self._decode = decode
        self._resampler = resampler
        self._odd = b""

    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay added on the way to the model."""
        return self._resampler.delay_ms if self._resampler else 0.0

    def feed(self, payload: bytes) -> bytes:
        """Decode one carrier payload (any length); returns PCM16LE 16 kHz, possibly empty."""
        if self._resampler is not None:
            return self._resampler.process(self._decode(payload))
        if self._odd:
            payload = self._odd + payload
            self._odd = b""
        if len(payload) & 1:
            self._odd = payload[-1:]
        return self._decode(payload)

    def reset(self) -> None:
        """Forget filter state (e.g. after a media stream restart)."""
        self._odd = b""
        if self._resampler is not None:
            self._resampler.reset()


class Downlink:
    """Model PCM16LE at 24 kHz -> whole 20 ms carrier frames."""

    __slots__ = ("_encode", "_format", "_frame_bytes", "_pending", "_resampler", "_silence_byte")

    def __init__(
        self,
        fmt: AudioFormat,
        encode: Callable[[bytes], bytes],
        resampler: StreamResampler,
    ) -> None:
        self._format = fmt
        self._encode = encode
        self._resampler = resampler
        self._frame_bytes = fmt.frame_bytes
        self._silence_byte = fmt.silence[:1]
        self._pending = bytearray()

    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay of the resampler (framing adds up to one frame on top)."""
        return self._resampler.delay_ms

    @property
    def pending_bytes(self) -> int:
        """Encoded bytes waiting for a whole frame."""
        return len(self._pending)

    def _frames(self) -> list[bytes]:
        pending = self._pending
        size = self._frame_bytes
        whole = len(pending) - len(pending) % size
        frames = [bytes(pending[i : i + size]) for i in range(0, whole, size)]
        del pending[:whole]
        return frames

    def feed(self, pcm24k: bytes) -> list[bytes]:
        """Accept a model chunk (any length); returns the whole frames it completes."""
        self._pending += self._encode(self._resampler.process(pcm24k))
        return self._frames()

    def flush(self) -> list[bytes]:
        """End of a model turn: emit the filter tail and pad the last frame with codec silence."""
        self._pending += self._encode(self._resampler.flush())
        partial = len(self._pending) % self._frame_bytes
        if partial:
            self._pending += self._silence_byte * (self._frame_bytes - partial)
        return self._frames()

    def reset(self) -> None:
        """Barge-in: drop the unsent remainder and the filter state."""
        self._pending.clear()
        self._resampler.reset()


def uplink_for(fmt: AudioFormat) -> Uplink:
    """A fresh carrier -> model transcoder for one call."""
    _check_supported(fmt)
    if fmt.encoding == "PCMU":
        return Uplink(fmt, g711.ulaw_decode, telephone_to_model())
    if fmt.encoding == "PCMA":
        return Uplink(fmt, g711.alaw_decode, telephone_to_model())
    return Uplink(fmt, _l16_swap(fmt), None)


def downlink_for(fmt: AudioFormat) -> Downlink:
    """A fresh model -> carrier transcoder for one call."""
    _check_supported(fmt)
    if fmt.encoding == "PCMU":
        return Downlink(fmt, g711.ulaw_encode, model_to_telephone())
    if fmt.encoding == "PCMA":
        return Downlink(fmt, g711.alaw_encode, model_to_telephone())
    return Downlink(fmt, _l16_swap(fmt), model_to_wideband())
