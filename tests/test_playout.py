"""Playout: pacing ahead of real time, barge-in clearing, marks played vs flushed.

The carrier here is a list that records what was sent and when: the Playout's contract is
about the order and timing of messages, which a list shows exactly.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Callable

import pytest

from gateway.aio import cancel_and_wait
from gateway.call.playout import Playout
from gateway.carriers.twilio import TwilioCodec
from tests.test_twilio_codec import start_message

#: Whether the playouts under test get ``send_now`` (set per test by ``_both_ways``).
_AT_ONCE = False


@pytest.fixture(autouse=True, params=[False, True], ids=["awaited", "at once"])
def _both_ways(request: pytest.FixtureRequest) -> None:
    """Every test twice: sends awaited only, and written at once from the refill's timer
    whenever the carrier takes them (``send_now``, as the server's socket does)."""
    global _AT_ONCE
    _AT_ONCE = request.param


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, dict[str, object]]] = []
        #: How each message in ``sent`` went: "awaited" or "at once".
        self.via: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append((time.monotonic(), json.loads(text)))
        self.via.append("awaited")

    def send_now(self, text: str) -> bool:
        self.sent.append((time.monotonic(), json.loads(text)))
        self.via.append("at once")
        return True

    @property
    def now(self) -> Callable[[str], bool] | None:
        """``send_now`` in the tests' "at once" run, else None (sends awaited only)."""
        return self.send_now if _AT_ONCE else None

    def events(self) -> list[str]:
        return [str(m["event"]) for _, m in self.sent]

    def frames(self) -> int:
        """20 ms frames sent so far (a media message may carry several)."""
        sizes = [len(base64.b64decode(m["media"]["payload"]))  # type: ignore[index]
                 for _, m in self.sent if m["event"] == "media"]  # fmt: skip
        assert all(size % 160 == 0 for size in sizes), sizes
        return sum(sizes) // 160


def _codec() -> TwilioCodec:
    codec = TwilioCodec()
    codec.parse(start_message())
    return codec


async def test_sends_a_lead_at_once_then_paces_in_real_time() -> None:
    rec = Recorder()
    playout = Playout(_codec(), rec.send, send_now=rec.now, lead_ms=200, refill_ms=100)
    runner = asyncio.create_task(playout.run())
    try:
        t0 = time.monotonic()
        for _ in range(50):  # one second of audio
            playout.enqueue(b"\xff" * 160)
        await asyncio.sleep(0.05)
        assert 9 <= rec.frames() <= 11  # the lead (200 ms = 10 frames) goes out immediately
        assert len(rec.sent) <= 3  # in a couple of messages, not ten
        await asyncio.sleep(0.6)
        sent = rec.frames()
        elapsed = time.monotonic() - t0
        # Never more than lead + real time ahead, never starved of a refill for long.
        assert sent * 0.020 <= elapsed + 0.200 + 0.021
        assert sent * 0.020 >= elapsed + 0.200 - 0.100 - 0.060
    finally:
        await cancel_and_wait(runner)


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "queued"])
async def test_a_steady_answer_goes_out_as_one_media_message_per_refill(streamed: bool) -> None:
    """A model answer streamed at 2x real time in 40 ms chunks (as Gemini sends it), or queued
    at once: once the lead is full, each refill is one media message with every frame it
    needs, sent when the lead has drained by a refill. Chunks arriving meanwhile do not go out
    one by one, and a refill woken a little late is not split into a full batch and a
    one-frame straggler."""
    rec = Recorder()
    playout = Playout(_codec(), rec.send, send_now=rec.now)  # defaults: lead 240, refill 100 ms
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(30):  # 1.2 s of audio, in 0.6 s or at once
            playout.enqueue(b"\xff" * 160)
            playout.enqueue(b"\xff" * 160)
            if streamed:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.5 - (0.6 if streamed else 0))
    finally:
        await cancel_and_wait(runner)
    assert rec.frames() == 60
    media = [(t, len(base64.b64decode(m["media"]["payload"])) // 160)  # type: ignore[index]
             for t, m in rec.sent if m["event"] == "media"]  # fmt: skip
    first = media[0][0]
    refills = [(t, n) for t, n in media if t - first > 0.3]  # the lead is full by 0.15 s
    assert len(refills) >= 5
    assert all(n >= 5 for _, n in refills[:-1]), refills  # the last one ends the answer
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(refills)]
    assert min(gaps) > 0.05, gaps  # one message per refill, about 100 ms apart
    if _AT_ONCE:  # every refill but the last was written from the timer, run() asleep
        refill_via = [via for (t, m), via in zip(rec.sent, rec.via, strict=True)
                      if m["event"] == "media" and t - first > 0.3]  # fmt: skip
        assert set(refill_via[:-1]) == {"at once"}, refill_via


async def test_the_first_chunk_of_an_answer_goes_out_in_the_call_that_queued_it() -> None:
    """With ``send_now`` and run() waiting with nothing queued, a model chunk's frames go out
    from ``enqueue_all`` itself, as one message, with no loop iteration in between; chunks
    queued before run() has woken wait for it and go together. Awaited only: run() sends."""
    rec = Recorder()
    playout = Playout(_codec(), rec.send, send_now=rec.now, lead_ms=200, refill_ms=100)
    runner = asyncio.create_task(playout.run())
    try:
        await asyncio.sleep(0.01)  # run() waits
        playout.enqueue_all([b"\x01" * 160, b"\x02" * 160])
        assert rec.frames() == (2 if _AT_ONCE else 0)
        assert len(rec.sent) == (1 if _AT_ONCE else 0)
        playout.enqueue_all([b"\x03" * 160] * 4)  # before run() has looked: it sends these
        assert rec.frames() == (2 if _AT_ONCE else 0)
        await asyncio.sleep(0.05)
        assert rec.frames() == 6
        assert len(rec.sent) == (2 if _AT_ONCE else 1)
        payloads = b"".join(
            base64.b64decode(m["media"]["payload"])  # type: ignore[index]
            for _, m in rec.sent
        )
        assert payloads == b"\x01" * 160 + b"\x02" * 160 + b"\x03" * 640
    finally:
        await cancel_and_wait(runner)


async def test_interrupt_drops_queued_audio_and_clears_first() -> None:
    rec = Recorder()
    playout = Playout(_codec(), rec.send, send_now=rec.now, lead_ms=100, refill_ms=50)
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(100):
            playout.enqueue(b"\x01" * 160)
        playout.mark("turn-1")
        await asyncio.sleep(0.03)
        sent_before = len(rec.sent)
        t_interrupt = time.monotonic()
        dropped = playout.interrupt()
        await asyncio.sleep(0.01)
        assert dropped >= 90
        clear_time, clear = rec.sent[sent_before]
        assert clear["event"] == "clear"
        assert clear_time - t_interrupt < 0.020  # within one frame
        assert rec.events()[sent_before + 1 :] == []  # nothing stale follows the clear
        # New audio after the barge-in goes out immediately.
        playout.enqueue(b"\x02" * 160)
        await asyncio.sleep(0.01)
        assert rec.events()[-1] == "media"
    finally:
        await cancel_and_wait(runner)


async def test_mark_echo_tells_played_from_flushed() -> None:
    rec = Recorder()
    playout = Playout(_codec(), rec.send, send_now=rec.now, lead_ms=1000)
    runner = asyncio.create_task(playout.run())
    try:
        playout.enqueue(b"\x01" * 160)
        playout.mark("turn-1")
        await asyncio.sleep(0.01)
        assert rec.events() == ["media", "mark"]
        assert playout.mark_echoed("turn-1") is True
        playout.enqueue(b"\x01" * 160)
        playout.mark("turn-2")
        await asyncio.sleep(0.01)
        playout.interrupt()
        await asyncio.sleep(0.01)
        assert rec.events()[-1] == "clear"
        assert playout.mark_echoed("turn-2") is False  # echoed because of the clear
    finally:
        await cancel_and_wait(runner)


@pytest.mark.parametrize("lead_ms", [40, 240])
async def test_idle_playout_does_not_spin(lead_ms: int) -> None:
    rec = Recorder()
    playout = Playout(_codec(), rec.send, send_now=rec.now, lead_ms=lead_ms)
    runner = asyncio.create_task(playout.run())
    try:
        cpu0 = time.process_time()
        await asyncio.sleep(0.3)
        assert time.process_time() - cpu0 < 0.05
        assert rec.sent == []
    finally:
        await cancel_and_wait(runner)


def _media_and_marks(rec: Recorder) -> list[str]:
    return [
        f"mark:{m['mark']['name']}" if m["event"] == "mark" else str(m["event"])  # type: ignore[index]
        for _, m in rec.sent
    ]


async def test_track_heard_follows_each_media_message_with_a_progress_mark() -> None:
    rec = Recorder()
    playout = Playout(
        _codec(), rec.send, send_now=rec.now, lead_ms=200, refill_ms=100, track_heard=True
    )
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(5):
            playout.enqueue(b"\xff" * 160)
        await asyncio.sleep(0.05)
    finally:
        await cancel_and_wait(runner)
    events = _media_and_marks(rec)
    assert events[0] == "media"
    assert events[1].startswith("mark:heard-")
    name = events[1].removeprefix("mark:")
    assert playout.mark_echoed(name) is False  # progress, not a turn's end


async def test_unheard_is_what_was_sent_and_not_yet_played() -> None:
    """At a barge-in the carrier still holds what it was sent ahead of real time; the echoed
    progress marks bound what it can have played."""
    rec = Recorder()
    playout = Playout(
        _codec(), rec.send, send_now=rec.now, lead_ms=400, refill_ms=100, track_heard=True
    )
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(20):  # 400 ms: the whole lead goes out at once
            playout.enqueue(b"\xff" * 160)
        await asyncio.sleep(0.1)
        now = time.monotonic()
        # About 100 ms played by the clock, and no mark is back: the marks bound the heard
        # part by the time since the audio started, so the clock's estimate stands.
        assert 0.27 <= playout.unheard_s(now) <= 0.32
        # The carrier says it played the first message (its mark echoed) only now: the
        # caller cannot have heard more than that plus the time since.
        first = next(m["mark"]["name"] for _, m in rec.sent if m["event"] == "mark")  # type: ignore[index]
        playout.mark_echoed(first)
        assert playout.unheard_s(time.monotonic()) >= 0.27
        playout.interrupt()
        assert playout.unheard_s(time.monotonic()) == 0.0  # cleared: nothing is pending
    finally:
        await cancel_and_wait(runner)


async def test_frames_that_arrive_during_a_refills_send_wait_for_the_next_refill() -> None:
    """A refill that finds fewer frames than it has room for sends them; a chunk arriving
    while that message is being sent waits for the next refill instead of following at once
    as a one- or two-frame message (seen when a refill woke late, under load)."""
    frame = b"\xff" * 160
    rec = Recorder()
    started = time.monotonic()

    async def send(text: str) -> None:
        await rec.send(text)
        at, message = rec.sent[-1]
        if message["event"] == "media" and at - started > 0.05 and not arrived:
            arrived.append(at)  # the refill's message: a chunk arrives during its send
            playout.enqueue(frame)
            playout.enqueue(frame)
        await asyncio.sleep(0)

    arrived: list[float] = []
    playout = Playout(_codec(), send)  # lead 240 ms, refill 100 ms
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(12):
            playout.enqueue(frame)  # the first fill: the whole 240 ms lead
        await asyncio.sleep(0.05)
        playout.enqueue(frame)
        playout.enqueue(frame)  # 40 ms for the refill, which has room for 100
        await asyncio.sleep(0.3)
    finally:
        await cancel_and_wait(runner)
    assert rec.frames() == 16
    media = [t for t, m in rec.sent if m["event"] == "media" and t - started > 0.05]
    assert len(media) == 2, media  # the refill, then the late chunk at the next refill
    # Not straight after the refill's send, but when the next refill was due: the lead
    # (240 ms) went out at `first` and the refill's 40 ms made it 280, so 140 ms after `first`
    # (less a little: `first` is stamped as its send starts). Measured from `first`, not from
    # the refill, which a loaded machine wakes late (25 ms after it was seen in a full run).
    first = next(t for t, m in rec.sent if m["event"] == "media")
    assert media[1] - first >= 0.13


async def test_a_late_carrier_lowers_the_heard_estimate() -> None:
    """A carrier that confirms less than the clock assumes (it buffers, or the network is
    slow) moves the estimate of what was heard back to its confirmations."""
    rec = Recorder()
    playout = Playout(
        _codec(),
        rec.send,
        send_now=rec.now,
        lead_ms=200,
        refill_ms=100,
        max_batch=1,
        track_heard=True,
    )
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(10):
            playout.enqueue(b"\xff" * 160)
        await asyncio.sleep(0.01)
        marks = [m["mark"]["name"] for _, m in rec.sent if m["event"] == "mark"]  # type: ignore[index]
        assert len(marks) == 10
        await asyncio.sleep(0.15)
        playout.mark_echoed(marks[0])  # the carrier has played 20 ms, 150 ms after the send
        unheard = playout.unheard_s(time.monotonic())
        assert unheard >= 0.17  # 200 ms sent, at most 20 ms + a moment heard
    finally:
        await cancel_and_wait(runner)


async def test_a_refill_that_fails_fails_run_as_it_always_did() -> None:
    """A top-up that raises (here the codec, on the third media message) ends ``run()`` with
    that error, whether the refill ran in the coroutine or in the timer's callback: the call
    then ends on it, rather than its audio stopping unseen."""

    class Failing(TwilioCodec):
        made = 0

        def media(self, payload: bytes) -> str:
            self.made += 1
            if self.made == 3:
                raise RuntimeError("no media message")
            return super().media(payload)

    codec = Failing()
    codec.parse(start_message())
    rec = Recorder()
    playout = Playout(codec, rec.send, send_now=rec.now, lead_ms=100, refill_ms=50)
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(50):
            playout.enqueue(b"\xff" * 160)
        with pytest.raises(RuntimeError, match="no media message"):
            await asyncio.wait_for(runner, 2)
    finally:
        await cancel_and_wait(runner)
    assert codec.made == 3
