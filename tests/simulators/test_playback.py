"""PlaybackBuffer: Twilio's outbound buffer model, checked with plain bytes and hypothesis."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsim.callers.playback import ULAW_SILENCE, PlaybackBuffer

SILENCE = bytes([ULAW_SILENCE])


def test_plays_in_order_and_pads_with_ulaw_silence() -> None:
    buf = PlaybackBuffer()
    buf.push_media(b"\x01\x02\x03")
    buf.push_media(b"\x04\x05")
    assert buf.buffered_bytes == 5
    assert buf.play(4) == (b"\x01\x02\x03\x04", [])
    assert buf.play(3) == (b"\x05" + SILENCE * 2, [])
    assert buf.play(2) == (SILENCE * 2, [])
    assert buf.buffered_bytes == 0


def test_mark_is_echoed_on_the_tick_after_its_audio_played() -> None:
    buf = PlaybackBuffer()
    buf.push_media(b"\x01" * 200)
    buf.push_mark("a")
    buf.push_media(b"\x02" * 100)
    assert buf.pending_marks == ["a"]
    assert buf.play(160) == (b"\x01" * 160, [])
    # The last 40 bytes before "a" go out in this tick: not yet heard in full.
    assert buf.play(160) == (b"\x01" * 40 + b"\x02" * 100 + SILENCE * 20, [])
    assert buf.play(160) == (SILENCE * 160, ["a"])
    assert buf.pending_marks == []


def test_mark_on_a_tick_boundary() -> None:
    buf = PlaybackBuffer()
    buf.push_media(b"\x01" * 160)
    buf.push_mark("a")
    assert buf.play(160)[1] == []
    assert buf.play(160)[1] == ["a"]


def test_mark_with_nothing_buffered_is_echoed_at_the_next_play() -> None:
    buf = PlaybackBuffer()
    buf.push_mark("first")
    buf.push_mark("second")
    assert buf.play(160) == (SILENCE * 160, ["first", "second"])
    assert buf.play(160) == (SILENCE * 160, [])


def test_clear_drops_audio_and_returns_every_unechoed_mark_in_order() -> None:
    buf = PlaybackBuffer()
    buf.push_media(b"\x01" * 100)
    buf.push_mark("a")
    buf.push_media(b"\x02" * 1000)
    buf.push_mark("b")
    buf.push_mark("c")
    buf.play(160)
    assert buf.clear() == ["a", "b", "c"]
    assert buf.buffered_bytes == 0
    assert buf.pending_marks == []
    assert buf.play(160) == (SILENCE * 160, [])
    # After a clear, the stream continues where it was; new marks behave normally.
    buf.push_media(b"\x03" * 10)
    buf.push_mark("d")
    assert buf.play(160) == (b"\x03" * 10 + SILENCE * 150, [])
    assert buf.play(160) == (SILENCE * 160, ["d"])


def test_take_played_marks_separates_played_from_flushed() -> None:
    buf = PlaybackBuffer()
    buf.push_media(b"\x01" * 160)
    buf.push_mark("played")
    buf.push_media(b"\x02" * 160)
    buf.push_mark("flushed")
    buf.play(160)
    assert buf.take_played_marks() == ["played"]
    assert buf.clear() == ["flushed"]


def test_capacity_discards_excess_like_twilio_31931() -> None:
    buf = PlaybackBuffer(capacity_bytes=300)
    assert buf.push_media(b"\x01" * 200) == 200
    assert buf.push_media(b"\x02" * 200) == 100
    assert buf.push_media(b"\x03") == 0
    assert buf.discarded_bytes == 101
    assert buf.play(400)[0] == b"\x01" * 200 + b"\x02" * 100 + SILENCE * 100
    assert buf.push_media(b"\x04" * 50) == 50


def test_play_zero_and_negative() -> None:
    buf = PlaybackBuffer()
    buf.push_mark("m")
    assert buf.play(0) == (b"", ["m"])
    with pytest.raises(ValueError, match="n_bytes"):
        buf.play(-1)
    with pytest.raises(ValueError, match="capacity"):
        PlaybackBuffer(capacity_bytes=-1)


# --- property tests -----------------------------------------------------------------------------

# Pushed audio never contains the silence byte, so fill is distinguishable from real audio.
audio_bytes = st.binary(min_size=0, max_size=400).map(lambda b: b.replace(SILENCE, b"\x7f"))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("media"), audio_bytes),
        st.tuples(st.just("mark"), st.none()),
        st.tuples(st.just("clear"), st.none()),
        st.tuples(st.just("play"), st.integers(min_value=0, max_value=500)),
    ),
    max_size=60,
)


@dataclass
class Trace:
    """Everything observed while running ops, plus an independent reference stream."""

    pushed: bytearray = field(default_factory=bytearray)  # all audio, in push order
    kept: bytearray = field(default_factory=bytearray)  # audio that was not cleared
    played: bytearray = field(default_factory=bytearray)  # real (non-fill) output
    mark_offset: dict[str, int] = field(default_factory=dict)  # name -> offset in `pushed`
    echoed: list[str] = field(default_factory=list)
    played_total: int = 0  # bytes output by play (incl. fill) before the current call


def run_ops(operations: list[tuple[str, object]]) -> Trace:
    buf = PlaybackBuffer()
    trace = Trace()
    head = 0  # offset in `pushed` of the first byte neither played nor cleared
    marks = 0
    for op, arg in operations:
        if op == "media":
            assert isinstance(arg, bytes)
            assert buf.push_media(arg) == len(arg)
            trace.pushed += arg
        elif op == "mark":
            name = f"m{marks}"
            marks += 1
            buf.push_mark(name)
            trace.mark_offset[name] = len(trace.pushed)
        elif op == "clear":
            returned = buf.clear()
            # Exactly the marks not yet echoed, in push order.
            assert returned == [m for m in trace.mark_offset if m not in trace.echoed]
            trace.echoed += returned
            head = len(trace.pushed)
        else:
            assert isinstance(arg, int)
            before = buf.buffered_bytes
            audio, returned = buf.play(arg)
            assert len(audio) == arg
            real = min(arg, before)
            assert audio[real:] == SILENCE * (arg - real)
            assert SILENCE not in audio[:real]
            # Echoed only once the audio before the mark was output by an *earlier* call.
            for name in returned:
                assert trace.mark_offset[name] <= head
            trace.echoed += returned
            trace.played += audio[:real]
            trace.kept += trace.pushed[head : head + real]
            head += real
        assert buf.buffered_bytes == len(trace.pushed) - head
        assert buf.pending_marks == [m for m in trace.mark_offset if m not in trace.echoed]
    return trace


@settings(max_examples=300, deadline=None)
@given(ops)
def test_conservation_order_and_marks(operations: list[tuple[str, object]]) -> None:
    trace = run_ops(operations)
    # Output is exactly the pushed stream minus cleared spans, in order.
    assert trace.played == trace.kept
    # Each mark echoed at most once, in push order.
    assert len(set(trace.echoed)) == len(trace.echoed)
    assert trace.echoed == [m for m in trace.mark_offset if m in trace.echoed]


@settings(max_examples=200, deadline=None)
@given(ops)
def test_every_mark_is_eventually_echoed(operations: list[tuple[str, object]]) -> None:
    trace = run_ops([*operations, ("play", 10**6), ("play", 0)])
    assert trace.echoed == list(trace.mark_offset)
