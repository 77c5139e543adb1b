"""The compiled caller lane (gateway/call/lane.py) leaves what the bridge's own path leaves.

Two levels. The session machine's side is pure: frames absorbed in batches, as the lane
settles them, must journal and number exactly as frames recorded one by one (hypothesis drives
both with the same frames, text turns, handles and bounds). The whole lane is then run through
real calls (simulated Twilio caller → real gateway → real google-genai SDK → Live simulator),
once with it and once without (``COMPILED_LANE=false``): the model hears the same bytes, the
counts agree, and a resume after a drop still replays the caller's whole sentence from the
journal the lane filled.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.call.lane import AVAILABLE
from gateway.live.machine import Journal, Sent, SessionMachine
from tests.conftest import StructuredLogs
from tests.harness import agents, running

FRAME = 640  # 20 ms of PCM16 at 16 kHz

# ------------------------------------------------------------------ the journal, batched

#: One step of a journal's life: frames sent on the current connection (sizes and voicing), a
#: text turn sent, a handle consuming the first ``n`` messages sent, or a new connection.
_frames = st.lists(
    st.tuples(st.sampled_from([FRAME, FRAME, FRAME, 320, 160]), st.booleans()),
    min_size=1,
    max_size=60,
)
_step = st.one_of(
    st.tuples(st.just("frames"), _frames),
    st.tuples(st.just("text"), st.none()),
    st.tuples(st.just("handle"), st.integers(min_value=0, max_value=80)),
    st.tuples(st.just("reconnect"), st.none()),
    st.tuples(st.just("handle_all"), st.none()),
)


def _journal_state(j: Journal) -> list[Any]:
    return [
        [(e.kind, e.pcm, e.voiced, e.carried_by, e.turns) for e in j.entries],
        j.audio_ms,
        j.dropped_ms,
        j.overflowed,
    ]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(_step, max_size=12),
    limit_ms=st.sampled_from([200.0, 700.0, 15_000.0]),
    split=st.integers(min_value=1, max_value=60),
)
def test_a_batch_of_frames_journals_as_the_frames_one_by_one(
    steps: list[tuple[str, Any]], limit_ms: float, split: int
) -> None:
    """``add_sent_run`` of frames in batches of any size (the lane settles whenever something
    reads the journal) gives the journal ``add_sent_audio`` gave frame by frame: the same
    entries, numbering, silence trim, bound and counts."""
    one, batched = Journal(limit_ms), Journal(limit_ms)
    generation, index, counter = 1, 1, 0
    for kind, arg in steps:
        if kind == "frames":
            frames = []
            for size, loud in arg:
                counter += 1
                frames.append((counter.to_bytes(4, "big") * (size // 4), loud))
            for i, (pcm, loud) in enumerate(frames):
                one.add_sent_audio(pcm, loud, generation, index + i)
            for at in range(0, len(frames), split):
                part = frames[at : at + split]
                batched.add_sent_run(
                    [p for p, _ in part], [v for _, v in part], generation, index + at
                )
            index += len(frames)
        elif kind == "text":
            for j in (one, batched):
                j.add(Sent("turns", turns=("a note",), carried_by=(generation, index)))
            index += 1
        elif kind == "handle":
            for j in (one, batched):
                j.forget_sent((generation, arg))
        elif kind == "handle_all":
            for j in (one, batched):
                j.forget_sent()
        else:
            generation, index = generation + 1, 1
        assert _journal_state(batched) == _journal_state(one)


def test_absorbed_frames_are_numbered_and_voiced_as_recorded_ones() -> None:
    """The machine's side of a settle: the numbering goes on after the absorbed frames, and
    their voice counts as caller speech (a goAway waits for it, as for a recorded frame)."""
    recorded, absorbed = SessionMachine(), SessionMachine()
    for m in (recorded, absorbed):
        m.start()
        m.opened(resumed=False, now=0.0)
        m.opening_sent()
    frames = [b"\x10" * FRAME, bytes(FRAME), b"\x10" * FRAME]
    voiced = [True, False, True]
    times = [1.0, 2.0, 3.0]
    indexes = [
        recorded.record_audio(p, v, now=t) for p, v, t in zip(frames, voiced, times, strict=True)
    ]
    absorbed.absorb_audio(absorbed.generation, absorbed.next_index, frames, voiced, 3.0)
    assert indexes == [1, 2, 3]
    assert absorbed.next_index == recorded.next_index == 4
    assert _journal_state(absorbed.journal) == _journal_state(recorded.journal)
    # The caller spoke at 3.0: with a handle, a goAway waits out the voice hangover on both.
    moves = []
    for m in (recorded, absorbed):
        m.handle_updated(m.generation, "h1", consumed_index=None, now=3.05)
        moves.append((m.go_away(m.generation, 30.0, now=3.1), m.next_deadline()))
    assert moves[0] == moves[1]
    assert moves[0][0] is None and moves[0][1] is not None


def test_every_method_of_the_machine_settles_the_lane_first() -> None:
    """The hook runs before a method reads what the lane may have changed."""
    m = SessionMachine()
    calls: list[int] = []
    m.settle_hook = lambda: calls.append(m.next_index)
    m.start()
    m.opened(resumed=False, now=0.0)
    m.opening_sent()
    m.tick(1.0)
    m.handle_updated(m.generation, "h", consumed_index=None, now=1.0)
    m.model_output(m.generation)  # with every model message, and reads nothing of the lane's
    assert len(calls) == 5
    assert m.go_away(m.generation, 30.0, now=1.0) is None  # the model speaks: it waits
    assert m.next_deadline() is not None  # a goAway pending: it reads the caller's voice time
    assert len(calls) == 7


# ------------------------------------------------------------------ whole calls

needs_lane = pytest.mark.skipif(not AVAILABLE, reason="the media plane's C extension is not built")


async def _call(compiled_lane: bool) -> tuple[bytes, dict[str, Any]]:
    steps = [Step(on="caller", say="Hello there.", seconds=0.6)]
    async with running(steps=steps, compiled_lane=compiled_lane) as h:
        await h.call([Silence(0.3), Tone(300, 1.2), Silence(1.5)], linger_s=0.1)
        (conn,) = h.sim.connections
        (ended,) = h.named("call.ended")
        return bytes(conn.audio_in), ended


@needs_lane
async def test_the_model_hears_the_same_bytes_with_the_lane_as_without() -> None:
    heard_without, without = await _call(compiled_lane=False)
    heard_with, with_lane = await _call(compiled_lane=True)
    assert without["frames_in_lane"] == 0
    # All but the frames the bridge's own path takes (before the model's socket is ready,
    # and after each settle while the lane reloads nothing: it reloads at once).
    assert with_lane["frames_in_lane"] >= with_lane["frames_in"] - 10
    assert with_lane["frames_in"] == without["frames_in"]
    assert len(heard_with) == len(heard_without) > 0
    assert heard_with == heard_without


@needs_lane
async def test_a_drop_mid_sentence_is_replayed_from_the_journal_the_lane_filled(
    structured_logs: StructuredLogs,
) -> None:
    graph = agents(agent_triage={"greeting": "Greet the caller."})
    steps = [Step(on="text", say="hello", seconds=0.4)]
    async with running(steps=steps, graph=graph) as h:
        call = asyncio.create_task(
            h.call([Silence(1.5), Tone(300, 1.6), Silence(2.5)], linger_s=0.1)
        )
        await h.sim.wait_for(lambda: bool(h.sim.connections), timeout=5)
        await h.sim.wait_for(lambda: h.sim.connections[0].audio_in_seconds >= 2.3, timeout=5)
        await h.sim.close(1011, "internal error")
        await call
        conns = h.sim.connections
        (ended,) = h.named("call.ended")
        (replayed,) = structured_logs.events("live.replayed")
        session = h.sim.sessions[conns[1].session_id or 0]
        heard = [e.text for e in session.history if e.kind == "caller" and e.connection_index == 1]
    assert len(conns) == 2 and conns[1].resumed
    assert ended["frames_in_lane"] > 100  # the lane carried the call, before and after
    assert replayed["messages"] >= 40  # at least the 0.8 s of the sentence already sent
    (utterance,) = heard  # the whole 1.6 s sentence, not the 0.8 s after the drop
    assert float(re.search(r"\(([\d.]+) s\)", utterance).group(1)) >= 1.5  # type: ignore[union-attr]
