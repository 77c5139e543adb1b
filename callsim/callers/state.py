"""What a carrier does with a gateway's traffic on one stream, as a sans-I/O state machine.

:class:`CallerState` is the part of the caller simulator that decides: it validates each frame,
feeds valid media, marks and clears into the carrier's playback buffer model, keeps the *heard*
timeline one 20 ms tick at a time, queues mark echoes in the order the carrier would send them
(and, for Telnyx, the ``error`` events it answers bad frames with), and records everything in a
:class:`~callsim.callers.result.CallResult`. It has no sockets and no clock (``now`` is
passed in), and every method is synchronous, so in the asyncio caller each state change is atomic
between awaits; :mod:`callsim.callers.twilio` only moves bytes and keeps time.

Twilio and Telnyx share the buffer semantics (marks echoed once played, ``clear`` flushes and
echoes); what differs is in :class:`StreamRules`: how a frame is parsed, and what the heard
timeline holds (Twilio: μ-law bytes as received; Telnyx: PCM16 decoded from the codec).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from callsim.callers.playback import TWILIO_MAX_BUFFERED_BYTES, ULAW_SILENCE, PlaybackBuffer
from callsim.callers.result import CallEvent, CallResult, MarkEcho
from callsim.twilio.peer import (
    FRAME_BYTES,
    FRAME_S,
    GatewayFrame,
    Violation,
    format_violation,
    parse_gateway_frame,
)

__all__ = ["CallerState", "Emit", "StreamRules", "twilio_rules"]

log = logging.getLogger("callsim.callers")

Emit = Callable[[CallEvent], None]


@dataclass(frozen=True)
class StreamRules:
    """What one carrier's stream needs from the shared state machine.

    ``parse`` validates a frame from the gateway (bound to the stream's ids and codec);
    ``decode`` turns an accepted media payload into heard-timeline bytes (``None``: as is), and is
    called once per payload in arrival order, so it may be a stateful decoder. ``tick_bytes`` is
    one 20 ms tick of the heard timeline, ``silence`` its fill byte, ``frame_bytes`` one 20 ms
    frame of the codec (payloads of other multiples are listed in ``odd_media_sizes``).
    """

    parse: Callable[[str | bytes], GatewayFrame]
    frame_bytes: int = FRAME_BYTES
    tick_bytes: int = FRAME_BYTES
    silence: int = ULAW_SILENCE
    decode: Callable[[bytes], bytes] | None = None
    capacity_bytes: int | None = None
    overflow_violation: str = ""


def twilio_rules(stream_sid: str) -> StreamRules:
    """Twilio: μ-law 8 kHz heard as received, at most 10 minutes buffered."""
    return StreamRules(
        parse=partial(parse_gateway_frame, stream_sid=stream_sid),
        capacity_bytes=TWILIO_MAX_BUFFERED_BYTES,
        overflow_violation=format_violation(
            Violation.BUFFER_OVERFLOW,
            "more than 10 minutes of audio buffered; Twilio discards the rest (31931)",
        ),
    )


class CallerState:
    """The carrier's bookkeeping for one call; see the module docstring.

    ``rules`` default to Twilio's for ``result.stream_sid``; a carrier that negotiates its codec
    during call setup passes them later, through :meth:`use_rules`, before the stream starts.
    """

    def __init__(self, result: CallResult, emit: Emit, rules: StreamRules | None = None) -> None:
        self.result = result
        self._emit = emit
        self._heard = bytearray()
        self._ticks = 0
        self._echoes: deque[tuple[str, bool]] = deque()  # (mark name, cleared), in send order
        self._replies: deque[dict[str, Any]] = deque()  # carrier answers to bad frames
        self._ending = False
        self._overflow_reported = False
        self.use_rules(rules or twilio_rules(result.stream_sid))

    def use_rules(self, rules: StreamRules) -> None:
        """Set the carrier rules; only before anything was played or received."""
        if self._ticks or self.result.received:
            raise RuntimeError("stream rules must be set before the stream starts")
        self._rules = rules
        self._playback = PlaybackBuffer(capacity_bytes=rules.capacity_bytes, silence=rules.silence)

    @property
    def ending(self) -> bool:
        """True once either side ended the call: nothing plays or is echoed any more."""
        return self._ending

    def next_tick_at(self) -> float:
        """Monotonic time of the next playout tick: tick ``j`` is due ``j`` x 20 ms after start."""
        assert self.result.started_at is not None
        return self.result.started_at + self._ticks * FRAME_S

    def tick(self) -> None:
        """Play the next 20 ms onto the heard timeline; queue echoes of marks now played."""
        audio, marks = self._playback.play(self._rules.tick_bytes)
        self._heard += audio
        self._ticks += 1
        self._echoes.extend((name, False) for name in marks)

    def advance(self, now: float) -> None:
        """Play every tick due by ``now`` (none before the stream started, or once it ended).

        Called before applying anything that happened at ``now``, so a frame is never played by
        a tick due before it arrived, even when the playout task wakes up late.
        """
        if self._ending or self.result.started_at is None:
            return
        while self.next_tick_at() <= now:
            self.tick()

    def next_echo(self) -> tuple[str, bool] | None:
        """The next mark echo to send, ``(name, cleared)``; None if none, or the call is over."""
        if self._ending or not self._echoes:
            return None
        return self._echoes.popleft()

    def next_reply(self) -> dict[str, Any] | None:
        """The next carrier answer to a bad frame (Telnyx ``error``); None if none, or ended."""
        if self._ending or not self._replies:
            return None
        return self._replies.popleft()

    def echo_sent(self, name: str, cleared: bool, now: float) -> None:
        """Record that the echo of ``name`` reached the socket."""
        self.result.mark_echoes.append(MarkEcho(now, name, cleared))
        self._emit(CallEvent("mark_echoed", now, name=name, cleared=cleared))

    def violation(self, text: str, now: float) -> None:
        """Record a protocol violation."""
        log.warning("gateway protocol violation: %s", text)
        self.result.violations.append(text)
        self._emit(CallEvent("violation", now, detail=text))

    def on_frame(self, frame: str | bytes, now: float) -> None:
        """Handle one WebSocket frame from the gateway, received at ``now``."""
        self.advance(now)
        res = self.result
        rules = self._rules
        parsed = rules.parse(frame)
        if parsed.message is not None:
            res.received.append((now, parsed.message))
        for text in parsed.violations:
            self.violation(text, now)
        if parsed.reply is not None and not self._ending:
            self._replies.append(parsed.reply)
        if parsed.event == "media":
            size = len(parsed.payload)
            res.media_messages_received += 1
            res.media_bytes_received += size
            if res.first_media_time is None:
                res.first_media_time = now
            if size % rules.frame_bytes:
                res.odd_media_sizes.append(size)
        if self._ending or parsed.event is None:
            return  # invalid (the carrier ignores it), or the call is over: nothing plays any more
        if parsed.event == "media":
            audio = parsed.payload if rules.decode is None else rules.decode(parsed.payload)
            kept = self._playback.push_media(audio)
            if kept < len(audio) and not self._overflow_reported:
                self._overflow_reported = True
                self.violation(rules.overflow_violation, now)
            self._emit(CallEvent("media_received", now, message=parsed.message))
        elif parsed.event == "mark":
            self._playback.push_mark(parsed.mark_name)
            self._emit(CallEvent("mark_received", now, name=parsed.mark_name))
        else:
            res.clear_times.append(now)
            # Marks whose audio already played are echoed as played, the rest as flushed;
            # the carrier sends both the same way, the flag is only for the record.
            self._echoes.extend((name, False) for name in self._playback.take_played_marks())
            self._echoes.extend((name, True) for name in self._playback.clear())
            self._emit(CallEvent("clear_received", now))

    def end(self, by: Literal["gateway", "caller"], now: float) -> bool:
        """Mark the call as ended at ``now`` by ``by``; False if it already was.

        Plays the ticks due up to ``now``, so ``heard`` covers the call to its end whatever the
        playout task managed before it stopped.
        """
        if self._ending:
            return False
        self.advance(now)
        self._ending = True
        self.result.closed_by, self.result.ended_at = by, now
        return True

    def finish(self) -> None:
        """Copy the final heard timeline and what was left unplayed into the result."""
        res = self.result
        res.heard = bytes(self._heard)
        res.unplayed_bytes = self._playback.buffered_bytes
        res.unechoed_marks = [name for name, _ in self._echoes] + self._playback.pending_marks
