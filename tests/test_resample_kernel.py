"""The compiled FIR (gateway/audio/_polyphase.c) against the numpy form: the same bytes.

test_resample.py runs every behaviour on both; this file drives the two side by side through
the same random streams (cut anywhere, odd bytes, bursts that clip, flushes and resets), both
vector builds against each other, and the kernel's own argument checks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audio import resample
from gateway.audio.resample import StreamResampler, telephone_to_model
from tests.test_resample import ALL_PRESETS, require_compiled

Factory = Callable[..., StreamResampler]


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if not resample.COMPILED:
        require_compiled()


def _twin(factory: Factory) -> tuple[StreamResampler, StreamResampler]:
    compiled, numpy_form = factory(compiled=True), factory(compiled=False)
    assert compiled.compiled and not numpy_form.compiled
    return compiled, numpy_form


def _stream(data: st.DataObject, peak: int) -> bytes:
    """Noise up to ``peak`` with full-scale square bursts (their overshoot clips), an odd byte
    count now and then."""
    n = data.draw(st.integers(0, 4000), label="samples")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.integers(-peak, peak + 1, n)
    bursts = st.tuples(st.integers(0, max(n - 1, 0)), st.integers(1, 400))
    for start, length in data.draw(st.lists(bursts, max_size=3), label="bursts"):
        span = x[start : start + length]
        span[:] = np.where(np.arange(span.size) // 5 % 2, 32767, -32768)
    return x.astype("<i2").tobytes() + data.draw(st.sampled_from([b"", b"\x9c"]), label="odd")


@pytest.mark.parametrize("factory", ALL_PRESETS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_and_numpy_give_the_same_bytes(factory: Factory, data: st.DataObject) -> None:
    """Both FIRs fed the same streams, cut at the same random byte offsets, with a flush or a
    reset between streams (the carrier's barge-in and call end): every result is identical."""
    compiled, numpy_form = _twin(factory)
    for _ in range(data.draw(st.integers(1, 3), label="streams")):
        pcm = _stream(data, compiled.quiet_peak)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(pcm)), max_size=10), label="cuts"))
        for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True):
            assert compiled.process(pcm[a:b]) == numpy_form.process(pcm[a:b])
        if data.draw(st.booleans(), label="flush, else reset"):
            assert compiled.flush() == numpy_form.flush()
        else:
            compiled.reset()
            numpy_form.reset()


@pytest.mark.parametrize("factory", ALL_PRESETS)
def test_a_long_stream_in_one_chunk_then_frames(factory: Factory) -> None:
    """A chunk far larger than the buffer (it grows), then 20 ms frames (it compacts)."""
    compiled, numpy_form = _twin(factory)
    rng = np.random.default_rng(11)
    big = rng.integers(-32768, 32768, 50_000).astype("<i2").tobytes()
    assert compiled.process(big) == numpy_form.process(big)
    frame = 2 * compiled.in_rate // 50
    for i in range(0, len(big), frame):
        assert compiled.process(big[i : i + frame]) == numpy_form.process(big[i : i + frame])
    assert compiled.flush() == numpy_form.flush()


@pytest.mark.parametrize("factory", ALL_PRESETS)
def test_both_vector_builds_agree(factory: Factory) -> None:
    """The 2-double build (SSE2, NEON) and, where the CPU has AVX2, the 4-double one."""
    from gateway.audio import _polyphase

    design = factory()
    taps = design.taps.tobytes()
    narrow = _polyphase.Kernel(taps, design.up, design.down, lanes=2)
    kernels = [narrow]
    if "AVX2" in _polyphase.VECTOR:
        kernels.append(_polyphase.Kernel(taps, design.up, design.down, lanes=4))
    reference = factory(compiled=False)
    rng = np.random.default_rng(12)
    pcm = rng.integers(-32768, 32768, 30_000).astype("<i2").tobytes()
    for i in range(0, len(pcm), 1235):  # odd byte counts: samples split across chunks
        expected = reference.process(pcm[i : i + 1235])
        assert all(k.process(pcm[i : i + 1235]) == expected for k in kernels)


def test_the_kernel_takes_any_bytes_like_object() -> None:
    design = telephone_to_model()
    pcm = np.arange(-160, 160, dtype="<i2").tobytes()
    results = {
        telephone_to_model().process(chunk) for chunk in (pcm, bytearray(pcm), memoryview(pcm))
    }
    assert len(results) == 1
    assert len(results.pop()) == 2 * 2 * 320
    assert design.compiled


def test_the_kernel_rejects_bad_arguments() -> None:
    from gateway.audio import _polyphase

    taps = telephone_to_model().taps.tobytes()
    with pytest.raises(ValueError, match="float64"):
        _polyphase.Kernel(taps[:-1], 2, 1)
    with pytest.raises(ValueError, match="up and down"):
        _polyphase.Kernel(taps, 0, 1)
    with pytest.raises(ValueError, match="up and down"):
        _polyphase.Kernel(b"", 2, 1)
    with pytest.raises(ValueError, match="3-lane"):
        _polyphase.Kernel(taps, 2, 1, lanes=3)
    with pytest.raises(TypeError):
        _polyphase.Kernel(taps, 2, 1).process("text")  # type: ignore[arg-type]
    unset = _polyphase.Kernel.__new__(_polyphase.Kernel)
    with pytest.raises(RuntimeError, match="__init__"):
        unset.process(b"\x00\x00")
    unset.reset()  # harmless


def test_compiled_true_is_refused_when_the_kernel_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resample, "_Kernel", None)
    with pytest.raises(RuntimeError, match="not built"):
        telephone_to_model(compiled=True)
    assert not telephone_to_model().compiled  # the default falls back to numpy
