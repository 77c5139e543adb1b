"""G.722 wrappers: sizes, held-back samples, chunking invariance, reset, tone fidelity, delay.

Fidelity bounds are measured numbers plus margin, not the codec's nominal spec: the 64 kbit/s mode
keeps a -12 dBFS tone within 0.01 dB at 1 kHz and 0.2 dB at 6 kHz (upper sub-band, 2 bits per
code) over random phases, with a SINAD of 47 dB and 27 dB. A byte-order, pairing or state bug
misses these by tens of dB.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audio import analysis, g711, g722

RATE = g722.SAMPLE_RATE


def _noise(samples: int, seed: int, scale: float = 6000.0) -> bytes:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, scale, samples), -32768, 32767).astype("<i2").tobytes()


def _round_trip(pcm: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(g722.G722Decoder().decode(g722.G722Encoder().encode(pcm)), dtype="<i2")


def _sinad_db(x: npt.NDArray[np.int16], freq_hz: float) -> float:
    """Tone power over everything else (least-squares fit of the tone at its known frequency)."""
    n = np.arange(x.size)
    phase = 2.0 * np.pi * freq_hz / RATE * n
    basis = np.stack((np.sin(phase), np.cos(phase), np.ones(x.size)), axis=1)
    coeffs = np.linalg.lstsq(basis, x.astype(np.float64), rcond=None)[0]
    tone = basis @ coeffs
    residual = x - tone
    return 10.0 * math.log10(float(np.mean(tone * tone) / np.mean(residual * residual)))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- sizes and held-back samples -----------------------------------------------------------------


def test_one_frame_is_160_bytes_each_way() -> None:
    codes = g722.G722Encoder().encode(bytes(640))  # 20 ms: 320 samples
    assert len(codes) == 160
    assert len(g722.G722Decoder().decode(codes)) == 640


def test_encoder_holds_back_an_unpaired_sample_and_an_odd_byte() -> None:
    pcm = _noise(5, seed=1)
    encoder = g722.G722Encoder()
    assert encoder.encode(pcm[:3]) == b""  # one sample and a half: no pair yet
    assert encoder.pending_bytes == 3
    first = encoder.encode(pcm[3:9])  # now 4.5 samples: two pairs out, half a sample held
    assert len(first) == 2
    assert encoder.pending_bytes == 1
    assert first + encoder.encode(pcm[9:]) == g722.G722Encoder().encode(pcm)
    assert encoder.pending_bytes == 2  # the fifth sample waits for its partner


def test_decoder_takes_any_byte_count_and_any_bytes_like() -> None:
    codes = g722.G722Encoder().encode(_noise(7, seed=2))
    assert len(codes) == 3
    whole = g722.G722Decoder().decode(codes)
    assert len(whole) == 12
    assert g722.G722Decoder().decode(bytearray(codes)) == whole
    assert g722.G722Decoder().decode(memoryview(codes)) == whole
    assert g722.G722Decoder().decode(b"") == b""


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**6), max_size=12), size=st.integers(0, 1283))
def test_encoder_output_does_not_depend_on_chunking(cuts: list[int], size: int) -> None:
    pcm = _noise(size // 2, seed=size) + bytes(size & 1)
    encoder = g722.G722Encoder()
    chunked = b"".join(encoder.encode(chunk) for chunk in _split(pcm, cuts))
    assert chunked == g722.G722Encoder().encode(pcm)
    assert len(chunked) == size // 4
    assert encoder.pending_bytes == size % 4


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**6), max_size=12), codes=st.binary(max_size=500))
def test_decoder_output_does_not_depend_on_chunking(cuts: list[int], codes: bytes) -> None:
    decoder = g722.G722Decoder()
    chunked = b"".join(decoder.decode(chunk) for chunk in _split(codes, cuts))
    assert chunked == g722.G722Decoder().decode(codes)
    assert len(chunked) == 4 * len(codes)


# --- state ---------------------------------------------------------------------------------------


def test_state_carries_across_calls() -> None:
    """ADPCM: the same input codes differently once the predictor has seen other audio."""
    pcm = _noise(320, seed=3)
    encoder = g722.G722Encoder()
    assert encoder.encode(pcm) != encoder.encode(pcm)
    decoder = g722.G722Decoder()
    codes = g722.G722Encoder().encode(pcm)
    assert decoder.decode(codes) != decoder.decode(codes)


def test_reset_matches_a_fresh_codec() -> None:
    encoder, decoder = g722.G722Encoder(), g722.G722Decoder()
    decoder.decode(encoder.encode(_noise(501, seed=4) + b"\x01"))
    assert encoder.pending_bytes == 3
    encoder.reset()
    decoder.reset()
    assert encoder.pending_bytes == 0
    pcm = _noise(640, seed=5)
    codes = encoder.encode(pcm)
    assert codes == g722.G722Encoder().encode(pcm)
    assert decoder.decode(codes) == g722.G722Decoder().decode(codes)


def test_encoded_silence_is_a_pattern_that_decodes_to_silence() -> None:
    silence = g722.encoded_silence(320)
    assert silence == g722.G722Encoder().encode(bytes(640))
    assert len(silence) == 160
    assert len(set(silence)) > 1  # not one repeated byte, unlike G.711
    assert analysis.rms_dbfs(g722.G722Decoder().decode(silence)) < -70.0


# --- fidelity and delay --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freq", "level_tol_db", "min_sinad_db"),
    [(1000.0, 0.05, 44.0), (6000.0, 0.4, 24.0)],
)
def test_tone_level_frequency_and_sinad_survive_the_codec(
    freq: float, level_tol_db: float, min_sinad_db: float
) -> None:
    rng = np.random.default_rng(6)
    for phase in rng.uniform(0.0, 2.0 * np.pi, 3):
        pcm = analysis.sine_pcm16(freq, 1.0, RATE, -12.0, phase=float(phase))
        back = _round_trip(pcm)[800:]  # skip 50 ms of predictor start-up
        assert analysis.tone_dbfs(back, RATE, freq) == pytest.approx(-12.0, abs=level_tol_db)
        assert analysis.dominant_frequency(back, RATE) == pytest.approx(freq, abs=0.05)
        assert _sinad_db(back, freq) > min_sinad_db


def test_codec_delay_matches_cross_correlation() -> None:
    pcm = _noise(16000, seed=7, scale=4000.0)
    measured = analysis.estimate_delay_ms(pcm, _round_trip(pcm), RATE, max_delay_ms=10.0)
    expected = 1000.0 * g722.CODEC_DELAY_SAMPLES / RATE
    assert measured == pytest.approx(expected, abs=0.02)
    assert g722.G722Encoder().delay_ms + g722.G722Decoder().delay_ms == expected


def test_big_endian_host_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulates a big-endian host on this one: host-order samples are then byte-swapped PCM16LE."""
    pcm = _noise(321, seed=8)
    codes = g722.G722Encoder().encode(pcm)
    decoded = g722.G722Decoder().decode(codes)
    monkeypatch.setattr(g722, "_SWAP", True)
    assert g722.G722Encoder().encode(g711.pcm16_byteswap(pcm)) == codes
    assert g722.G722Decoder().decode(codes) == g711.pcm16_byteswap(decoded)
