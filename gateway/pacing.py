"""Event-loop pacing: under load, look at the sockets at most once a window, not per message.

At 50 calls the gateway's sockets deliver about 3,500 messages a second, nearly all alone: the
loop wakes for one caller frame, handles it, and goes back to ``epoll`` to wait for the next
(about one message per poll, 1,750 context switches a second, measured with ``perf stat``).
Each wake-up costs a system call, a context switch and caches gone cold meanwhile, and the
peer's socket is woken as often by what the gateway writes. Network cards solve the same
problem with interrupt moderation, and Linux with NAPI: once traffic is heavy, collect what
arrives over a short window and handle it together.

A :class:`LoopPacer` does that for the event loop. While it is on, a callback queued on every
iteration of the loop sleeps whatever is left of ``window_s`` since the iteration before, so
the poll that follows finds everything that arrived meanwhile and the loop handles it in one
go. Nothing waits longer than one window for it (the added latency, a millisecond on average
for a 2 ms window); no audio is merged or held back: each caller frame still goes to the model
as its own message, as soon as the loop has read it. Side by side at 50 calls, a 2 ms window
took 10 % off the gateway's CPU (``benchmarks/README.md``, "Pacing the event loop").

It is on only while the process is busy (its CPU share above ``on_share`` over the last
``check_s``; off again below ``off_share``): a quiet loop wakes for each message, as before,
since pacing a loop that has fewer messages than windows would wake it more often, not less.
The sleep blocks the loop by design, for at most one window: the lag probe
(``gateway_event_loop_lag_seconds``) shows it, and a loop whose iterations take longer than a
window is never slept at all.
"""

from __future__ import annotations

import asyncio
import time

#: Share of one core above which pacing starts, and below which it stops: about 20 and 15
#: calls of the peer workload. Below, the loop has hardly more messages than windows, and
#: the latency is worth more than the little CPU pacing would save. (``LOOP_PACING_BUSY_PCT``
#: moves the first; unless given, the second follows it at ``OFF_FRACTION``.)
ON_SHARE = 0.20
OFF_FRACTION = 0.75
#: How often the share is measured: long enough that a burst of answers does not start it.
CHECK_S = 0.25


class LoopPacer:
    """Paces the running loop while the process is busy; :meth:`run` is its task."""

    def __init__(
        self,
        window_s: float,
        *,
        on_share: float = ON_SHARE,
        off_share: float | None = None,
        check_s: float = CHECK_S,
    ) -> None:
        if off_share is None:
            off_share = on_share * OFF_FRACTION
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if not 0 <= off_share <= on_share:
            raise ValueError("need 0 <= off_share <= on_share")
        self.window_s = window_s
        self._on_share = on_share
        self._off_share = off_share
        self._check_s = check_s
        #: Whether the loop is paced now (the callback re-queues itself while this holds).
        self.pacing = False
        #: Whether the callback is queued (it may outlive ``pacing`` by one iteration).
        self._queued = False
        self._last = 0.0
        #: Loop iterations paced, and the time slept in them, since start (for the tests and
        #: the benchmarks).
        self.paced = 0
        self.slept_s = 0.0

    async def run(self) -> None:
        """Measure the process's CPU share every ``check_s`` and pace the loop while it is
        high (cancel to stop; pacing stops with it)."""
        loop = asyncio.get_running_loop()
        wall, cpu = time.monotonic(), time.process_time()
        try:
            while True:
                await asyncio.sleep(self._check_s)
                now_wall, now_cpu = time.monotonic(), time.process_time()
                share = (now_cpu - cpu) / max(now_wall - wall, 1e-6)
                wall, cpu = now_wall, now_cpu
                if not self.pacing and share >= self._on_share:
                    self.pacing = True
                    if not self._queued:
                        self._queued = True
                        self._last = time.monotonic()
                        loop.call_soon(self._pace, loop)
                elif self.pacing and share < self._off_share:
                    self.pacing = False
        finally:
            self.pacing = False

    def _pace(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once per loop iteration while pacing: sleep out the window since the last one.

        Queued with ``call_soon``, so the loop polls without blocking and then runs it again
        after the I/O callbacks of that poll; the sleep here is where the loop waits."""
        if not self.pacing:
            self._queued = False
            return
        now = time.monotonic()
        wait = self._last + self.window_s - now
        if wait > 0:
            time.sleep(wait)
            self.slept_s += wait
            now = time.monotonic()
        self._last = now
        self.paced += 1
        loop.call_soon(self._pace, loop)
