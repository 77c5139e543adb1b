"""StreamResampler: exactness, chunking invariance, length rule, frequency response, delay.

Every test here runs twice: on the compiled FIR (``_polyphase.c``, the default where it was
built) and on the numpy form (``compiled=False``), through the ``engine`` fixture below.

Levels are measured on the *output stream* with gateway.audio.analysis after skipping the start-up
transient (50 ms, many times the <= 4 ms group delay). The presets' specs: passband flat within
±0.5 dB over 300-3400 Hz (7 kHz for wideband), images/aliases >= 60 dB down, delay <= 3.5/5/5 ms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audio import analysis, resample
from gateway.audio.resample import (
    TAP_FRACTION_BITS,
    StreamResampler,
    kaiser_beta,
    kaiser_lowpass,
    model_to_telephone,
    model_to_wideband,
    telephone_to_model,
    telephone_to_model_24k,
    wideband_to_model_24k,
    wideband_to_telephone,
)

Factory = Callable[[], StreamResampler]

PRESETS = [
    pytest.param(telephone_to_model, id="8k-16k"),
    pytest.param(model_to_telephone, id="24k-8k"),
    pytest.param(model_to_wideband, id="24k-16k"),
]
#: Every preset the call path uses (the tests of the shared machinery that need no per-preset spec).
ALL_PRESETS = [
    *PRESETS,
    pytest.param(telephone_to_model_24k, id="8k-24k"),
    pytest.param(wideband_to_model_24k, id="16k-24k"),
    pytest.param(wideband_to_telephone, id="16k-8k"),
]
DELAY_BUDGET_MS = {telephone_to_model: 3.5, model_to_telephone: 5.0, model_to_wideband: 5.0}
PASSBAND_TOP_HZ = {telephone_to_model: 3400, model_to_telephone: 3400, model_to_wideband: 7000}

SKIP_S = 0.05  # start-up transient skipped before measuring


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test on both FIRs: the numpy one by hiding the compiled module from the factories."""
    if request.param == "numpy":
        monkeypatch.setattr(resample, "_Kernel", None)
    elif not resample.COMPILED:
        require_compiled()
    return str(request.param)


def require_compiled() -> None:
    """Skip without the compiled FIR, or fail where the run must have it (CI has a compiler)."""
    if os.environ.get("CALLBRIDGE_REQUIRE_COMPILED") == "1":
        pytest.fail("CALLBRIDGE_REQUIRE_COMPILED=1 but gateway/audio/_polyphase.c is not built")
    pytest.skip("the compiled resampler is not built (no C compiler at install)")


def _noise(samples: int, seed: int, scale: float = 8000.0) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, scale, samples), -32768, 32767).astype(np.int16)


def _whole_stream(resampler: StreamResampler, pcm: bytes) -> bytes:
    return resampler.process(pcm) + resampler.flush()


def _steady_output(resampler: StreamResampler, pcm: bytes) -> npt.NDArray[np.int16]:
    out = np.frombuffer(resampler.process(pcm), dtype="<i2")
    return out[int(SKIP_S * resampler.out_rate) :]


def _direct_form(resampler: StreamResampler, x: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """Textbook definition: zero-stuff by L, convolve with the prototype, keep every M-th."""
    up, down = resampler.up, resampler.down
    stuffed = np.zeros(x.size * up)
    stuffed[::up] = x
    y = np.convolve(stuffed, resampler.taps)[: stuffed.size : down]
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


# --- measurement helpers the tests below rely on -------------------------------------------------


@pytest.mark.parametrize(
    ("level", "tolerance"),
    # At -60 dBFS the amplitude is 33 LSB, so int16 rounding alone moves the reading ~0.05 dB.
    [(0.0, 0.01), (-20.0, 0.01), (-60.0, 0.1)],
)
@pytest.mark.parametrize("freq", [437.0, 1000.0, 3333.3])
def test_tone_dbfs_reads_the_level_of_a_sine(level: float, tolerance: float, freq: float) -> None:
    x = analysis.sine(freq, 0.5, 8000, level, phase=0.3)
    assert analysis.tone_dbfs(x, 8000, freq) == pytest.approx(level, abs=tolerance)
    assert analysis.rms_dbfs(x) == pytest.approx(level, abs=tolerance)
    assert analysis.tone_dbfs(x, 8000, freq + 200.0) < max(
        level - 80.0, -115.0
    )  # sidelobes or int16 noise


def test_dominant_frequency_is_sub_bin_accurate() -> None:
    x = analysis.sine_pcm16(1234.56, 0.25, 16000, -10.0)  # bins are 4 Hz wide
    assert analysis.dominant_frequency(x, 16000) == pytest.approx(1234.56, abs=0.1)


def test_estimate_delay_ms_finds_a_known_shift() -> None:
    x = _noise(4000, seed=1)
    delayed = np.concatenate((np.zeros(37, dtype=np.int16), x))[: x.size]
    assert analysis.estimate_delay_ms(x, delayed, 8000) == pytest.approx(37 / 8, abs=0.01)
    assert analysis.estimate_delay_ms(delayed, x, 8000) == pytest.approx(-37 / 8, abs=0.01)


def test_kaiser_design_meets_its_own_attenuation() -> None:
    taps = kaiser_lowpass(48000.0, 7000.0, 8000.0, 70.0)
    response = np.abs(np.fft.rfft(taps, 1 << 16))
    freqs = np.fft.rfftfreq(1 << 16, 1 / 48000.0)
    assert taps.size % 2 == 1
    assert np.allclose(taps, taps[::-1])  # linear phase
    assert 20 * np.log10(response[freqs >= 8000.0].max()) < -69.0
    assert kaiser_beta(70.0) == pytest.approx(0.1102 * (70.0 - 8.7))
    assert kaiser_beta(30.0) == pytest.approx(0.5842 * 9.0**0.4 + 0.07886 * 9.0)
    assert kaiser_beta(20.0) == 0.0


# --- arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", PRESETS)
def test_matches_direct_form_definition(factory: Factory) -> None:
    resampler = factory()
    x = _noise(resampler.in_rate // 2, seed=2, scale=12000.0)  # some samples clip
    frame = resampler.in_rate // 50
    out = b"".join(resampler.process(x[i : i + frame].tobytes()) for i in range(0, x.size, frame))
    assert np.array_equal(np.frombuffer(out, dtype="<i2"), _direct_form(resampler, x))


@pytest.mark.parametrize("factory", PRESETS)
def test_arithmetic_is_exact(factory: Factory) -> None:
    """Chunking invariance rests on this: taps on a 2**-24 grid and worst-case sums far below
    2**53 grid steps, so float64 never rounds and BLAS summation order cannot matter."""
    taps = factory().taps
    steps = taps * 2.0**TAP_FRACTION_BITS
    assert np.array_equal(steps, np.round(steps))
    assert 32768 * np.abs(steps).sum() < 2.0**53


@pytest.mark.parametrize("factory", PRESETS)
def test_full_scale_overshoot_clips_instead_of_wrapping(factory: Factory) -> None:
    resampler = factory()
    square = np.where(np.arange(resampler.in_rate // 10) // 20 % 2 == 0, 32767, -32768)
    out = np.frombuffer(resampler.process(square.astype("<i2").tobytes()), dtype="<i2")
    assert out.max() == 32767  # Gibbs overshoot reached the rail ...
    assert out.min() == -32768
    assert np.array_equal(out, _direct_form(resampler, square.astype(np.int16)))  # ... and held


@pytest.mark.parametrize("factory", ALL_PRESETS)
def test_quiet_peak_is_the_largest_input_that_cannot_clip(factory: Factory) -> None:
    """For each output phase, the input that drives it hardest (every sample at the peak, with
    the sign of its tap): at ``quiet_peak`` no phase leaves int16, one step louder one could."""
    resampler = factory()
    up, down, peak = resampler.up, resampler.down, resampler.quiet_peak
    n = 4 * resampler.taps.size
    worst = 0.0
    for phase in range(up):
        m = up * (n * up // down // up - 1) + phase  # late enough to see every tap
        taps_at = m * down - np.arange(n) * up  # the tap each input sample meets
        valid = (taps_at >= 0) & (taps_at < resampler.taps.size)
        signs = np.sign(resampler.taps[np.clip(taps_at, 0, resampler.taps.size - 1)])
        x = np.where(valid, peak * signs, 0).astype(np.int16)
        stuffed = np.zeros(n * up)
        stuffed[::up] = x
        value = float(np.convolve(stuffed, resampler.taps)[m * down])
        worst = max(worst, abs(value))
        out = np.frombuffer(resampler.process(x.tobytes()), dtype="<i2")
        assert np.array_equal(out, _direct_form(resampler, x)[: out.size])
        resampler.reset()
    assert 32767 - worst / peak < worst <= 32767


@pytest.mark.parametrize("factory", ALL_PRESETS)
@pytest.mark.parametrize("polarity", [1, -1])
def test_a_loud_frame_is_still_clamped_in_the_frames_after_it(
    factory: Factory, polarity: int
) -> None:
    """Outputs owed from the end of a loud 20 ms frame come out with the next frame's."""
    resampler = factory()
    frame = resampler.in_rate // 50
    square = np.where(np.arange(frame) // 5 % 2, 32767, -32768) * polarity
    x = np.concatenate((np.zeros(frame), np.clip(square, -32768, 32767), np.zeros(3 * frame)))
    x = x.astype(np.int16)
    out = b"".join(resampler.process(x[i : i + frame].tobytes()) for i in range(0, x.size, frame))
    assert np.array_equal(np.frombuffer(out, dtype="<i2"), _direct_form(resampler, x))


@pytest.mark.parametrize("factory", ALL_PRESETS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_clamping_follows_loud_chunks_however_the_stream_is_cut(
    factory: Factory, data: st.DataObject
) -> None:
    """The clamps run only while samples of a chunk louder than ``quiet_peak`` are in the filter's
    window. Quiet noise at up to ``quiet_peak`` with full-scale square bursts (whose overshoot
    clips), cut at random: the output still equals the clipped direct form sample for sample."""
    resampler = factory()
    n = data.draw(st.integers(1, 3000), label="samples")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.integers(-resampler.quiet_peak, resampler.quiet_peak + 1, n)
    bursts = st.tuples(st.integers(0, n - 1), st.integers(1, 300))
    for start, length in data.draw(st.lists(bursts, max_size=4), label="bursts"):
        span = x[start : start + length]
        span[:] = np.where(np.arange(span.size) // 7 % 2, 32767, -32768)
    pcm = x.astype("<i2").tobytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(pcm)), max_size=12), label="cuts"))
    out = b"".join(
        resampler.process(pcm[a:b]) for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True)
    )
    reference = _direct_form(resampler, x.astype(np.int16))
    assert np.array_equal(np.frombuffer(out, dtype="<i2"), reference[: len(out) // 2])


@pytest.mark.parametrize("factory", PRESETS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_output_is_identical_however_the_input_is_chunked(
    factory: Factory, data: st.DataObject
) -> None:
    pcm = _noise(data.draw(st.integers(0, 2500), label="samples"), seed=3).tobytes()
    pcm += data.draw(st.sampled_from([b"", b"\x01"]), label="dangling byte")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(pcm)), max_size=12), label="cuts"))
    reference = _whole_stream(factory(), pcm)
    chunked = factory()
    pieces = [chunked.process(pcm[a:b]) for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True)]
    assert b"".join(pieces) + chunked.flush() == reference


@pytest.mark.parametrize("factory", PRESETS)
@settings(max_examples=30, deadline=None)
@given(samples=st.integers(0, 1000), chunk=st.integers(1, 333))
def test_output_length_rule(factory: Factory, samples: int, chunk: int) -> None:
    """process: up*floor(n/down) samples (causal); with flush: ceil(n*up/down) + delay_samples."""
    resampler = factory()
    pcm = _noise(samples, seed=4).tobytes()
    out = b"".join(resampler.process(pcm[i : i + 2 * chunk]) for i in range(0, len(pcm), 2 * chunk))
    assert len(out) // 2 == resampler.up * (samples // resampler.down)
    tail = resampler.flush()
    up, down = resampler.up, resampler.down
    expected = math.ceil(samples * up / down) + resampler.delay_samples if samples else 0
    assert (len(out) + len(tail)) // 2 == expected


@pytest.mark.parametrize("factory", PRESETS)
def test_reset_forgets_everything(factory: Factory) -> None:
    used = factory()
    # Long enough that the internal buffer has been compacted (history moved to its start), plus a
    # partial block and a dangling odd byte.
    old = _noise(9001, seed=5).tobytes() + b"\x7f"
    for i in range(0, len(old), 640):
        used.process(old[i : i + 640])
    used.reset()
    fresh = factory()
    pcm = _noise(3000, seed=6).tobytes()
    assert _whole_stream(used, pcm) == _whole_stream(fresh, pcm)


@pytest.mark.parametrize("factory", PRESETS)
def test_flush_resets_and_empty_stream_flushes_to_nothing(factory: Factory) -> None:
    resampler = factory()
    assert resampler.flush() == b""
    pcm = _noise(500, seed=7).tobytes()
    first = _whole_stream(resampler, pcm)
    assert _whole_stream(resampler, pcm) == first


def test_dangling_byte_waits_for_its_partner() -> None:
    split, whole = telephone_to_model(), telephone_to_model()
    assert split.process(b"\x34") == b""
    assert split.process(b"\x12") == whole.process(b"\x34\x12")  # sample 0x1234


# --- frequency response --------------------------------------------------------------------------


@pytest.mark.parametrize("factory", PRESETS)
def test_passband_is_flat(factory: Factory) -> None:
    resampler = factory()
    top = PASSBAND_TOP_HZ[factory]
    freqs = [300.0, 500.0, 1000.0, 2000.0, 3000.0, 3400.0, top]
    gains = []
    for freq in freqs:
        x = analysis.sine_pcm16(freq, 0.3, resampler.in_rate, -20.0)
        resampler.reset()
        gains.append(
            analysis.tone_dbfs(_steady_output(resampler, x), resampler.out_rate, freq) + 20
        )
    assert max(abs(g) for g in gains) < 0.05, gains  # spec ±0.5 dB; measured within ±0.003 dB


@pytest.mark.parametrize(
    ("factory", "tone_hz", "image_hz"),
    [
        # 8k -> 16k: the zero-stuffed spectrum images f at 8k - f.
        (telephone_to_model, 3000.0, 5000.0),
        (telephone_to_model, 1000.0, 7000.0),
        (telephone_to_model, 3400.0, 4600.0),
        (telephone_to_model, 300.0, 7700.0),
        # 24k -> 8k: every tone >= 4 kHz folds into the telephone band.
        (model_to_telephone, 4500.0, 3500.0),
        (model_to_telephone, 6000.0, 2000.0),
        (model_to_telephone, 9000.0, 1000.0),
        (model_to_telephone, 11000.0, 3000.0),
        (model_to_telephone, 4100.0, 3900.0),
        # 24k -> 16k: tones above 8 kHz fold to 16k - f.
        (model_to_wideband, 8200.0, 7800.0),
        (model_to_wideband, 9000.0, 7000.0),
        (model_to_wideband, 11000.0, 5000.0),
    ],
)
def test_images_and_aliases_are_60_db_down(
    factory: Factory, tone_hz: float, image_hz: float
) -> None:
    resampler = factory()
    out = _steady_output(resampler, analysis.sine_pcm16(tone_hz, 0.5, resampler.in_rate, 0.0))
    assert analysis.tone_dbfs(out, resampler.out_rate, image_hz) < -60.0
    if tone_hz < resampler.out_rate / 2:  # upsampling: the tone itself must survive at 0 dBFS
        assert analysis.tone_dbfs(out, resampler.out_rate, tone_hz) == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("factory", PRESETS)
def test_whole_stopband_is_60_db_down_with_margin(factory: Factory) -> None:
    """Between the measured tones: the prototype's response over every frequency that aliases or
    images into the output band (at or above the lower Nyquist + passband mirror)."""
    resampler = factory()
    high_rate = resampler.in_rate * resampler.up
    nyquist = min(resampler.in_rate, resampler.out_rate) / 2
    top = PASSBAND_TOP_HZ[factory]
    stop_from = 2 * nyquist - top if resampler.up > resampler.down else nyquist
    response = np.abs(np.fft.rfft(resampler.taps / resampler.up, 1 << 17))
    freqs = np.fft.rfftfreq(1 << 17, 1 / high_rate)
    assert 20 * np.log10(response[freqs >= stop_from].max()) < -70.0


@pytest.mark.parametrize("factory", PRESETS)
def test_frequency_and_level_survive(factory: Factory) -> None:
    resampler = factory()
    out = _steady_output(resampler, analysis.sine_pcm16(1234.5, 0.5, resampler.in_rate, -6.0))
    assert analysis.dominant_frequency(out, resampler.out_rate) == pytest.approx(1234.5, abs=0.2)
    assert analysis.rms_dbfs(out) == pytest.approx(-6.0, abs=0.02)


# --- delay ---------------------------------------------------------------------------------------


def _bandlimited(rate: int, seconds: float, max_hz: float, seed: int) -> npt.NDArray[np.float64]:
    """One period of a periodic band-limited noise; the same waveform at any rate > 2*max_hz."""
    period = round(seconds * 1000)  # bins spaced 1/seconds Hz, identical for every rate
    rng = np.random.default_rng(seed)
    bins = int(max_hz * seconds)
    spectrum = np.zeros(rate * period // 1000 // 2 + 1, dtype=complex)
    spectrum[1:bins] = rng.normal(size=bins - 1) + 1j * rng.normal(size=bins - 1)
    wave = np.fft.irfft(spectrum, rate * period // 1000) * rate
    return np.asarray(wave / np.abs(wave).max() * 0.5)


@pytest.mark.parametrize("factory", PRESETS)
def test_delay_ms_matches_cross_correlation(factory: Factory) -> None:
    resampler = factory()
    source = _bandlimited(resampler.in_rate, 0.5, 3000.0, seed=8)
    reference = _bandlimited(resampler.out_rate, 0.5, 3000.0, seed=8)
    out = resampler.process((source * 32767).astype("<i2").tobytes())
    measured = analysis.estimate_delay_ms(reference, out, resampler.out_rate, max_delay_ms=20)
    assert measured == pytest.approx(resampler.delay_ms, abs=0.2)
    assert resampler.delay_ms <= DELAY_BUDGET_MS[factory]
    assert resampler.delay_ms == pytest.approx(1000 * resampler.delay_samples / resampler.out_rate)


def test_rejects_impossible_parameters() -> None:
    with pytest.raises(ValueError, match="passband"):
        StreamResampler(24000, 8000, passband_hz=4500, stopband_hz=5000, attenuation_db=60)
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 8000, passband_hz=3000, stopband_hz=4000, attenuation_db=60)
    with pytest.raises(ValueError, match="Nyquist"):
        StreamResampler(8000, 16000, passband_hz=3000, stopband_hz=9000, attenuation_db=60)
    with pytest.raises(ValueError, match="160/147"):
        StreamResampler(44100, 48000, passband_hz=3000, stopband_hz=4000, attenuation_db=60)


def test_the_engine_fixture_runs_the_engine_it_names(engine: str) -> None:
    assert telephone_to_model().compiled is (engine == "compiled")
