"""Caller audio at no more than real time: what a phone can send, and what Gemini bills.

A phone produces one second of audio per second. Anything faster comes from a client that is
not a phone (200 s of "audio" in 1.4 s was measured before this existed), and each second of it
reaching Gemini costs the operator as if someone had spoken it. So caller audio is admitted up
to the time elapsed since the stream started plus an allowance for jitter, and the rest dropped.

The budget is cumulative, not a leaky bucket: audio held back by the network and then delivered
in a burst is still within real time overall, so a carrier that stalls and catches up, or
reorders and batches (Telnyx), never loses a frame to this. Only audio *ahead* of the clock by
more than the allowance is dropped. Clock drift between carrier and gateway (~100 ppm, 0.4 s an
hour) stays well inside a one-second allowance.
"""

from __future__ import annotations

#: How far ahead of real time caller audio may run before it is dropped.
DEFAULT_ALLOWANCE_S = 1.0


class RealTimeBudget:
    """Admits audio while the total stays within elapsed time plus ``allowance_s``; pure."""

    def __init__(
        self,
        bytes_per_second: float,
        *,
        started_at: float,
        allowance_s: float = DEFAULT_ALLOWANCE_S,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self._bytes_per_second = bytes_per_second
        self._started_at = started_at
        self._allowance_s = allowance_s
        self.admitted_s = 0.0
        self.dropped_s = 0.0

    @property
    def terms(self) -> tuple[float, float, float]:
        """``(bytes_per_second, started_at, allowance_s)``: what :meth:`admit` weighs a frame
        against (the bridge's compiled lane admits by the same rule)."""
        return self._bytes_per_second, self._started_at, self._allowance_s

    def admit(self, nbytes: int, now: float) -> bool:
        """Whether ``nbytes`` of audio arriving at ``now`` may go on (else it is counted)."""
        seconds = nbytes / self._bytes_per_second
        if self.admitted_s + seconds > now - self._started_at + self._allowance_s:
            self.dropped_s += seconds
            return False
        self.admitted_s += seconds
        return True
