"""Carrier codec <-> the model's audio, as the call bridge sees it: bytes in, bytes out.

Gemini Live takes PCM16LE at 16 kHz and speaks PCM16LE at 24 kHz. OpenAI Realtime takes and
speaks G.711 at 8 kHz as it is, or PCM16LE at 24 kHz. Carriers send 20 ms RTP-style frames of
G.711 (8 kHz), G.722 (16 kHz audio, 64 kbit/s) or L16 (16 kHz, big-endian network order by
default). The bridge never touches numpy; it holds one uplink and one downlink per call, made
for the carrier's format and the model's (``uplink_for``, ``downlink_for``). When the two are
the same codec nothing is decoded, resampled or encoded: the bytes pass through, and only the
downlink's framing into whole 20 ms packets remains.

Framing policy: the uplink passes audio straight through (the model does not care about frame
boundaries), while the downlink returns only whole 20 ms frames because carriers play fixed-ptime
packets. The downlink keeps its remainder as *PCM* at the carrier rate and encodes whole frames
only: G.722 is stateful ADPCM, so the pad that ``flush`` adds at the end of a turn must be PCM
silence run through the encoder (appending bytes would splice foreign codes into its state). For
the stateless codecs this gives the same bytes as padding with their silence code (never zeros for
μ-law: 0x00 is a loud click).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Final, Literal, Protocol

from gateway.audio import g711, g722
from gateway.audio.resample import (
    StreamResampler,
    model_to_telephone,
    model_to_wideband,
    telephone_to_model,
    telephone_to_model_24k,
    wideband_to_model_24k,
)
from gateway.audio.vad import THRESHOLD_RMS, voiced

Encoding = Literal["PCMU", "PCMA", "L16", "G722"]
ByteOrder = Literal["big", "little"]

FRAME_MS: Final = 20
MODEL_INPUT_RATE: Final = 16000
MODEL_OUTPUT_RATE: Final = 24000

_BITS_PER_SAMPLE: Final[dict[str, int]] = {"PCMU": 8, "PCMA": 8, "L16": 16, "G722": 4}
_SILENCE_BYTE: Final[dict[str, int]] = {
    "PCMU": g711.ULAW_SILENCE,
    "PCMA": g711.ALAW_SILENCE,
    "L16": 0x00,
}


class UnsupportedAudioFormat(ValueError):  # noqa: N818 -- public name (gateway.audio), kept as is
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
        if self.encoding not in _BITS_PER_SAMPLE:
            raise UnsupportedAudioFormat(
                f"unknown encoding {self.encoding!r}; known: {', '.join(_BITS_PER_SAMPLE)}"
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
        """Bytes per 20 ms frame: 160 for G.711 at 8 kHz and G.722, 640 for L16 at 16 kHz."""
        return self.samples_per_frame * _BITS_PER_SAMPLE[self.encoding] // 8

    @property
    def silence(self) -> bytes:
        """One 20 ms frame of codec silence: what a fresh encoder makes of 20 ms of PCM zeros.

        One repeated byte except for G.722, whose silence is a pattern (and is only what a stream
        *starts* with: the ADPCM state makes later silent frames differ).
        """
        if self.encoding == "G722":
            return g722.encoded_silence(self.samples_per_frame)
        return bytes((_SILENCE_BYTE[self.encoding],)) * self.frame_bytes

    def __str__(self) -> str:
        suffix = f"/{self.byteorder}-endian" if self.encoding == "L16" else ""
        return f"{self.encoding}/{self.sample_rate}{suffix}"


PCMU_8K: Final = AudioFormat("PCMU", 8000)
PCMA_8K: Final = AudioFormat("PCMA", 8000)
L16_16K: Final = AudioFormat("L16", 16000)
G722_16K: Final = AudioFormat("G722", 16000)
#: The browser's formats (``/web/stream``): the model's own rates, native byte order, so
#: neither direction is resampled or swapped.
PCM16_16K: Final = AudioFormat("L16", MODEL_INPUT_RATE, "little")
PCM16_24K: Final = AudioFormat("L16", MODEL_OUTPUT_RATE, "little")

_SUPPORTED: Final = "PCMU/8000, PCMA/8000, L16/16000 (either byte order), G722/16000"
_WIDEBAND: Final = frozenset({"L16", "G722"})


def _identity(data: bytes) -> bytes:
    return data


def _check_supported(fmt: AudioFormat) -> None:
    rate_ok = fmt.sample_rate == (16000 if fmt.encoding in _WIDEBAND else 8000)
    if not rate_ok:
        raise UnsupportedAudioFormat(f"no transcoder for {fmt}; supported: {_SUPPORTED}")


def _l16_swap(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """Carrier L16 <-> PCM16LE (the swap is its own inverse)."""
    return g711.pcm16_byteswap if fmt.byteorder == "big" else _identity


class CodecState(Protocol):
    """The part of a stateful codec (G.722) that the transcoders manage besides its function."""

    @property
    def delay_ms(self) -> float: ...

    def reset(self) -> None: ...


class Uplink:
    """Carrier payloads -> the model's input format (PCM16LE at 16 kHz unless made otherwise).

    G.711 is decoded and upsampled 8 -> 16 kHz (so output bytes are exactly 4x input bytes); G.722
    is decoded straight to 16 kHz (4 bytes out per byte in); L16 at 16 kHz is only byte-swapped. A
    malformed odd-length L16 payload keeps its dangling byte for the next call rather than shifting
    every later sample by one byte.
    """

    __slots__ = (
        "_codec", "_decode", "_format", "_level", "_odd", "_resampler", "_whole_samples",
        "feed_measured",
    )  # fmt: skip

    def __init__(
        self,
        fmt: AudioFormat,
        decode: Callable[[bytes], bytes],
        resampler: StreamResampler | None,
        *,
        codec: CodecState | None = None,
        level: Callable[[bytes], bytes] | None = None,
        codes: bool = False,
    ) -> None:
        self._format = fmt
        self._decode = decode
        self._resampler = resampler
        self._codec = codec
        self._whole_samples = fmt.encoding == "L16"  # every G.711 or G.722 byte decodes alone
        self._odd = b""
        #: What :meth:`voiced` decodes the output with first (None: the output is PCM16LE).
        self._level = level
        #: :meth:`feed` and :meth:`voiced` of one payload: ``(out, voiced)``. For 8-bit codes
        #: (``codes``: G.711, each byte one sample) into a compiled resampler, one C call
        #: (:meth:`~gateway.audio.resample.StreamResampler.coded_step`), the same answer.
        self.feed_measured: Callable[[bytes], tuple[bytes, bool]] = self._feed_then_measure
        if codes and resampler is not None:
            step = resampler.coded_step(_decode_table(decode), THRESHOLD_RMS)
            if step is not None:
                self.feed_measured = step

    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay added on the way to the model (resampler plus decoder QMF)."""
        resampler = self._resampler.delay_ms if self._resampler else 0.0
        return resampler + (self._codec.delay_ms if self._codec else 0.0)

    def feed(self, payload: bytes) -> bytes:
        """Decode one carrier payload (any length); returns PCM16LE 16 kHz, possibly empty."""
        if self._resampler is not None:
            return self._resampler.process(self._decode(payload))
        if self._whole_samples:
            if self._odd:
                payload = self._odd + payload
                self._odd = b""
            if len(payload) & 1:
                self._odd = payload[-1:]
                payload = payload[:-1]  # whole samples only; that byte waits for its partner
        return self._decode(payload)

    def voiced(self, out: bytes) -> bool:
        """Whether ``out`` (what :meth:`feed` returned) is louder than line noise."""
        return voiced(self._level(out) if self._level is not None else out)

    def _feed_then_measure(self, payload: bytes) -> tuple[bytes, bool]:
        out = self.feed(payload)
        return out, self.voiced(out)

    def reset(self) -> None:
        """Forget filter and codec state (e.g. after a media stream restart)."""
        self._odd = b""
        if self._resampler is not None:
            self._resampler.reset()
        if self._codec is not None:
            self._codec.reset()


class Passthrough:
    """The resampler of a downlink already at the model's rate: no filter, no delay."""

    __slots__ = ()

    @property
    def delay_ms(self) -> float:
        return 0.0

    def process(self, pcm: bytes) -> bytes:
        return pcm

    def flush(self) -> bytes:
        return b""

    def reset(self) -> None:
        pass


class Resampler(Protocol):
    """What a :class:`Downlink` needs of its resampler (a :class:`StreamResampler`)."""

    @property
    def delay_ms(self) -> float: ...

    def process(self, pcm: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def reset(self) -> None: ...


class Downlink:
    """Model PCM16LE at 24 kHz -> whole 20 ms carrier frames.

    ``encode`` takes PCM16LE at the carrier rate and is only ever given whole frames.
    """

    __slots__ = (
        "_codec", "_encode", "_format", "_frame_bytes", "_frame_pcm", "_pending", "_resampler",
    )  # fmt: skip

    def __init__(
        self,
        fmt: AudioFormat,
        encode: Callable[[bytes], bytes],
        resampler: Resampler,
        *,
        codec: CodecState | None = None,
    ) -> None:
        self._format = fmt
        self._encode = encode
        self._resampler = resampler
        self._codec = codec
        self._frame_pcm = 2 * fmt.samples_per_frame
        self._frame_bytes = fmt.frame_bytes
        self._pending = bytearray()  # PCM16LE at the carrier rate, less than one frame

    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay of the resampler and encoder QMF (framing adds up to one frame)."""
        return self._resampler.delay_ms + (self._codec.delay_ms if self._codec else 0.0)

    @property
    def pending_bytes(self) -> int:
        """Encoded size of the audio waiting for a whole frame (rounded down for G.722)."""
        return len(self._pending) * self._frame_bytes // self._frame_pcm

    def _frames(self) -> list[bytes]:
        pending = self._pending
        whole = len(pending) - len(pending) % self._frame_pcm
        if not whole:
            return []
        encoded = self._encode(bytes(pending[:whole]))
        del pending[:whole]
        return _split(encoded, self._frame_bytes)

    def feed(self, pcm24k: bytes) -> list[bytes]:
        """Accept a model chunk (any length); returns the whole frames it completes."""
        pcm = self._resampler.process(pcm24k)
        if not self._pending and not len(pcm) % self._frame_pcm:
            # The usual case, model chunks of whole 20 ms frames: no copy through the buffer.
            return _split(self._encode(pcm), self._frame_bytes) if pcm else []
        self._pending += pcm
        return self._frames()

    def flush(self) -> list[bytes]:
        """End of a model turn: emit the filter tail, padded to a whole frame with PCM silence."""
        self._pending += self._resampler.flush()
        partial = len(self._pending) % self._frame_pcm
        if partial:
            self._pending += bytes(self._frame_pcm - partial)
        return self._frames()

    def reset(self) -> None:
        """Barge-in: drop the unsent remainder, the filter state and the codec state."""
        self._pending.clear()
        self._resampler.reset()
        if self._codec is not None:
            self._codec.reset()


def _split(encoded: bytes, size: int) -> list[bytes]:
    """Whole frames of ``size`` bytes (``encoded`` holds a whole number of them)."""
    if len(encoded) == size:
        return [encoded]
    return [encoded[i : i + size] for i in range(0, len(encoded), size)]


class FramePassthrough:
    """Model audio already in the carrier's G.711 codec -> whole 20 ms frames, bytes untouched.

    G.711 is one byte per sample and stateless, so the only work left is the framing; the pad
    that ``flush`` adds to the last frame is the codec's silence byte.
    """

    __slots__ = ("_format", "_frame_bytes", "_pending")

    def __init__(self, fmt: AudioFormat) -> None:
        self._format = fmt
        self._frame_bytes = fmt.frame_bytes
        self._pending = bytearray()

    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def delay_ms(self) -> float:
        return 0.0

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def _frames(self) -> list[bytes]:
        size = self._frame_bytes
        pending = self._pending
        whole = len(pending) - len(pending) % size
        if not whole:
            return []
        frames = [bytes(pending[i : i + size]) for i in range(0, whole, size)]
        del pending[:whole]
        return frames

    def feed(self, encoded: bytes) -> list[bytes]:
        if not self._pending and not len(encoded) % self._frame_bytes:
            # Whole frames with nothing waiting (the usual case): cut, never copied through.
            return _split(bytes(encoded), self._frame_bytes) if encoded else []
        self._pending += encoded
        return self._frames()

    def flush(self) -> list[bytes]:
        partial = len(self._pending) % self._frame_bytes
        if partial:
            self._pending += self._format.silence[partial:]
        return self._frames()

    def reset(self) -> None:
        self._pending.clear()


class CodedDownlink(FramePassthrough):
    """Model PCM16LE at 24 kHz -> whole 20 ms frames of G.711, resampled and encoded in one C
    call per model chunk (:meth:`~gateway.audio.resample.StreamResampler.encoded_step`).

    The same frames as a :class:`Downlink` with that codec: G.711 is stateless, one byte per
    sample, so what waits for a whole frame can wait encoded (as in
    :class:`FramePassthrough`, whose framing this is), and the codec's silence byte pads the
    last frame as encoding PCM silence would.
    """

    __slots__ = ("_encode", "_resampler", "_step")

    def __init__(
        self,
        fmt: AudioFormat,
        encode: Callable[[bytes], bytes],
        resampler: StreamResampler,
        step: Callable[[bytes], bytes],
    ) -> None:
        super().__init__(fmt)
        self._encode = encode
        self._resampler = resampler
        self._step = step

    @property
    def delay_ms(self) -> float:
        return self._resampler.delay_ms

    def feed(self, pcm24k: bytes) -> list[bytes]:
        """Accept a model chunk (any length); returns the whole frames it completes."""
        return super().feed(self._step(pcm24k))

    def flush(self) -> list[bytes]:
        """End of a model turn: emit the filter tail, padded to a whole frame with silence."""
        frames = super().feed(self._encode(self._resampler.flush()))
        return frames + super().flush()

    def reset(self) -> None:
        """Barge-in: drop the unsent remainder and the filter state."""
        super().reset()
        self._resampler.reset()


def _g711_downlink(fmt: AudioFormat, encode: Callable[[bytes], bytes]) -> AnyDownlink:
    """The downlink to G.711: one C call per chunk when the resampler is compiled."""
    resampler = model_to_telephone()
    step = resampler.encoded_step(_encode_table(encode))
    if step is None:
        return Downlink(fmt, encode, resampler)
    return CodedDownlink(fmt, encode, resampler, step)


@cache
def _encode_table(encode: Callable[[bytes], bytes]) -> bytes:
    """``encode`` of every sample's top 14 bits, in order: the table of ``encoded_step``
    (made once per codec, not per call)."""
    return encode(struct.pack("<16384H", *range(0, 1 << 16, 4)))


@cache
def _decode_table(decode: Callable[[bytes], bytes]) -> bytes:
    """``decode`` of every 8-bit code, in order: the table of ``coded_step``."""
    return decode(bytes(range(256)))


#: A model -> carrier transcoder, as the bridge uses it.
AnyDownlink = Downlink | FramePassthrough

_G711_DECODE: Final = {"PCMU": g711.ulaw_decode, "PCMA": g711.alaw_decode}


def uplink_for(fmt: AudioFormat, model: AudioFormat = PCM16_16K) -> Uplink:
    """A fresh carrier -> model transcoder for one call; ``model`` is the model's input
    format: PCM16LE at 16 kHz (Gemini) or 24 kHz, or the carrier's own G.711 (passed through).
    """
    if model == fmt and fmt.encoding in _G711_DECODE:
        return Uplink(fmt, _identity, None, level=_G711_DECODE[fmt.encoding])
    if model == fmt == PCM16_16K:
        return Uplink(fmt, _identity, None)
    if model not in (PCM16_16K, PCM16_24K):
        raise UnsupportedAudioFormat(f"no transcoder from {fmt} to the model's {model}")
    _check_supported(fmt)
    wide = model == PCM16_24K
    if fmt.encoding in _G711_DECODE:
        resampler = telephone_to_model_24k() if wide else telephone_to_model()
        return Uplink(fmt, _G711_DECODE[fmt.encoding], resampler, codes=True)
    to_24k = wideband_to_model_24k() if wide else None
    if fmt.encoding == "G722":
        decoder = g722.G722Decoder()
        return Uplink(fmt, decoder.decode, to_24k, codec=decoder)
    if to_24k is not None:
        return Uplink(fmt, _l16_swap(fmt), to_24k)
    return Uplink(fmt, _l16_swap(fmt), None)


def downlink_for(fmt: AudioFormat, model: AudioFormat = PCM16_24K) -> AnyDownlink:
    """A fresh model -> carrier transcoder for one call; ``model`` is the model's output
    format: PCM16LE at 24 kHz, or the carrier's own G.711 (then only framed).

    Little-endian L16 at the model's own 24 kHz (the browser) is only cut into frames: no
    carrier plays it, but a peer that can take the model's audio as it is should get it so.
    """
    if model == fmt and fmt.encoding in _G711_DECODE:
        return FramePassthrough(fmt)
    if model != PCM16_24K:
        raise UnsupportedAudioFormat(f"no transcoder from the model's {model} to {fmt}")
    if fmt == PCM16_24K:
        return Downlink(fmt, _identity, Passthrough())
    _check_supported(fmt)
    if fmt.encoding == "PCMU":
        return _g711_downlink(fmt, g711.ulaw_encode)
    if fmt.encoding == "PCMA":
        return _g711_downlink(fmt, g711.alaw_encode)
    if fmt.encoding == "G722":
        encoder = g722.G722Encoder()
        return Downlink(fmt, encoder.encode, model_to_wideband(), codec=encoder)
    return Downlink(fmt, _l16_swap(fmt), model_to_wideband())
