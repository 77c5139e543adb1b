"""Outbound audio to the carrier: paced, interruptible, and the socket's only writer.

The model produces speech in bursts faster than real time. Forwarding each burst at once would park
seconds of audio in the carrier's buffer, where the gateway can no longer take it back; holding
it all here would make every network hiccup audible. So the gateway keeps the carrier a short,
fixed *lead* ahead of real time (enough to ride out jitter) and holds the rest itself:

- barge-in (:meth:`interrupt`) drops everything still held here and sends ``clear`` ahead of
  any other message, so the caller stops hearing the agent within one frame;
- a mark follows each agent turn, so an echo tells when the caller really heard the end of it
  (an echo caused by a ``clear`` is recognised and not counted as played);
- with ``track_heard``, a mark also follows each media message, so that at a barge-in
  :meth:`unheard_s` can tell how much of what was sent the caller never heard (a model that
  truncates its answer there needs it: OpenAI Realtime).

Refills are batched: wake when the lead falls below ``lead - refill`` and top it back up with one
media message holding every frame the refill needs, so a call costs a few wake-ups and messages a
second, not fifty. New audio does not end that wait (the carrier still holds more than ``lead -
refill``, so it can wait for the refill); only a barge-in does. Given ``send_now`` (a write that
either happens at once or does nothing), a refill is done in the timer's own callback while the
socket takes every message at once, and the next one armed there: :meth:`run` sleeps through
the whole of an answer and wakes only for what must be awaited (a barge-in, a socket that
cannot take a message now, the end of the queued audio).

A :class:`PlayoutTap` (the call recording) sees the audio as the caller hears it: each frame with
the moment the carrier starts playing it, and each barge-in, since only the playout knows both.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gateway.carriers.base import CarrierCodec


class PlayoutTap(Protocol):
    """Sees outbound audio on the caller's timeline (a call recording implements it).

    Called from the playout's own coroutine, so an implementation must be quick and must not
    raise: a tap that failed would take the call's audio down with it.
    """

    def sent(self, frame: bytes, starts_at: float) -> None:
        """``frame`` (as sent to the carrier) starts playing at monotonic time ``starts_at``."""

    def cleared(self, at: float) -> None:
        """Barge-in at monotonic ``at``: audio sent for later than that will never play."""


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


class Playout:
    """Queue of outbound frames and marks, drained by :meth:`run` at a paced rate."""

    def __init__(
        self,
        codec: CarrierCodec,
        send: Callable[[str], Awaitable[None]],
        *,
        frame_ms: float = 20.0,
        lead_ms: float = 240.0,
        refill_ms: float = 100.0,
        max_queued_s: float = 300.0,
        max_batch: int | None = None,
        tap: PlayoutTap | None = None,
        track_heard: bool = False,
        send_now: Callable[[str], bool] | None = None,
    ) -> None:
        self._codec = codec
        self._tap = tap
        self._send = send
        #: Writes a message at once and says True, or does nothing and says False.
        self._send_now = send_now
        self._frame_s = frame_ms / 1000
        self._lead_s = lead_ms / 1000
        self._refill_s = min(refill_ms / 1000, self._lead_s / 2)
        self._refill_frames = max(1, round(self._refill_s / self._frame_s))
        self._max_items = int(max_queued_s / self._frame_s)
        #: Frames per media message at most; None: as many as the lead has room for.
        self._max_batch = None if max_batch is None else max(1, max_batch)
        self._items: deque[bytes | _Mark] = deque()
        self._control: deque[str] = deque()
        #: What :meth:`run` awaits while it has nothing to do (None while it works), and the
        #: refill's timer while that wait is a refill's, which only a control message cuts
        #: short (new frames and marks do not).
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Monotonic time at which the carrier will have played everything sent so far.
        self._play_end = 0.0
        self._outstanding: set[str] = set()
        self._flushed: set[str] = set()
        self.frames_sent = 0
        self.track_heard = track_heard
        #: Audio sent, in seconds, and how much of it an echoed progress mark proved played
        #: (``_heard_s``), as of when (``_heard_at``); progress marks in flight -> audio sent
        #: up to them.
        self._sent_s = 0.0
        self._heard_s = 0.0
        self._heard_at = 0.0
        self._progress: dict[str, float] = {}
        #: Dropped by barge-in (never sent), and by a runaway producer overflowing the queue.
        self.frames_dropped = 0
        self.frames_overflowed = 0

    def enqueue(self, frame: bytes) -> None:
        self.enqueue_all((frame,))

    def enqueue_all(self, frames: Iterable[bytes]) -> None:
        """Queue ``frames`` (a model chunk's), then start sending them if nothing is.

        While :meth:`run` waits with nothing queued and the socket takes messages at once
        (``send_now``), the first top-up of an answer is sent from here, as the refill's
        timer would send it, and the timer armed for the next: the first audio of an answer
        goes out in the call that brought it, not a loop iteration later when :meth:`run`
        wakes (one iteration can be a whole window when the loop is paced,
        :mod:`gateway.pacing`)."""
        items = self._items
        for frame in frames:
            if len(items) >= self._max_items:
                items.popleft()  # a runaway producer; the oldest audio is the least useful
                self.frames_overflowed += 1
            items.append(frame)
        if self._timer is not None:
            return  # a refill is due: new frames wait for it (see _idle)
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._refill_in() is None:
            self._refill_due()  # run() waits with nothing queued: top up here, as the timer
        else:
            self._wake()  # run() is awake already, or wakes for what is due

    def mark(self, name: str) -> None:
        """Queue a mark behind the frames already queued."""
        self._items.append(_Mark(name))
        if self._timer is None:
            self._wake()

    def interrupt(self) -> int:
        """Barge-in: forget queued audio, tell the carrier to flush its buffer. Returns frames."""
        dropped = sum(1 for item in self._items if not isinstance(item, _Mark))
        self._items.clear()
        self.frames_dropped += dropped
        # Always clear: our estimate of the carrier's buffer ignores network delay, and a clear
        # of an empty buffer costs nothing.
        self._control.append(self._codec.clear())
        self._flushed |= self._outstanding
        self._outstanding.clear()
        self._progress.clear()
        # What was sent and not heard is gone with the clear: count it as heard from here on.
        self._heard_s, self._heard_at = self._sent_s, time.monotonic()
        self._play_end = 0.0
        if self._tap is not None:
            self._tap.cleared(time.monotonic())
        self._wake()
        return dropped

    @property
    def queued_frames(self) -> int:
        """Frames held here, not yet sent to the carrier."""
        return sum(1 for item in self._items if not isinstance(item, _Mark))

    def busy(self, now: float) -> bool:
        """Whether agent audio is still queued here or still playing at the carrier."""
        return self._play_end > now or any(not isinstance(i, _Mark) for i in self._items)

    def mark_echoed(self, name: str) -> bool:
        """A mark came back; True if it is a turn's mark whose audio was really played (not
        flushed by a clear, and not one of the progress marks of ``track_heard``)."""
        if name in self._flushed:
            self._flushed.discard(name)
            return False
        self._outstanding.discard(name)
        sent_s = self._progress.pop(name, None)
        if sent_s is None:
            return True
        if sent_s > self._heard_s:
            self._heard_s, self._heard_at = sent_s, time.monotonic()
        return False

    def unheard_s(self, now: float) -> float:
        """Audio sent to the carrier that the caller has not heard (yet), in seconds.

        Two bounds on what was heard, the tighter wins: the carrier cannot play faster than
        real time (what was sent, less what is still ahead of now by the pacing clock), and it
        cannot have played past the newest echoed progress mark by more than the time since
        that echo (a carrier buffering more than the pacing assumes, or a slow network).
        Without ``track_heard`` only the first bound is known.
        """
        by_clock = self._sent_s - max(0.0, self._play_end - now)
        heard = by_clock
        if self.track_heard:
            by_marks = self._heard_s + max(0.0, now - self._heard_at)
            heard = max(self._heard_s, min(by_clock, by_marks))
        return max(0.0, self._sent_s - heard)

    async def run(self) -> None:
        """Drain the queue forever (cancel to stop); the only coroutine that sends."""
        while True:
            if self._control:
                await self._send(self._control.popleft())
                continue
            if not self._items:
                await self._idle(None)
                continue
            refill_in = self._refill_in()
            if refill_in is not None:
                # Sleep until the lead has drained by one refill, unless barge-in wakes us.
                await self._idle(refill_in)
            await self._top_up()

    def _refill_in(self) -> float | None:
        """Seconds until the next refill is due, while frames wait and the carrier is more
        than ``lead - refill`` ahead; None when a top-up is due now (or a mark is next)."""
        items = self._items
        if not items or isinstance(items[0], _Mark):
            return None
        wait = self._play_end - time.monotonic() - (self._lead_s - self._refill_s)
        return wait if wait > 0 else None

    async def _idle(self, refill_in: float | None) -> None:
        """Wait for work: for anything queued (``refill_in`` None), or for the refill due in
        ``refill_in`` seconds, which only a control message (barge-in's ``clear``) cuts short.
        New frames and marks do not end a refill's wait: answering each of them would send the
        few frames the lead has room for at that moment, one small message per model chunk.

        One future and, for a refill, one timer: a model chunk arriving meanwhile costs no
        wake-up of this coroutine (an event and a timeout context woke it for each, to find
        no control message and wait again). The timer may do the refill itself and arm the
        next (:meth:`_refill_due`), so one wait can span many refills."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if refill_in is not None:
            self._arm(refill_in)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm(self, refill_in: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(refill_in, self._refill_due)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _refill_due(self) -> None:
        """The refill's timer, while :meth:`run` waits for it (and :meth:`enqueue_all`, when
        run() waits with nothing queued): top the carrier up here, and arm the next refill
        while frames remain beyond the lead, when every message goes out at once
        (``send_now``); otherwise, or once the queue has run dry, wake :meth:`run`, which then
        does what it always did. A refill costs a timer callback, not a wake-up
        of the coroutine (with its task step and three frames resumed): ten a second a call."""
        self._timer = None
        try:
            if self._send_now is not None and not self._control and self._top_up_now():
                refill_in = self._refill_in()  # frames left after a top-up: the lead is full
                if refill_in is not None:
                    self._arm(refill_in)
                    return
        except Exception as exc:  # raised in run(), as the same top-up there would raise it
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        self._wake()

    async def _top_up(self) -> None:
        """Send queued items until the carrier is a full lead ahead (or a clear is waiting)."""
        for text in self._top_up_messages():
            await self._send(text)

    def _top_up_now(self) -> bool:
        """:meth:`_top_up` with ``send_now``; False once a message could not go at once: it
        then waits, first of all, for :meth:`run` to send it the awaiting way."""
        assert self._send_now is not None
        for text in self._top_up_messages():
            try:
                sent = self._send_now(text)
            except Exception:
                sent = False  # the awaiting send raises it again, to run()'s owner
            if not sent:
                self._control.appendleft(text)
                return False
        return True

    def _top_up_messages(self) -> Iterator[str]:
        """The messages of a top-up, each with its bookkeeping done as it is made: sent one by
        one (awaited, or at once), they keep the carrier a full lead ahead. Each is made only
        after the one before was sent, so a barge-in meanwhile (a control message) ends it.

        Frames that go out together are joined into media messages of whole 20 ms frames
        (:meth:`_take_batch`): each message costs a JSON envelope, a websocket frame and a
        syscall, so a 100 ms refill as one message instead of five is most of the send cost.
        """
        emptied = False  # the last batch took every frame there was
        while self._items and not self._control:
            item = self._items[0]
            if isinstance(item, _Mark):
                self._items.popleft()
                self._outstanding.add(item.name)
                yield self._codec.mark(item.name)
                continue
            now = time.monotonic()
            room = self._lead_s - max(0.0, self._play_end - now)
            if emptied and room < self._refill_s:
                # Frames that arrived while the last batch was being sent, with the lead nearly
                # full: they wait for the next refill rather than go out as a message of a frame
                # or two (seen when a refill woke late and found fewer frames than room).
                return
            frames = self._take_batch(room)
            emptied = not self._items
            if not frames:
                return
            starts_at = max(self._play_end, now)
            if self.track_heard and starts_at == now and not self._progress:
                # The carrier had played everything (its last mark is back): what it plays
                # next starts now, not at the last echo.
                self._heard_s, self._heard_at = self._sent_s, now
            self._play_end = starts_at + self._frame_s * len(frames)
            self._sent_s += self._frame_s * len(frames)
            if self._tap is not None:  # before the send: a barge-in during it must cut these
                for i, frame in enumerate(frames):
                    self._tap.sent(frame, starts_at + i * self._frame_s)
            self.frames_sent += len(frames)
            yield self._codec.media(frames[0] if len(frames) == 1 else b"".join(frames))
            if self.track_heard:
                name = f"heard-{self.frames_sent}"
                self._progress[name] = self._sent_s
                self._outstanding.add(name)
                yield self._codec.mark(name)

    def _take_batch(self, room: float) -> list[bytes]:
        """Take the frames of the next media message off the queue.

        A frame goes out while the carrier is less than a lead ahead (``room`` > 0), so a refill
        woken a little late has room for a frame or more beyond ``refill``: all of them go in
        one message (a cap of ``refill`` frames used to send such a refill as a full batch and
        a one-frame straggler). Room for two refills or more (the first fill of a turn, or a
        loop that missed a refill) is split into messages of one to two refills each, so the
        progress marks of ``track_heard`` still come back about every refill.
        """
        fits = 0
        for item in self._items:
            if not isinstance(item, bytes) or room - fits * self._frame_s <= 0:
                break  # a mark, or the lead is full
            fits += 1
        count = -(-fits // max(1, fits // self._refill_frames))  # fits over whole refills
        if self._max_batch is not None:
            count = min(count, self._max_batch)
        frames: list[bytes] = []
        for _ in range(count):
            frame = self._items.popleft()
            assert isinstance(frame, bytes)  # counted above
            frames.append(frame)
        return frames
