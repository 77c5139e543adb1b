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
import base64
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.call.lane import AVAILABLE, CallerLane
from gateway.live.machine import Journal, Sent, SessionMachine
from gateway.mediaplane import py_data_frame
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


# ------------------------------------------------------------------ the lane's own contract
#
# The lane against plain objects standing where the model's socket stands (its websocket, its
# protocol, its transport), as websockets' own protocol tests stand plain bytes where the
# network is: what it writes, when it declines, and what it hands over when it settles.

STREAM = b"MZ0123"
PREFIX, SUFFIX = b'{"realtimeInput":{"audio":{"data":"', b'"}}}'
OPEN = object()


def _message(payload: bytes, stream: bytes = STREAM) -> bytes:
    encoded = base64.b64encode(payload)
    return b'{"event":"media","streamSid":"' + stream + b'","media":{"payload":"' + encoded + b'"}}'


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.fail = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise ConnectionResetError("gone")
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True


class _Protocol:
    def __init__(self) -> None:
        self.state: object = OPEN
        self.writes: list[bytes] = []
        self.extensions: list[object] = []
        self.expect_continuation_frame = False


class _Ws:
    def __init__(self) -> None:
        self.paused = False
        self.send_in_progress: object = None


def _uplink_step(codes: bytes) -> tuple[bytes, bool]:
    """An uplink's step in miniature: four bytes out per code, voiced above 0x80."""
    return codes * 4, codes[0] > 0x80


class _Rig:
    """A lane over plain objects, with everything it hands to Python recorded."""

    def __init__(self, *, admitted_s: float = 0.0, allowance_s: float = 1.0) -> None:
        self.transport, self.protocol, self.ws = _Transport(), _Protocol(), _Ws()
        self.fallen_back: list[bytes] = []
        self.bridge: list[tuple[int, float, float, float]] = []
        self.journal: list[tuple[int, int, list[bytes], list[bool], float]] = []
        self.failed = 0
        self.reloads = 0
        self.available = True
        self.admitted_s = admitted_s
        self.target = (
            self.ws, self.protocol, self.transport, OPEN, PREFIX, SUFFIX, True,
            lambda *a: self.journal.append(a), self._failed,
        )  # fmt: skip
        self.lane = CallerLane(
            self._fallback, self._reload, lambda *a: self.bridge.append(a), b"streamSid",
            STREAM, 1000, 8000.0, time.monotonic() - 10.0, allowance_s,
        )  # fmt: skip
        self.lane.waiting = True

    def _fallback(self, raw: bytes) -> bool:
        self.fallen_back.append(raw)
        return False

    def _failed(self) -> None:
        self.failed += 1

    def _reload(self) -> tuple[Any, ...] | None:
        self.reloads += 1
        if not self.available:
            return None
        return self.admitted_s, _uplink_step, 3, 7, self.target

    def payloads(self) -> list[bytes]:
        """What each written frame carried, unmasked, between the prefix and the suffix."""
        out = []
        for frame in self.transport.written:
            cut = py_data_frame(frame, 0, -1, True)
            assert isinstance(cut, tuple) and cut[0] == 1 and cut[2] == len(frame)
            text = cut[1]
            assert text.startswith(PREFIX) and text.endswith(SUFFIX)
            out.append(base64.urlsafe_b64decode(text[len(PREFIX) : -len(SUFFIX)]))
        return out


@needs_lane
def test_a_taken_frame_is_the_model_frame_the_python_path_writes_and_is_settled_whole() -> None:
    rig = _Rig()
    frames = [bytes([0x81 + i]) * 160 for i in range(3)]
    for frame in frames:
        assert rig.lane.take(_message(frame)) is True
    assert rig.fallen_back == [] and rig.reloads == 1
    # The uplink's step (here codes x 4) went out as URL-safe base64 in a masked text frame.
    assert rig.payloads() == [f * 4 for f in frames]
    assert rig.lane.pending == 3 and rig.bridge == [] and rig.journal == []
    rig.lane.settle()
    ((count, admitted_s, last_at, last_loud_at),) = rig.bridge
    assert count == 3 and admitted_s == pytest.approx(3 * 160 / 8000)
    assert last_at == last_loud_at > 0  # every frame was voiced (its first code > 0x80)
    ((generation, first, pcm, voiced, voice_at),) = rig.journal
    assert (generation, first, pcm, voiced, voice_at) == (
        3,
        7,
        [f * 4 for f in frames],
        [True] * 3,
        last_loud_at,
    )
    assert not rig.lane.ready and rig.lane.pending == 0
    assert rig.lane.take(_message(frames[0])) is True
    assert rig.reloads == 2  # asked again after the settle


@needs_lane
@pytest.mark.parametrize(
    "spoil",
    [
        lambda rig: setattr(rig.lane, "waiting", False),
        lambda rig: setattr(rig.ws, "paused", True),
        lambda rig: setattr(rig.ws, "send_in_progress", object()),
        lambda rig: setattr(rig.transport, "closing", True),
        lambda rig: setattr(rig.protocol, "state", object()),
        lambda rig: rig.protocol.writes.append(b"ping"),
        lambda rig: rig.protocol.extensions.append(object()),
        lambda rig: setattr(rig.protocol, "expect_continuation_frame", True),
        lambda rig: setattr(rig, "available", False),
    ],
    ids=[
        "caller-loop-busy", "paused", "send-in-progress", "closing", "not-open", "writes-waiting",
        "extension", "fragmented", "no-session",
    ],
)  # fmt: skip
def test_a_frame_the_python_path_must_see_goes_to_it_untouched(spoil: Any) -> None:
    rig = _Rig()
    spoil(rig)
    message = _message(b"\x90" * 160)
    assert rig.lane.take(message) is False  # the fallback's answer
    assert rig.fallen_back == [message]
    assert rig.transport.written == [] and rig.lane.pending == 0
    rig.lane.settle()
    assert rig.bridge == [] and rig.journal == []


@needs_lane
@pytest.mark.parametrize(
    "message",
    [
        _message(b"\x90" * 160, stream=b"MZother"),  # another stream
        b'{"event":"mark","streamSid":"MZ0123","mark":{"name":"m"}}',
        b'{"event":"media","media":{"payload":"kJCQ"},"extra":1}',  # a number: full parse
        b"x" * 1001,  # over the size the bridge takes
    ],
)
def test_messages_of_another_shape_go_to_the_python_path(message: bytes) -> None:
    rig = _Rig()
    assert rig.lane.take(message) is False
    assert rig.fallen_back == [message] and rig.transport.written == []


@needs_lane
def test_audio_ahead_of_real_time_goes_to_the_python_path_which_drops_it() -> None:
    rig = _Rig(admitted_s=10.0, allowance_s=0.01)  # 10 s elapsed, 10 s admitted already
    assert rig.lane.take(_message(b"\x90" * 160)) is False
    assert len(rig.fallen_back) == 1 and rig.transport.written == []


@needs_lane
def test_a_failed_write_aborts_settles_then_reports_the_loss() -> None:
    rig = _Rig()
    assert rig.lane.take(_message(b"\x90" * 160)) is True
    rig.transport.fail = True
    assert rig.lane.take(_message(b"\x91" * 160)) is True  # taken: the session handles the loss
    assert rig.transport.aborted and rig.failed == 1
    ((_, first, pcm, _, _),) = rig.journal  # both frames journalled before the report, which
    assert first == 7 and len(pcm) == 2  # then marks the last one unsent
    assert rig.lane.pending == 0 and not rig.lane.ready


@needs_lane
def test_the_lane_settles_by_itself_every_second_of_frames() -> None:
    rig = _Rig()
    for _ in range(120):
        assert rig.lane.take(_message(b"\x90" * 160)) is True
    assert [len(j[2]) for j in rig.journal] == [50, 50]
    assert [j[1] for j in rig.journal] == [7, 7]  # each reload gave index 7 again (the rig)
    assert rig.lane.pending == 20


@needs_lane
def test_a_closed_lane_settles_then_declines_everything() -> None:
    rig = _Rig()
    assert rig.lane.take(_message(b"\x90" * 160)) is True
    rig.lane.close()
    assert len(rig.journal) == 1
    assert rig.lane.take(_message(b"\x90" * 160)) is False
    rig.lane.settle()  # harmless
