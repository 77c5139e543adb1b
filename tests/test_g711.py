"""G.711 codecs: bit-exact against audioop, silence codes, idempotence, odd lengths."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audio import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Codec = Callable[[bytes], bytes]

ALL_CODES = bytes(range(256))
ALL_PCM16 = np.arange(-32768, 32768, dtype="<i2").tobytes()

CODECS = [
    pytest.param(g711.ulaw_encode, g711.ulaw_decode, id="ulaw"),
    pytest.param(g711.alaw_encode, g711.alaw_decode, id="alaw"),
]


def test_decode_matches_audioop_for_every_code() -> None:
    assert g711.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_encode_matches_audioop_for_every_sample_value() -> None:
    assert g711.ulaw_encode(ALL_PCM16) == audioop.lin2ulaw(ALL_PCM16, 2)
    assert g711.alaw_encode(ALL_PCM16) == audioop.lin2alaw(ALL_PCM16, 2)


def test_output_is_little_endian() -> None:
    # μ-law code 0x00 is the most negative value, -32124 in ITU G.711.
    assert struct.unpack("<h", g711.ulaw_decode(b"\x00")) == (-32124,)
    assert g711.ulaw_encode(struct.pack("<h", -32124)) == b"\x00"


def test_silence_codes_decode_to_zero() -> None:
    assert g711.ulaw_decode(bytes([g711.ULAW_SILENCE]) * 4) == bytes(8)
    (alaw_zero,) = struct.unpack("<h", g711.alaw_decode(bytes([g711.ALAW_SILENCE])))
    assert abs(alaw_zero) <= 8  # A-law has no exact zero; ±8 of 32768 is -72 dBFS
    assert g711.ulaw_encode(bytes(2)) == bytes([g711.ULAW_SILENCE])
    assert g711.alaw_encode(bytes(2)) == bytes([g711.ALAW_SILENCE])


def test_ulaw_zero_byte_is_a_click_not_silence() -> None:
    (value,) = struct.unpack("<h", g711.ulaw_decode(b"\x00"))
    assert abs(value) > 30000


@pytest.mark.parametrize(("encode", "decode"), CODECS)
def test_odd_length_pcm_drops_the_half_sample(encode: Codec, decode: Codec) -> None:
    pcm = struct.pack("<3h", 1000, -2000, 3000)
    assert encode(pcm + b"\x7f") == encode(pcm)
    assert len(encode(b"\x01")) == 0
    assert len(decode(encode(pcm))) == len(pcm)


@pytest.mark.parametrize(("encode", "decode"), CODECS)
@given(data=st.binary(max_size=600))
def test_decode_encode_decode_is_idempotent(encode: Codec, decode: Codec, data: bytes) -> None:
    decoded = decode(data)
    assert len(decoded) == 2 * len(data)
    assert decode(encode(decoded)) == decoded


@pytest.mark.parametrize(("encode", "decode"), CODECS)
@given(pcm=st.binary(max_size=601))
def test_encode_accepts_any_bytes(encode: Codec, decode: Codec, pcm: bytes) -> None:
    encoded = encode(pcm)
    assert len(encoded) == len(pcm) // 2
    assert len(decode(encoded)) == 2 * len(encoded)


@pytest.mark.parametrize(("encode", "decode"), CODECS)
def test_quantisation_error_is_within_g711_step(encode: Codec, decode: Codec) -> None:
    """G.711 keeps ~12 bits of precision: error <= 1/32 of the magnitude (plus the zero step)."""
    pcm = np.arange(-32768, 32768, 7, dtype="<i2")
    back = np.frombuffer(decode(encode(pcm.tobytes())), dtype="<i2").astype(np.int64)
    error = np.abs(back - pcm.astype(np.int64))
    assert np.all(error <= np.abs(pcm.astype(np.int64)) // 32 + 16)


def test_pcm16_byteswap() -> None:
    little = struct.pack("<3h", 1, -2, 0x1234)
    big = g711.pcm16_byteswap(little)
    assert big == struct.pack(">3h", 1, -2, 0x1234)
    assert g711.pcm16_byteswap(big) == little
    assert g711.pcm16_byteswap(little + b"\x55") == big


@given(st.binary(min_size=0, max_size=1281))
def test_pcm16_rms_matches_the_textbook_definition(pcm: bytes) -> None:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    expected = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
    assert abs(g711.pcm16_rms(pcm) - expected) <= 1.0


@given(st.binary(min_size=0, max_size=1281))
def test_pcm16_peak_is_the_largest_magnitude(pcm: bytes) -> None:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int64)
    assert g711.pcm16_peak(pcm) == (int(np.abs(samples).max()) if samples.size else 0)


def test_pcm16_peak_of_the_most_negative_sample_is_32768() -> None:
    assert g711.pcm16_peak(struct.pack("<3h", 5, -32768, 32767)) == 32768
