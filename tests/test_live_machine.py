"""The Live session's policy, driven with plain events and a fake clock (no sockets, no SDK)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.live.machine import (
    SILENT_LEAD_MS,
    Dial,
    End,
    Journal,
    Policy,
    Recover,
    Sent,
    SessionMachine,
)

FRAME = 640  # 20 ms of PCM16 at 16 kHz


def voice(n: int = 1) -> list[Sent]:
    return [Sent("audio", pcm=b"\x10" * FRAME, voiced=True) for _ in range(n)]


def silence(n: int = 1) -> list[Sent]:
    return [Sent("audio", pcm=bytes(FRAME)) for _ in range(n)]


def note(text: str = "DTMF 5") -> Sent:
    return Sent("turns", turns=(text,))


def open_call(m: SessionMachine | None = None, now: float = 0.0) -> SessionMachine:
    """A machine whose first connection is open, its opening sent."""
    m = m or SessionMachine()
    dial = m.start()
    assert dial == Dial(1, None, "first")
    opening = m.opened(resumed=False, now=now)
    assert opening.kind == "first"
    m.opening_sent()
    return m


def handle(m: SessionMachine, h: str = "h1", now: float = 0.0) -> Recover | None:
    return m.handle_updated(m.generation, h, consumed_index=None, now=now)


def send(m: SessionMachine, entries: list[Sent], now: float = 0.0) -> list[int | None]:
    return [m.record(e, now=now) for e in entries]


def reopen(m: SessionMachine, step: Recover | Dial | End | None, *, resumed: bool = True):  # type: ignore[no-untyped-def]
    dial = step.dial if isinstance(step, Recover) else step
    assert isinstance(dial, Dial), step
    opening = m.opened(resumed=resumed, now=1.0)
    return dial, opening


# ------------------------------------------------------------------ opening and sending


def test_messages_are_numbered_per_connection_and_queued_while_none_takes_them() -> None:
    m = open_call()
    assert send(m, voice(3)) == [1, 2, 3]  # 0 was the setup
    step = m.closed(1, 1011, "internal", now=1.0)
    assert isinstance(step, Recover) and step.dial.generation == 2
    assert send(m, voice(2)) == [None, None]  # queued for the next connection
    assert not m.accepting


def test_a_new_handle_empties_the_journal_of_what_was_sent() -> None:
    m = open_call()
    send(m, voice(5))
    handle(m)
    assert m.handle == "h1" and not m.journal.entries


def test_the_consumed_index_trims_only_what_the_server_included() -> None:
    m = open_call()
    entries = voice(5)
    send(m, entries)
    m.handle_updated(1, "h1", consumed_index=3, now=0.0)
    assert list(m.journal.entries) == entries[3:]


def test_a_drop_with_the_caller_mid_sentence_replays_everything_since_the_handle() -> None:
    m = open_call()
    send(m, voice(10))
    handle(m)
    sentence = voice(25)  # half a second of a sentence in progress
    send(m, sentence)
    step = m.closed(1, 1006, "connection lost", now=1.0)
    assert isinstance(step, Recover) and step.reason == "dropped"
    assert step.dial.handle == "h1"
    queued = voice(5)  # arrived during the reconnect
    send(m, queued)
    _dial, opening = reopen(m, step)
    assert opening.kind == "replay"
    assert list(opening.replay) == sentence + queued  # in order, nothing lost
    for entry in opening.replay:
        m.resend(entry)
    assert m.journal.unsent() == []
    m.opening_sent()
    assert [e.carried_by for e in opening.replay][:2] == [(2, 1), (2, 2)]


def test_text_turns_since_the_handle_are_replayed_in_place() -> None:
    m = open_call()
    handle(m)
    first, dtmf, second = voice(2), note(), voice(2)
    send(m, [*first, dtmf, *second])
    step = m.closed(1, 1011, "x", now=1.0)
    _, opening = reopen(m, step)
    assert list(opening.replay) == [*first, dtmf, *second]


def test_a_model_answer_under_way_is_recapped_not_replayed() -> None:
    m = open_call()
    handle(m)
    send(m, voice(20))
    m.model_output(1)  # it had begun answering
    step = m.closed(1, 1011, "x", now=1.0)
    queued = voice(3)
    send(m, queued)
    _, opening = reopen(m, step)
    assert opening.kind == "recap" and opening.cut_off
    assert m.journal.unsent() == queued  # still delivered after the recap
    assert m.journal.sent() == []


def test_a_finished_answer_since_the_handle_is_recapped_without_a_cut() -> None:
    m = open_call()
    handle(m)
    m.model_output(1)
    m.turn_boundary(1, now=0.5)
    step = m.closed(1, 1011, "x", now=1.0)
    _, opening = reopen(m, step)
    assert opening.kind == "recap" and not opening.cut_off


def test_audio_beyond_the_bound_is_recapped() -> None:
    m = open_call(SessionMachine(Policy(replay_limit_ms=200)))
    handle(m)
    send(m, voice(20))  # 400 ms > 200 ms
    assert m.journal.overflowed and m.journal.audio_ms <= 200
    step = m.closed(1, 1011, "x", now=1.0)
    _, opening = reopen(m, step)
    assert opening.kind == "recap"


def test_a_fresh_session_after_a_drop_is_reseeded_then_replayed() -> None:
    m = open_call()
    sentence = voice(3)
    send(m, sentence)  # no handle was ever issued
    step = m.closed(1, 1011, "x", now=1.0)
    assert isinstance(step, Recover) and step.dial.handle is None
    _, opening = reopen(m, step, resumed=False)
    assert opening.kind == "reseed" and list(opening.replay) == sentence


def test_a_fresh_session_after_an_answer_is_reseeded_from_the_whole_transcript() -> None:
    m = open_call()
    send(m, voice(3))
    m.model_output(1)
    step = m.closed(1, 1011, "x", now=1.0)
    _, opening = reopen(m, step, resumed=False)
    assert opening.kind == "reseed" and opening.replay == ()
    assert m.journal.entries == type(m.journal.entries)()


def test_silence_on_the_line_is_not_hoarded() -> None:
    journal = Journal(limit_ms=15_000)
    for entry in silence(500):  # 10 s of line noise, nothing voiced
        entry.carried_by = (1, 1)
        journal.add(entry)
    assert journal.audio_ms <= SILENT_LEAD_MS and not journal.overflowed
    journal.add(voice()[0])
    assert journal.audio_ms <= SILENT_LEAD_MS + 20


def test_a_send_failure_stops_sending_and_the_loss_is_handled_as_a_drop() -> None:
    m = open_call()
    m.send_failed(1)
    assert send(m, voice(1)) == [None]
    step = m.closed(1, None, "send failed", now=1.0)
    assert isinstance(step, Recover) and step.reason == "dropped"


def test_a_send_failure_after_the_opening_resumes_with_a_replay_not_a_new_greeting() -> None:
    m = open_call()
    handle(m)
    sentence = voice(25)
    send(m, sentence)
    m.send_failed(1)  # a write failed before the close was read
    step = m.closed(1, 1011, "internal error", now=1.0)
    assert isinstance(step, Recover) and step.dial.purpose == "dropped"
    _, opening = reopen(m, step)
    assert opening.kind == "replay" and list(opening.replay) == sentence


def test_a_send_failure_after_a_takeover_went_out_does_not_take_the_call_over_again() -> None:
    m = open_call()
    handle(m)
    m.handoff()
    assert m.opened(resumed=True, now=0.5).kind == "handoff"
    m.opening_sent()
    send(m, voice(5))
    m.send_failed(2)
    step = m.closed(2, None, "send failed", now=1.0)
    assert isinstance(step, Recover) and step.dial.purpose == "dropped"
    assert m.opened(resumed=True, now=1.1).kind == "replay"


# ------------------------------------------------------------------ goAway


def test_go_away_with_a_current_handle_and_an_idle_model_moves_at_once() -> None:
    m = open_call()
    send(m, silence(10))
    handle(m)
    send(m, silence(10))  # the line's noise does not make the handle stale
    step = m.go_away(1, 50.0, now=5.0)
    assert isinstance(step, Recover) and step.reason == "goaway"
    assert step.dial.handle == "h1" and step.dial.purpose == "goaway"


def test_go_away_while_the_model_speaks_waits_for_the_turn_and_its_handle() -> None:
    m = open_call()
    handle(m)
    m.model_output(1)
    assert m.go_away(1, 50.0, now=1.0) is None
    assert m.next_deadline() == pytest.approx(1.0 + 48.0)
    assert m.turn_boundary(1, now=2.0) is None  # the handle usually follows at once
    step = handle(m, "h2", now=2.01)
    assert isinstance(step, Recover) and step.dial.handle == "h2"


def test_go_away_moves_after_a_turn_boundary_when_no_handle_follows() -> None:
    m = open_call()
    handle(m)
    m.model_output(1)
    m.go_away(1, 50.0, now=1.0)
    m.turn_boundary(1, now=2.0)
    due = m.next_deadline()
    assert due == pytest.approx(2.0 + Policy().boundary_grace_s)
    assert m.tick(2.1) is None
    step = m.tick(due)  # type: ignore[arg-type]
    assert isinstance(step, Recover) and step.detail == "turn boundary"


def test_go_away_waits_while_the_caller_speaks() -> None:
    m = open_call()
    handle(m)
    send(m, voice(5), now=1.0)  # caller speaking: the handle is no longer current
    assert m.go_away(1, 50.0, now=1.0) is None
    assert m.tick(1.2) is None  # still within the voice hangover
    due = m.next_deadline()
    assert due is not None and due >= 1.0 + Policy().voice_hangover_s
    send(m, voice(1), now=1.3)  # keeps talking
    assert m.tick(1.5) is None
    step = m.tick(1.3 + Policy().voice_hangover_s + Policy().boundary_grace_s)
    assert isinstance(step, Recover)


def test_go_away_moves_at_the_deadline_minus_the_margin_whatever_happens() -> None:
    m = open_call()
    handle(m)
    m.model_output(1)  # an endless answer
    m.go_away(1, 10.0, now=0.0)
    assert m.tick(7.9) is None
    step = m.tick(8.0)
    assert isinstance(step, Recover) and step.detail == "deadline"


def test_every_new_connection_clears_the_old_ones_deadline() -> None:
    m = open_call()
    handle(m)
    m.model_output(1)
    m.go_away(1, 10.0, now=0.0)
    dial = m.handoff()
    assert dial.purpose == "handoff" and dial.handle == "h1"
    opening = m.opened(resumed=True, now=0.5)
    assert opening.kind == "handoff"
    m.opening_sent()
    assert m.next_deadline() is None
    assert m.tick(100.0) is None  # the new agent's connection is left alone


def test_events_of_a_replaced_connection_are_stale() -> None:
    m = open_call()
    handle(m)
    m.handoff()
    m.opened(resumed=True, now=0.5)
    m.opening_sent()
    assert not m.is_current(1) and m.is_current(2)
    assert m.closed(1, 1000, "old one closed", now=1.0) is None
    assert m.go_away(1, 5.0, now=1.0) is None and m.next_deadline() is None
    assert m.handle_updated(1, "late", consumed_index=None, now=1.0) is None
    assert m.handle == "h1"


# ------------------------------------------------------------------ failures


def test_a_connection_lost_before_its_opening_went_out_keeps_its_purpose() -> None:
    m = open_call()
    handle(m)
    m.handoff()
    m.opened(resumed=True, now=0.5)  # the takeover turns are being sent …
    step = m.closed(2, 1008, "aborted", now=0.6)  # … when the connection dies
    assert isinstance(step, Recover) and step.dial.purpose == "handoff"
    assert m.opened(resumed=True, now=0.8).kind == "handoff"


def test_mid_call_policy_closes_resume_then_reseed_then_end() -> None:
    m = open_call()
    handle(m)
    first = m.closed(1, 1008, "The operation was aborted", now=1.0)
    assert isinstance(first, Recover) and first.dial.handle == "h1"
    m.opened(resumed=True, now=1.1)
    m.opening_sent()
    second = m.closed(2, 1008, "again", now=2.0)
    assert isinstance(second, Recover) and second.dial.handle is None
    assert m.opened(resumed=False, now=2.1).kind == "reseed"
    m.opening_sent()
    third = m.closed(3, 1007, "and again", now=3.0)
    assert isinstance(third, End) and third.code == 1007
    assert m.phase == "ended"


def test_policy_closes_are_forgiven_after_a_stable_connection() -> None:
    m = open_call()
    handle(m)
    for n in range(4):
        at = 100.0 * (n + 1)  # each connection ran for 100 s before the close
        step = m.closed(m.generation, 1008, "aborted", now=at)
        assert isinstance(step, Recover) and step.dial.handle == "h1"
        m.opened(resumed=True, now=at)
        m.opening_sent()


@pytest.mark.parametrize("code", [1007, 1008])
def test_a_refused_first_setup_ends_at_once(code: int) -> None:
    m = SessionMachine()
    m.start()
    step = m.dial_failed(code, permanent=False)
    assert isinstance(step, End) and step.code == code


def test_a_refused_handle_becomes_a_fresh_session() -> None:
    m = open_call()
    handle(m)
    step = m.closed(1, 1011, "x", now=1.0)
    assert isinstance(step, Recover)
    retry = m.dial_failed(1008, permanent=False)
    assert isinstance(retry, Dial) and retry.handle is None and retry.delay_s == 0.0
    assert m.opened(resumed=False, now=1.2).kind == "reseed"


def test_transient_dial_failures_are_retried_with_backoff_then_given_up() -> None:
    m = open_call()
    m.closed(1, 1011, "x", now=1.0)
    delays = []
    step: Dial | End = m.dial_failed(1011, permanent=False)
    while isinstance(step, Dial):
        delays.append(step.delay_s)
        step = m.dial_failed(None, permanent=False)
    assert delays == [0.3, 1.0]
    assert isinstance(step, End)


def test_an_http_refusal_is_permanent() -> None:
    m = SessionMachine()
    m.start()
    assert isinstance(m.dial_failed(403, permanent=True), End)


def test_a_connection_that_keeps_dropping_ends_the_session() -> None:
    m = open_call()
    ends = []
    for n in range(7):
        step = m.closed(m.generation, 1011, "x", now=1.0 + n)
        if isinstance(step, End):
            ends.append(n)
            break
        m.opened(resumed=False, now=1.0 + n)
        m.opening_sent()
    assert ends == [Policy().max_drops]


def test_closing_ends_everything() -> None:
    m = open_call()
    send(m, voice(3))
    m.close()
    assert m.phase == "ended" and not m.journal.entries
    assert send(m, voice(1)) == [None] and not m.journal.entries
    with pytest.raises(RuntimeError):
        m.handoff()


# ------------------------------------------------------------------ properties

_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("voice"), st.integers(1, 5)),
        st.tuples(st.just("silence"), st.integers(1, 50)),
        st.tuples(st.just("text"), st.just(0)),
        st.tuples(st.just("model"), st.just(0)),
        st.tuples(st.just("boundary"), st.just(0)),
        st.tuples(st.just("handle"), st.integers(0, 5)),
        st.tuples(st.just("goaway"), st.integers(0, 60)),
        st.tuples(st.just("close"), st.sampled_from([1000, 1006, 1007, 1008, 1011])),
        st.tuples(st.just("stale_close"), st.just(0)),
        st.tuples(st.just("tick"), st.integers(0, 30)),
        st.tuples(st.just("handoff"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_EVENTS)
def test_any_sequence_keeps_the_invariants(events: list[tuple[str, int]]) -> None:
    """Whatever happens: generations only grow, audio stays within the bound, nothing is
    lost without being counted, and a new connection never inherits a deadline."""
    m = open_call(SessionMachine(Policy(replay_limit_ms=2_000, max_drops=100)))
    now, generation, handles = 0.0, m.generation, 0
    submitted = 0.0
    for kind, value in events:
        now += 0.1
        step: Recover | End | None = None
        if m.phase == "ended":
            break
        if kind in ("voice", "silence"):
            entries = voice(value) if kind == "voice" else silence(value)
            submitted += len(entries) * 20
            send(m, entries, now)
        elif kind == "text":
            send(m, [note()], now)
        elif kind == "model":
            m.model_output(m.generation)
        elif kind == "boundary":
            step = m.turn_boundary(m.generation, now=now)
        elif kind == "handle":
            handles += 1
            index = value if value else None
            step = m.handle_updated(m.generation, f"h{handles}", consumed_index=index, now=now)
        elif kind == "goaway":
            step = m.go_away(m.generation, float(value), now=now)
        elif kind == "close":
            step = m.closed(m.generation, value, "x", now=now)
        elif kind == "stale_close":
            assert m.closed(m.generation - 1, 1011, "old", now=now) is None
        elif kind == "tick":
            now += value
            step = m.tick(now)
        elif kind == "handoff":
            dial = m.handoff()
            opening = m.opened(resumed=dial.handle is not None, now=now)
            assert opening.kind == "handoff"
            m.opening_sent()
            assert m.next_deadline() is None
        if isinstance(step, Recover):
            opening = m.opened(resumed=step.dial.handle is not None, now=now)
            assert m.next_deadline() is None
            for entry in opening.replay:
                m.resend(entry)
            for entry in m.journal.unsent():
                m.deliver(entry)
            m.opening_sent()
        assert m.generation >= generation
        generation = m.generation
        assert m.journal.audio_ms <= 2_000 + 1e-6
        assert m.journal.audio_ms == pytest.approx(
            sum(e.ms for e in m.journal.entries if e.kind == "audio")
        )


def _journalled(m: SessionMachine) -> list[tuple[object, ...]]:
    return [(e.kind, e.pcm, e.turns, e.voiced, e.carried_by) for e in m.journal.entries]


#: Frames (their sizes), whether they are voiced, whether the last one's write fails.
_FRAMES = st.tuples(
    st.lists(st.sampled_from([320, 640, 960]), min_size=1, max_size=30),
    st.booleans(),
    st.booleans(),
)
_AUDIO_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), _FRAMES),
        st.tuples(st.just("text"), st.none()),
        st.tuples(st.just("model"), st.none()),
        st.tuples(st.just("handle"), st.integers(0, 40)),
        st.tuples(st.just("close"), st.sampled_from([1006, 1008, 1011])),
        st.tuples(st.just("handoff"), st.none()),
    ),
    max_size=40,
)


def _step(m: SessionMachine, kind: str, value: Any, now: float, *, runs: bool) -> object:
    """One event on ``m``, caller audio recorded in runs or entry by entry; what it did."""
    step: Recover | End | Dial | None = None
    if kind == "audio":
        sizes, voiced, fails = value
        for i, size in enumerate(sizes):
            pcm = bytes([(int(now * 10) + i) % 251]) * size
            last_fails = fails and i == len(sizes) - 1
            if runs:
                if m.record_audio(pcm, voiced, now=now) is not None and last_fails:
                    m.unsend_last()
            else:
                entry = Sent("audio", pcm=pcm, voiced=voiced)
                if m.record(entry, now=now) is not None and last_fails:
                    entry.carried_by = None
    elif kind == "text":
        m.record(note(), now=now)
    elif kind == "model":
        m.model_output(m.generation)
    elif kind == "handle":
        consumed = value or None
        step = m.handle_updated(m.generation, f"h{now}", consumed_index=consumed, now=now)
    elif kind == "close":
        step = m.closed(m.generation, value, "x", now=now)
    elif kind == "handoff":
        step = m.handoff()
    if not isinstance(step, (Recover, Dial)):
        return step
    dial = step.dial if isinstance(step, Recover) else step
    opening = m.opened(resumed=dial.handle is not None, now=now)
    for entry in opening.replay:
        m.resend(entry)
    for entry in m.journal.unsent():
        m.deliver(entry)
    m.opening_sent()
    return step, opening.kind, [(e.kind, e.pcm, e.voiced) for e in opening.replay]


@settings(max_examples=300, deadline=None)
@given(_AUDIO_EVENTS, st.sampled_from([300, 2_000, 15_000]))
def test_audio_recorded_in_runs_is_journalled_as_entry_by_entry(
    events: list[tuple[str, Any]], limit_ms: int
) -> None:
    """record_audio (the caller's frames kept as a run, no entry each) against record (a
    Sent each), through every step of the machine: the same journal, message for message
    (numbering, voicing, what went unsent after a failed write), the same audio total and
    bound, the same decisions and replays."""
    a, b = (SessionMachine(Policy(replay_limit_ms=limit_ms, max_drops=100)) for _ in "ab")
    open_call(a), open_call(b)
    for n, (kind, value) in enumerate(events):
        if a.phase == "ended":
            break
        now = 0.1 * (n + 1)
        assert _step(a, kind, value, now, runs=False) == _step(b, kind, value, now, runs=True)
        assert _journalled(a) == _journalled(b)
        assert a.journal.audio_ms == b.journal.audio_ms
        assert (a.journal.overflowed, a.journal.dropped_ms) == (
            b.journal.overflowed,
            b.journal.dropped_ms,
        )
        assert (a.phase, a.generation, a.accepting) == (b.phase, b.generation, b.accepting)


def test_the_bound_takes_audio_run_by_run_and_keeps_the_notes_between() -> None:
    m = open_call(SessionMachine(Policy(replay_limit_ms=40)))
    frame = voice()[0].pcm
    m.record_audio(frame, True, now=0.0)  # a run of one message
    m.record(note(), now=0.0)
    for _ in range(3):
        m.record_audio(frame, True, now=0.0)  # each beyond the bound by one frame
    assert [(e.kind, e.carried_by) for e in m.journal.entries] == [
        ("turns", (1, 2)),
        ("audio", (1, 4)),
        ("audio", (1, 5)),
    ]
    assert m.journal.overflowed and m.journal.dropped_ms == 40 and m.journal.audio_ms == 40
