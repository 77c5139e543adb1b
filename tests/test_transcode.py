"""Uplink/Downlink transcoders: framing, lengths, levels end to end, reset, L16 byte order and
G.722."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audio import analysis, g711, g722, resample
from gateway.audio.resample import model_to_telephone, model_to_wideband
from gateway.audio.transcode import (
    G722_16K,
    L16_16K,
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
    CodedDownlink,
    Downlink,
    UnsupportedAudioFormat,
    downlink_for,
    uplink_for,
)
from tests.test_resample import require_compiled

FORMATS = [
    pytest.param(PCMU_8K, id="PCMU"),
    pytest.param(PCMA_8K, id="PCMA"),
    pytest.param(L16_16K, id="L16"),
]
LITTLE_L16 = AudioFormat("L16", 16000, "little")


def _noise(samples: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 6000, samples), -32768, 32767).astype("<i2").tobytes()


def _carrier_to_pcm16le(fmt: AudioFormat, payload: bytes) -> npt.NDArray[np.int16]:
    """Independent decoder for checking what the downlink produced."""
    if fmt.encoding == "PCMU":
        payload = g711.ulaw_decode(payload)
    elif fmt.encoding == "PCMA":
        payload = g711.alaw_decode(payload)
    order = ">" if fmt.byteorder == "big" and fmt.encoding == "L16" else "<"
    return np.frombuffer(payload, dtype=f"{order}i2").astype(np.int16)


def _pcm16le_to_carrier(fmt: AudioFormat, pcm: bytes) -> bytes:
    if fmt.encoding == "PCMU":
        return g711.ulaw_encode(pcm)
    if fmt.encoding == "PCMA":
        return g711.alaw_encode(pcm)
    return g711.pcm16_byteswap(pcm) if fmt.byteorder == "big" else pcm


# --- AudioFormat ---------------------------------------------------------------------------------


def test_format_constants() -> None:
    assert (PCMU_8K.frame_bytes, PCMA_8K.frame_bytes, L16_16K.frame_bytes) == (160, 160, 640)
    assert PCMU_8K.silence == b"\xff" * 160
    assert PCMA_8K.silence == b"\xd5" * 160
    assert L16_16K.silence == bytes(640)
    assert L16_16K.byteorder == "big"
    assert str(L16_16K) == "L16/16000/big-endian"
    assert str(PCMU_8K) == "PCMU/8000"


def test_format_validation() -> None:
    with pytest.raises(UnsupportedAudioFormat, match="OPUS"):
        AudioFormat("OPUS", 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        AudioFormat("L16", 11025)
    with pytest.raises(ValueError, match="byteorder"):
        AudioFormat("L16", 16000, "middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", [AudioFormat("PCMU", 16000), AudioFormat("L16", 48000)])
def test_unsupported_formats_raise_a_clear_error(fmt: AudioFormat) -> None:
    for factory in (uplink_for, downlink_for):
        with pytest.raises(UnsupportedAudioFormat, match=f"{fmt}.*supported: PCMU/8000"):
            factory(fmt)
    assert issubclass(UnsupportedAudioFormat, ValueError)


# --- Downlink ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [*FORMATS, LITTLE_L16])
@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(0, 3001), min_size=1, max_size=12))
def test_downlink_returns_only_whole_frames(fmt: AudioFormat, chunks: list[int]) -> None:
    downlink = downlink_for(fmt)
    pcm = _noise(sum(chunks), seed=1) + b"\x01"  # plus a dangling byte
    frames, pos = [], 0
    for size in chunks:
        frames += downlink.feed(pcm[pos : pos + size])
        pos += size
    assert downlink.pending_bytes < fmt.frame_bytes
    frames += downlink.flush()
    assert all(len(frame) == fmt.frame_bytes for frame in frames)
    assert downlink.pending_bytes == 0


DOWNLINKS = [
    pytest.param(fmt, model, id=f"{fmt}<-{model}")
    for fmt, model in [
        (PCMU_8K, PCM16_24K),
        (PCMA_8K, PCM16_24K),
        (L16_16K, PCM16_24K),
        (LITTLE_L16, PCM16_24K),
        (G722_16K, PCM16_24K),
        (PCM16_24K, PCM16_24K),
        (PCMU_8K, PCMU_8K),
        (PCMA_8K, PCMA_8K),
    ]
]
#: Chunk sizes in 20 ms frames of the model's audio (0 means an arbitrary byte count).
WHOLE_OR_ANY = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3001)), min_size=1, max_size=12)


@pytest.mark.parametrize(("fmt", "model"), DOWNLINKS)
@settings(max_examples=40, deadline=None)
@given(chunks=WHOLE_OR_ANY)
def test_downlink_frames_do_not_depend_on_chunking(
    fmt: AudioFormat, model: AudioFormat, chunks: list[tuple[int, int]]
) -> None:
    """Whole-frame chunks (cut straight into frames when nothing waits) mixed with any byte
    counts (buffered) give the frames of the whole stream fed at once."""
    sizes = [frames * model.frame_bytes if frames else size for frames, size in chunks]
    audio = _noise(sum(sizes), seed=12) if model == PCM16_24K else bytes(range(256)) * 150
    audio = audio[: sum(sizes)]
    downlink, whole = downlink_for(fmt, model), downlink_for(fmt, model)
    frames, pos = [], 0
    for size in sizes:
        frames += downlink.feed(audio[pos : pos + size])
        assert downlink.pending_bytes < fmt.frame_bytes
        pos += size
    frames += downlink.flush()
    assert all(isinstance(frame, bytes) and len(frame) == fmt.frame_bytes for frame in frames)
    assert frames == whole.feed(audio) + whole.flush()


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_second_of_model_audio_is_fifty_frames_plus_the_flushed_tail(fmt: AudioFormat) -> None:
    downlink = downlink_for(fmt)
    tone = analysis.sine_pcm16(1000.0, 1.0, 24000, -10.0)
    frames = [f for i in range(0, len(tone), 960) for f in downlink.feed(tone[i : i + 960])]
    assert len(frames) == 50
    tail = downlink.flush()
    assert len(tail) == 1  # the <= 4 ms filter tail padded to one frame
    assert downlink.flush() == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_flush_pads_with_codec_silence(fmt: AudioFormat) -> None:
    downlink = downlink_for(fmt)
    assert downlink.feed(bytes(2 * 24 * 30)) == [fmt.silence]  # 30 ms of digital silence
    (last,) = downlink.flush()
    assert last == fmt.silence  # μ-law pads with 0xFF, never 0x00


@pytest.mark.parametrize("fmt", FORMATS)
def test_level_and_frequency_survive_the_downlink(fmt: AudioFormat) -> None:
    downlink = downlink_for(fmt)
    frames = downlink.feed(analysis.sine_pcm16(1000.0, 1.0, 24000, -10.0)) + downlink.flush()
    pcm = _carrier_to_pcm16le(fmt, b"".join(frames))[fmt.sample_rate // 20 : fmt.sample_rate]
    # G.711 SNR is ~37 dB: its noise moves the tone reading by < 0.1 dB; 0.5 dB is the spec.
    assert analysis.tone_dbfs(pcm, fmt.sample_rate, 1000.0) == pytest.approx(-10.0, abs=0.5)
    assert analysis.dominant_frequency(pcm, fmt.sample_rate) == pytest.approx(1000.0, abs=0.5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_downlink_reset_drops_pending_audio(fmt: AudioFormat) -> None:
    downlink = downlink_for(fmt)
    loud = analysis.sine_pcm16(700.0, 0.03, 24000, 0.0)  # 30 ms: one frame out, 10 ms pending
    assert len(downlink.feed(loud)) == 1
    assert downlink.pending_bytes > 0
    downlink.reset()
    assert downlink.pending_bytes == 0
    assert downlink.flush() == []
    # After reset the old tone's filter tail must not leak into the next turn.
    quiet = bytes(2 * 24 * 40)
    assert downlink.feed(quiet) == [fmt.silence, fmt.silence]


def test_l16_downlink_is_big_endian_by_default() -> None:
    big, little = downlink_for(L16_16K), downlink_for(LITTLE_L16)
    tone = analysis.sine_pcm16(440.0, 0.1, 24000, -3.0)
    big_frames, little_frames = big.feed(tone), little.feed(tone)
    assert [g711.pcm16_byteswap(f) for f in big_frames] == little_frames
    samples = np.frombuffer(b"".join(big_frames), dtype=">i2")
    assert analysis.tone_dbfs(samples[800:], 16000, 440.0) == pytest.approx(-3.0, abs=0.05)


# --- Uplink --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K])
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 400), max_size=10))
def test_g711_uplink_doubles_the_sample_count(fmt: AudioFormat, sizes: list[int]) -> None:
    uplink = uplink_for(fmt)
    payload = _pcm16le_to_carrier(fmt, _noise(sum(sizes), seed=2))
    pos = 0
    for size in sizes:
        out = uplink.feed(payload[pos : pos + size])
        assert len(out) == 2 * 2 * size  # 2x the samples, 2 bytes each
        pos += size


def test_l16_uplink_only_swaps_bytes() -> None:
    samples = (1, -2, 0x1234, -32768, 32767)
    assert uplink_for(L16_16K).feed(struct.pack(">5h", *samples)) == struct.pack("<5h", *samples)
    le = struct.pack("<5h", *samples)
    assert uplink_for(LITTLE_L16).feed(le) == le
    assert uplink_for(L16_16K).delay_ms == 0.0


def test_l16_uplink_carries_a_dangling_byte() -> None:
    uplink = uplink_for(L16_16K)
    payload = struct.pack(">3h", 100, -200, 300)
    assert uplink.feed(payload[:3]) == struct.pack("<h", 100)
    assert uplink.feed(payload[3:]) == struct.pack("<2h", -200, 300)


@pytest.mark.parametrize("fmt", FORMATS)
def test_level_and_frequency_survive_the_uplink(fmt: AudioFormat) -> None:
    uplink = uplink_for(fmt)
    tone = analysis.sine_pcm16(1000.0, 1.0, fmt.sample_rate, -10.0)
    payload = _pcm16le_to_carrier(fmt, tone)
    out = b"".join(
        uplink.feed(payload[i : i + fmt.frame_bytes])
        for i in range(0, len(payload), fmt.frame_bytes)
    )
    pcm = np.frombuffer(out, dtype="<i2")
    assert pcm.size == 16000
    assert analysis.tone_dbfs(pcm[800:], 16000, 1000.0) == pytest.approx(-10.0, abs=0.5)
    assert analysis.dominant_frequency(pcm[800:], 16000) == pytest.approx(1000.0, abs=0.5)


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K])
def test_uplink_reset_matches_a_fresh_uplink(fmt: AudioFormat) -> None:
    used, fresh = uplink_for(fmt), uplink_for(fmt)
    used.feed(_pcm16le_to_carrier(fmt, _noise(500, seed=3)))
    used.reset()
    payload = _pcm16le_to_carrier(fmt, _noise(800, seed=4))
    assert used.feed(payload) == fresh.feed(payload)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_model_to_carrier_to_model(fmt: AudioFormat) -> None:
    """24 kHz model audio -> carrier frames -> 16 kHz model input keeps level and pitch; the
    delays of the two resamplers add up."""
    downlink, uplink = downlink_for(fmt), uplink_for(fmt)
    rng = np.random.default_rng(5)
    freq = 1500.0
    source = analysis.sine_pcm16(freq, 0.6, 24000, -12.0, phase=float(rng.uniform(0, 6)))
    frames = downlink.feed(source) + downlink.flush()
    back = np.frombuffer(b"".join(uplink.feed(f) for f in frames), dtype="<i2")[800:9600]
    assert analysis.tone_dbfs(back, 16000, freq) == pytest.approx(-12.0, abs=0.5)
    assert analysis.dominant_frequency(back, 16000) == pytest.approx(freq, abs=0.5)
    assert downlink.delay_ms + uplink.delay_ms < 8.0


# --- G.722 ---------------------------------------------------------------------------------------
# Measured with random phases: the codec moves a -12 dBFS tone by <= 0.01 dB at 1 kHz and <= 0.2 dB
# at 6 kHz (upper sub-band, 2 bits per code) and its frequency by < 0.01 Hz; the bounds below are
# those plus margin, far inside the 1 dB / 3 Hz that the bridge needs.

G722_TONES = [pytest.param(1000.0, 0.05, id="1kHz"), pytest.param(6000.0, 0.4, id="6kHz")]


def _g722_frames(pcm16k: bytes) -> list[bytes]:
    codes = g722.G722Encoder().encode(pcm16k)
    return [codes[i : i + 160] for i in range(0, len(codes), 160)]


def _pcm16(pcm: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(pcm, dtype="<i2")


def test_g722_format() -> None:
    assert (G722_16K.encoding, G722_16K.sample_rate) == ("G722", 16000)
    assert (G722_16K.samples_per_frame, G722_16K.frame_bytes) == (320, 160)
    assert str(G722_16K) == "G722/16000"
    # Silence is the encoding of PCM zeros, a pattern rather than one byte.
    assert G722_16K.silence == g722.G722Encoder().encode(bytes(640))
    assert len(G722_16K.silence) == 160
    assert len(set(G722_16K.silence)) > 1


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(0, 3001), min_size=1, max_size=12))
def test_g722_downlink_frames_do_not_depend_on_chunking(chunks: list[int]) -> None:
    pcm = _noise(sum(chunks), seed=11) + b"\x01"  # plus a dangling byte
    downlink = downlink_for(G722_16K)
    frames, pos = [], 0
    for size in chunks:
        frames += downlink.feed(pcm[pos : pos + size])
        assert downlink.pending_bytes < 160
        pos += size
    frames += downlink.feed(pcm[pos:]) + downlink.flush()
    assert all(len(frame) == 160 for frame in frames)
    assert downlink.pending_bytes == 0
    whole = downlink_for(G722_16K)
    assert frames == whole.feed(pcm) + whole.flush()


def test_g722_one_second_is_fifty_frames_plus_the_flushed_tail() -> None:
    downlink = downlink_for(G722_16K)
    tone = analysis.sine_pcm16(1000.0, 1.0, 24000, -12.0)
    frames = [f for i in range(0, len(tone), 960) for f in downlink.feed(tone[i : i + 960])]
    assert len(frames) == 50
    assert len(downlink.flush()) == 1  # the 2.25 ms resampler tail padded to one frame
    assert downlink.flush() == []


def test_g722_flush_pads_with_pcm_silence_before_encoding() -> None:
    """The pad goes through the encoder, so it continues the ADPCM state of the tone before it:
    the result equals encoding the resampled stream zero-padded to whole frames."""
    tone = analysis.sine_pcm16(1000.0, 0.03, 24000, -6.0)  # 30 ms: one frame out, 10 ms pending
    downlink = downlink_for(G722_16K)
    frames = downlink.feed(tone)
    assert len(frames) == 1
    assert downlink.pending_bytes > 0
    frames += downlink.flush()
    resampler = model_to_wideband()
    pcm = resampler.process(tone) + resampler.flush()
    assert frames == _g722_frames(pcm + bytes(-len(pcm) % 640))
    # The tone stops at 32.25 ms; after ~2 ms of ADPCM settling the pad decodes to near silence.
    decoded = _pcm16(g722.G722Decoder().decode(b"".join(frames)))
    assert analysis.rms_dbfs(decoded[35 * 16 :]) < -40.0


def test_g722_silent_turn_is_codec_silence() -> None:
    downlink = downlink_for(G722_16K)
    assert downlink.feed(bytes(2 * 24 * 30)) == [G722_16K.silence]
    (last,) = downlink.flush()
    assert analysis.rms_dbfs(g722.G722Decoder().decode(G722_16K.silence + last)) < -70.0


@pytest.mark.parametrize(("freq", "level_tol_db"), G722_TONES)
def test_g722_downlink_keeps_level_and_frequency(freq: float, level_tol_db: float) -> None:
    downlink = downlink_for(G722_16K)
    frames = downlink.feed(analysis.sine_pcm16(freq, 1.0, 24000, -12.0)) + downlink.flush()
    pcm = _pcm16(g722.G722Decoder().decode(b"".join(frames)))[800:16000]
    assert analysis.tone_dbfs(pcm, 16000, freq) == pytest.approx(-12.0, abs=level_tol_db)
    assert analysis.dominant_frequency(pcm, 16000) == pytest.approx(freq, abs=0.05)


@pytest.mark.parametrize(("freq", "level_tol_db"), G722_TONES)
def test_g722_uplink_keeps_level_and_frequency(freq: float, level_tol_db: float) -> None:
    uplink = uplink_for(G722_16K)
    frames = _g722_frames(analysis.sine_pcm16(freq, 1.0, 16000, -12.0))
    out = [uplink.feed(frame) for frame in frames]
    assert all(len(chunk) == 640 for chunk in out)  # 20 ms in, 20 ms out: no resampler
    pcm = _pcm16(b"".join(out))
    assert pcm.size == 16000
    assert analysis.tone_dbfs(pcm[800:], 16000, freq) == pytest.approx(-12.0, abs=level_tol_db)
    assert analysis.dominant_frequency(pcm[800:], 16000) == pytest.approx(freq, abs=0.05)


def test_g722_uplink_decodes_odd_length_payloads_at_once() -> None:
    """Unlike L16, every G.722 byte stands alone: nothing is held back."""
    codes = b"".join(_g722_frames(_noise(320, seed=12)))
    uplink = uplink_for(G722_16K)
    assert len(uplink.feed(codes[:3])) == 12
    assert uplink.feed(codes[3:]) == g722.G722Decoder().decode(codes)[12:]


@pytest.mark.parametrize(("freq", "level_tol_db"), G722_TONES)
def test_g722_round_trip_model_to_carrier_to_model(freq: float, level_tol_db: float) -> None:
    downlink, uplink = downlink_for(G722_16K), uplink_for(G722_16K)
    source = analysis.sine_pcm16(freq, 0.6, 24000, -12.0, phase=1.0)
    frames = downlink.feed(source) + downlink.flush()
    back = _pcm16(b"".join(uplink.feed(f) for f in frames))[800:9600]
    assert analysis.tone_dbfs(back, 16000, freq) == pytest.approx(-12.0, abs=level_tol_db)
    assert analysis.dominant_frequency(back, 16000) == pytest.approx(freq, abs=0.05)


def test_g722_delays_add_up_to_the_measured_delay() -> None:
    downlink, uplink = downlink_for(G722_16K), uplink_for(G722_16K)
    source = _noise(24000, seed=13)
    back = b"".join(uplink.feed(f) for f in downlink.feed(source) + downlink.flush())
    reference = model_to_wideband()
    ideal = reference.process(source) + reference.flush()  # same resampler, no codec
    codec_ms = analysis.estimate_delay_ms(ideal, back, 16000, max_delay_ms=10.0)
    assert codec_ms + reference.delay_ms == pytest.approx(
        downlink.delay_ms + uplink.delay_ms, abs=0.05
    )
    assert uplink.delay_ms == pytest.approx(0.6875)
    assert downlink.delay_ms + uplink.delay_ms < 4.0


def test_g722_reset_matches_fresh_codecs() -> None:
    downlink, uplink = downlink_for(G722_16K), uplink_for(G722_16K)
    loud = analysis.sine_pcm16(700.0, 0.03, 24000, 0.0)
    frames = downlink.feed(loud)
    uplink.feed(b"".join(frames))
    assert downlink.pending_bytes > 0
    downlink.reset()
    uplink.reset()
    assert downlink.pending_bytes == 0
    assert downlink.flush() == []
    # Neither the filter tail nor the ADPCM state of the old turn may leak into the next one.
    speech = _noise(24 * 60, seed=14)
    fresh_down, fresh_up = downlink_for(G722_16K), uplink_for(G722_16K)
    again = downlink.feed(speech)
    assert len(again) == 3
    assert again == fresh_down.feed(speech)
    payload = b"".join(again)
    assert uplink.feed(payload) == fresh_up.feed(payload)


def test_the_browsers_downlink_is_the_models_audio_cut_into_frames_untouched() -> None:
    from gateway.audio.transcode import PCM16_24K

    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32767, 24000 * 3 // 10, dtype="<i2").tobytes()  # 300 ms
    downlink = downlink_for(PCM16_24K)
    frames = downlink.feed(pcm[:1001]) + downlink.feed(pcm[1001:]) + downlink.flush()
    assert {len(f) for f in frames} == {960}  # 20 ms at 24 kHz
    joined = b"".join(frames)
    assert joined[: len(pcm)] == pcm
    assert joined[len(pcm) :] == bytes(len(joined) - len(pcm))  # padded with PCM silence
    assert downlink.delay_ms == 0.0


def test_the_browsers_uplink_is_passed_straight_to_the_model() -> None:
    from gateway.audio.transcode import PCM16_16K

    uplink = uplink_for(PCM16_16K)
    pcm = bytes(range(256)) * 5
    assert uplink.feed(pcm[:641]) + uplink.feed(pcm[641:]) == pcm
    assert uplink.delay_ms == 0.0


def test_g711_passes_through_both_ways_when_the_model_takes_it() -> None:
    """OpenAI Realtime speaks μ-law and A-law: no decode, no resampling, no encode."""
    from gateway.audio.transcode import PCMA_8K, PCMU_8K, FramePassthrough, downlink_for, uplink_for

    for fmt in (PCMU_8K, PCMA_8K):
        payload = bytes(range(256))[:160]
        uplink = uplink_for(fmt, fmt)
        assert uplink.feed(payload) == payload
        assert uplink.delay_ms == 0.0
        downlink = downlink_for(fmt, fmt)
        assert isinstance(downlink, FramePassthrough)
        assert downlink.feed(payload[:100]) == []
        assert downlink.feed(payload[100:] + payload) == [payload, payload]
        assert downlink.feed(b"\x42" * 30) == []
        (last,) = downlink.flush()
        assert last == b"\x42" * 30 + fmt.silence[30:]


def test_the_uplink_hears_voice_in_passed_through_g711() -> None:
    from gateway.audio import g711
    from gateway.audio.transcode import PCMU_8K, uplink_for

    uplink = uplink_for(PCMU_8K, PCMU_8K)
    loud = g711.ulaw_encode(b"\x00\x40" * 160)
    assert uplink.voiced(uplink.feed(loud))
    assert not uplink.voiced(uplink.feed(PCMU_8K.silence))


def test_wideband_and_g711_reach_a_24k_model_resampled() -> None:
    from gateway.audio.transcode import G722_16K, PCM16_16K, PCM16_24K, PCMU_8K, uplink_for

    for fmt, ratio in ((PCMU_8K, 6), (PCM16_16K, 1.5), (G722_16K, 6)):
        uplink = uplink_for(fmt, PCM16_24K)
        out = b"".join(uplink.feed(fmt.silence) for _ in range(50))
        assert abs(len(out) - ratio * 50 * fmt.frame_bytes) <= 2 * 24 * 5  # a filter's delay


def test_a_model_format_without_a_transcoder_is_refused() -> None:
    import pytest

    from gateway.audio.transcode import (
        G722_16K,
        PCMA_8K,
        PCMU_8K,
        UnsupportedAudioFormat,
        downlink_for,
        uplink_for,
    )

    with pytest.raises(UnsupportedAudioFormat):
        uplink_for(PCMU_8K, PCMA_8K)
    with pytest.raises(UnsupportedAudioFormat):
        downlink_for(G722_16K, PCMU_8K)


# --- the one-call steps of the compiled resampler (G.711) ----------------------------------------


def _loud_and_quiet(samples: int, seed: int) -> bytes:
    """Noise whose level wanders from silence to clipping, so both answers of the voice check
    and both ends of the codecs come up."""
    rng = np.random.default_rng(seed)
    level = 10 ** rng.uniform(-4, 0.2, samples // 40 + 1).repeat(40)[:samples]
    return np.clip(rng.normal(0, 1, samples) * level * 32768, -32768, 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K])
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 500), min_size=1, max_size=12), seed=st.integers(0, 99))
def test_the_uplinks_one_call_step_answers_as_feed_then_voiced(
    fmt: AudioFormat, sizes: list[int], seed: int
) -> None:
    """``feed_measured`` (decode, resample and voice check in C) gives what ``feed`` and then
    ``voiced`` give, payload after payload of any size, silence to clipping."""
    if not resample.COMPILED:
        require_compiled()
    fused, plain = uplink_for(fmt), uplink_for(fmt)
    assert fused.feed_measured != fused._feed_then_measure  # the C step is in use
    codes = _pcm16le_to_carrier(fmt, _loud_and_quiet(sum(sizes), seed))
    at = 0
    for size in sizes:
        payload = codes[at : at + size]
        at += size
        out = plain.feed(payload)
        assert fused.feed_measured(payload) == (out, plain.voiced(out))


@pytest.mark.parametrize(
    ("fmt", "encode"), [(PCMU_8K, g711.ulaw_encode), (PCMA_8K, g711.alaw_encode)]
)
@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3001), min_size=1, max_size=12),
    seed=st.integers(0, 99),
    reset_at=st.integers(0, 12),
)
def test_the_g711_downlinks_one_call_step_gives_the_same_frames(
    fmt: AudioFormat, encode: Callable[[bytes], bytes], sizes: list[int], seed: int, reset_at: int
) -> None:
    """The downlink to G.711 resamples and encodes in one C call, keeping what waits for a
    whole frame encoded: the frames, the flushed tail and a reset match the PCM path's."""
    if not resample.COMPILED:
        require_compiled()
    fused = downlink_for(fmt)
    plain = Downlink(fmt, encode, model_to_telephone())
    assert isinstance(fused, CodedDownlink)
    pcm = _loud_and_quiet(sum(sizes) // 2 * 2 + 2, seed)
    at = 0
    for i, size in enumerate(sizes):
        if i == reset_at:
            fused.reset()
            plain.reset()
        chunk = pcm[at : at + size]
        at += size
        assert fused.feed(chunk) == plain.feed(chunk)
        assert fused.pending_bytes == plain.pending_bytes
    assert fused.flush() == plain.flush()
    assert fused.delay_ms == plain.delay_ms
