"""Sans-I/O model of a carrier's outbound playback buffer on a two-way media stream.

Twilio buffers every ``media`` payload the gateway sends and plays it in order at 8000 μ-law
bytes per second; a ``mark`` sits in that byte stream exactly where it was sent and is echoed
back once the audio before it has played; ``clear`` drops everything buffered and echoes every
mark not echoed yet (so an echo means "played *or* flushed"). Telnyx documents the same mark and
``clear`` semantics; its simulator feeds the buffer decoded PCM16, so the buffer deals only in
bytes and a fill byte. The caller simulator needs exactly
that behaviour to decide what the caller *heard* and when to echo marks, and it must be testable
with plain bytes, so this module has no sockets and no clock: whoever owns the clock calls
:meth:`PlaybackBuffer.play` once per playout tick.

Positions are absolute offsets in the stream of all audio ever pushed. A mark pushed after
``k`` bytes sits at offset ``k``. Audio before offset ``p`` has "fully played" once a previous
``play`` call has emitted it, because the bytes a ``play`` call returns are heard during the
tick that follows the call. So a mark is returned by the first ``play`` call that starts at or
after its offset: never early (a gateway that hangs up on the final echo must not cut the
goodbye off), and at most one tick late.
"""

from __future__ import annotations

from collections import deque

ULAW_SILENCE = 0xFF
"""μ-law code for zero amplitude; 0x00 would be a full-scale negative click."""

TWILIO_MAX_BUFFERED_BYTES = 10 * 60 * 8000
"""Twilio discards media once more than 10 minutes is buffered (error 31931)."""


class PlaybackBuffer:
    """Audio and marks queued by the gateway, consumed by a playout clock.

    ``capacity_bytes`` bounds the buffered audio (``None``: unbounded). Audio beyond the bound is
    dropped and counted in :attr:`discarded_bytes`, as Twilio does past 10 minutes. ``silence``
    is the byte ``play`` pads with when the buffer runs dry: μ-law silence by default, 0 for a
    PCM16 timeline (every pushed chunk must then be whole samples).
    """

    def __init__(self, capacity_bytes: int | None = None, *, silence: int = ULAW_SILENCE) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if not 0 <= silence <= 255:
            raise ValueError(f"silence must be a byte value, got {silence}")
        self._silence = bytes([silence])
        self._capacity = capacity_bytes
        self._chunks: deque[bytes] = deque()
        self._head_skip = 0  # bytes of _chunks[0] already consumed
        self._buffered = 0
        self._pushed_total = 0  # stream offset just after the last accepted byte
        self._marks: deque[tuple[int, str]] = deque()  # (stream offset, name), in push order
        self._discarded = 0

    @property
    def buffered_bytes(self) -> int:
        """Audio bytes queued and not yet played or cleared."""
        return self._buffered

    @property
    def pending_marks(self) -> list[str]:
        """Names of marks pushed and not yet returned by ``play``/``clear``, in order."""
        return [name for _, name in self._marks]

    @property
    def discarded_bytes(self) -> int:
        """Audio bytes refused because the buffer was at capacity."""
        return self._discarded

    def push_media(self, payload: bytes) -> int:
        """Queue audio after everything already queued; return how many bytes were kept."""
        accepted = len(payload)
        if self._capacity is not None:
            accepted = max(0, min(accepted, self._capacity - self._buffered))
        self._discarded += len(payload) - accepted
        if accepted:
            self._chunks.append(bytes(payload[:accepted]))
            self._buffered += accepted
            self._pushed_total += accepted
        return accepted

    def push_mark(self, name: str) -> None:
        """Place a mark right after all audio pushed so far."""
        self._marks.append((self._pushed_total, name))

    def take_played_marks(self) -> list[str]:
        """Remove and return marks whose preceding audio was emitted by earlier ``play`` calls.

        ``play`` does this itself at the start of every tick; it is public so that a ``clear``
        handler can tell marks that really played from marks the clear flushed.
        """
        played_upto = self._pushed_total - self._buffered
        names: list[str] = []
        while self._marks and self._marks[0][0] <= played_upto:
            names.append(self._marks.popleft()[1])
        return names

    def clear(self) -> list[str]:
        """Drop all buffered audio; return every mark not yet returned, in push order."""
        self._chunks.clear()
        self._head_skip = 0
        self._buffered = 0
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def play(self, n_bytes: int) -> tuple[bytes, list[str]]:
        """Emit the next ``n_bytes`` of audio, padded with silence when the buffer runs dry.

        Returns ``(audio, marks)``: ``audio`` is always exactly ``n_bytes`` long; ``marks`` are
        the marks whose preceding audio had been emitted by earlier calls (see module docstring).
        """
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
        marks = self.take_played_marks()
        out = bytearray()
        while len(out) < n_bytes and self._chunks:
            head = self._chunks[0]
            take = min(n_bytes - len(out), len(head) - self._head_skip)
            out += head[self._head_skip : self._head_skip + take]
            self._head_skip += take
            self._buffered -= take
            if self._head_skip == len(head):
                self._chunks.popleft()
                self._head_skip = 0
        out += self._silence * (n_bytes - len(out))
        return bytes(out), marks
