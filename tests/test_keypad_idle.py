"""The keypad entry and the quiet-line watch, on a plain clock (both are pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.call.idle import IdleAction, IdleWatch
from gateway.call.keypad import MAX_KEYS, Keypad, entry_text

KEYS = st.sampled_from(list("0123456789*ABCD"))


def test_hash_ends_the_entry_at_once_with_every_key_in_order() -> None:
    pad = Keypad(1.5)
    assert pad.press("1", 0.0) is None
    assert pad.press("2", 0.5) is None
    assert pad.press("3", 1.0) is None
    assert pad.press("#", 1.2) == ("1", "2", "3", "#")
    assert pad.deadline is None
    assert entry_text(("1", "2", "3", "#")) == "The caller pressed 1 2 3 # on the phone keypad."


def test_a_pause_of_the_interdigit_time_ends_the_entry() -> None:
    pad = Keypad(1.5)
    pad.press("4", 10.0)
    pad.press("2", 11.0)
    assert pad.deadline == 12.5  # measured from the last key
    assert pad.due(12.49) is None
    assert pad.due(12.5) == ("4", "2")
    assert pad.due(20.0) is None  # taken once


def test_a_lone_hash_is_an_entry_of_its_own() -> None:
    assert Keypad(1.5).press("#", 0.0) == ("#",)


@given(st.lists(KEYS, min_size=1, max_size=200))
def test_keys_are_never_lost_nor_reordered(keys: list[str]) -> None:
    pad = Keypad(1.0)
    entries: list[tuple[str, ...]] = []
    for i, key in enumerate(keys):
        done = pad.press(key, float(i) * 0.1)
        if done is not None:
            entries.append(done)
    last = pad.due(1e9)
    if last is not None:
        entries.append(last)
    assert [k for entry in entries for k in entry] == keys
    assert all(len(entry) <= MAX_KEYS for entry in entries)


def test_a_quiet_line_is_checked_on_then_ended() -> None:
    watch = IdleWatch(20.0, 20.0, now=0.0)
    assert watch.check(19.9, agent_busy=False) is None
    assert watch.check(20.0, agent_busy=False) is IdleAction.CHECK_IN
    # The check-in plays for 3 s: the hang-up wait starts when it has been heard.
    for t in (20.5, 21.0, 23.0):
        assert watch.check(t, agent_busy=True) is None
    assert watch.check(42.9, agent_busy=False) is None
    assert watch.check(43.0, agent_busy=False) is IdleAction.GOODBYE
    assert watch.check(100.0, agent_busy=False) is None  # said once


def test_caller_speech_starts_the_watch_over() -> None:
    watch = IdleWatch(5.0, 5.0, now=0.0)
    assert watch.check(5.0, agent_busy=False) is IdleAction.CHECK_IN
    watch.caller_spoke(7.0)
    assert watch.check(11.9, agent_busy=False) is None
    assert watch.check(12.0, agent_busy=False) is IdleAction.CHECK_IN  # a new check-in


def test_the_agent_speaking_is_not_a_quiet_line() -> None:
    watch = IdleWatch(5.0, 5.0, now=0.0)
    for t in range(30):
        assert watch.check(float(t), agent_busy=True) is None
    assert watch.check(33.9, agent_busy=False) is None  # quiet since the last busy look (29)
    assert watch.check(34.0, agent_busy=False) is IdleAction.CHECK_IN
