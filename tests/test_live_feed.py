"""The console's live feed (:class:`gateway.web.feed.LiveFeed`) as an observer of plain call
events: what it keeps of a call, what it fans out, and its back-pressure."""

from __future__ import annotations

import asyncio

from gateway.web.feed import QUEUE_EVENTS, TRANSCRIPT_KEPT, LiveFeed


def started(feed: LiveFeed, call_id: str = "CA1") -> None:
    feed.observe("call.started", {
        "call_id": call_id, "agent": "agent-triage", "carrier": "twilio",
        "direction": "inbound", "from": "+14155550123", "to": "+18005550100",
    })  # fmt: skip


def said(feed: LiveFeed, text: str, call_id: str = "CA1") -> None:
    feed.observe("transcript", {"call_id": call_id, "speaker": "caller",
                                "agent_id": "agent-triage", "text": text})  # fmt: skip


async def test_a_call_is_followed_from_start_to_end() -> None:
    feed = LiveFeed()
    watcher = feed.subscribe()
    started(feed)
    said(feed, "hello")
    feed.observe("handoff.completed", {"call_id": "CA1", "from_agent": "agent-triage",
                                       "to_agent": "agent-advisor"})  # fmt: skip
    snapshot = feed.snapshot()["calls"][0]
    feed.observe("call.ended", {"call_id": "CA1", "reason": "caller_hung_up", "duration_s": 3.2})
    events = [await watcher.next() for _ in range(4)]
    assert [name for name, _ in events] == ["call", "transcript", "call", "ended"]
    assert snapshot["from"] == "***0123" and snapshot["to"] == "***0100"
    assert snapshot["agent"] == "agent-advisor"
    assert [h["to"] for h in snapshot["handoffs"]] == ["agent-advisor"]
    assert events[1][1]["text"] == "hello" and events[1][1]["call_id"] == "CA1"
    assert events[3][1] == {"call_id": "CA1", "end_reason": "caller_hung_up", "duration_s": 3.2}
    assert feed.snapshot() == {"calls": []}


def test_events_of_calls_it_never_saw_start_are_ignored() -> None:
    feed = LiveFeed()
    watcher = feed.subscribe()
    said(feed, "who?", call_id="CA-unknown")
    feed.observe("call.ended", {"call_id": "", "reason": "no_start"})  # never a call
    feed.observe("call.started", {"call_id": ""})
    assert feed.snapshot() == {"calls": []}
    assert watcher._queue.empty()


def test_a_call_keeps_its_last_lines_only() -> None:
    feed = LiveFeed()
    started(feed)
    for i in range(TRANSCRIPT_KEPT + 20):
        said(feed, f"line {i}")
    lines = feed.snapshot()["calls"][0]["transcript"]
    assert len(lines) == TRANSCRIPT_KEPT
    assert lines[-1]["text"] == f"line {TRANSCRIPT_KEPT + 19}"


async def test_a_console_that_stops_reading_is_resynchronised_not_buffered() -> None:
    feed = LiveFeed()
    slow, quick = feed.subscribe(), feed.subscribe()
    started(feed)
    for i in range(QUEUE_EVENTS * 3):
        said(feed, f"line {i}")
        if not quick._queue.empty():
            while not quick._queue.empty():
                await quick.next()
    assert slow._queue.qsize() == 1  # everything dropped, bar the order to resynchronise
    assert await slow.next() == ("resync", {})
    said(feed, "after")
    assert (await slow.next())[1]["text"] == "after"  # back in step once resynchronised
    assert not quick.behind


async def test_closing_ends_every_stream_and_new_ones_at_once() -> None:
    feed = LiveFeed()
    watcher = feed.subscribe()
    started(feed)
    feed.close()
    assert await asyncio.wait_for(watcher.next(), 1) == ("closed", {})
    late = feed.subscribe()
    assert await asyncio.wait_for(late.next(), 1) == ("closed", {})
    assert feed.subscribers == 0
