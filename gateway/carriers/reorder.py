"""Putting media frames back in order, for carriers that do not guarantee it (Telnyx).

Telnyx says "the order of events is not guaranteed" and numbers media with ``media.chunk``.
Frames are released the moment they are next in line, so in-order traffic (the normal case)
waits for nothing; an early frame is held until the gap before it fills, but never more than
``window`` frames: past that, the missing frame is presumed lost and skipped, because waiting
longer would add latency to every frame after it. Duplicates and frames older than what was
already released are dropped.
"""

from __future__ import annotations


class Reorderer:
    """Sans-I/O reorder buffer keyed by a frame counter."""

    def __init__(self, window: int = 3, *, first: int | None = None) -> None:
        """``first`` is the number the stream starts at, when known: without it the first
        frame to arrive is taken as the start, and frames before it are dropped as late."""
        if window < 0:
            raise ValueError("window must be >= 0")
        self.window = window
        self._next: int | None = first
        self._held: dict[int, bytes] = {}
        self.duplicates = 0
        self.late = 0
        self.lost = 0

    def push(self, number: int, payload: bytes) -> list[bytes]:
        """Add frame ``number``; returns the frames now releasable, in order."""
        if self._next is None:
            self._next = number
        if number < self._next:
            self.late += 1  # released already (or skipped as lost): too late to use
            return []
        if number in self._held:
            self.duplicates += 1
            return []
        self._held[number] = payload
        out: list[bytes] = []
        while True:
            frame = self._held.pop(self._next, None)
            if frame is not None:
                out.append(frame)
                self._next += 1
                continue
            if len(self._held) <= self.window:
                return out
            # The gap has outlived the window: give the missing frames up for lost, in one
            # step (a stream numbered from a billion on must not cost a billion iterations).
            oldest = min(self._held)
            self.lost += oldest - self._next
            self._next = oldest

    def drain(self) -> list[bytes]:
        """Everything still held, in order (end of stream)."""
        out = [self._held[n] for n in sorted(self._held)]
        self._held.clear()
        return out
