"""What a simulated Twilio call observed: the record tests assert on and the CLI prints.

Times are ``time.monotonic()`` values so in-process tests can compare them with timestamps taken
by other peers (the gateway, the Live simulator). ``heard`` is on the *call timeline*: byte ``i``
is what the caller heard ``i / 8000`` seconds after the ``start`` message was sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gateway.simulator.caller_audio import SAMPLE_RATE, ulaw_to_pcm16
from gateway.simulator.twilio_peer import violation_kind
from gateway.simulator.wav import write_wav

__all__ = [
    "CallEvent",
    "CallResult",
    "EventKind",
    "MarkEcho",
    "ProtocolViolationError",
    "TimingStats",
]

EventKind = Literal[
    "stream_open",  # WebSocket handshake done; `connected` and `start` follow at once
    "started",  # `start` sent: the call timeline begins (CallResult.started_at)
    "dtmf_sent",  # detail: the digit
    "audio_ended",  # the caller's scripted audio has been sent; silence (linger) follows
    "media_received",  # message: the gateway's media message
    "mark_received",  # name: the mark's name
    "clear_received",
    "mark_echoed",  # name, cleared
    "violation",  # detail: the violation string
    "hangup",  # the caller is hanging up (detail: stop | close | drop)
    "closed",  # the WebSocket is closed; detail: "gateway" or "caller"
]


@dataclass(frozen=True)
class CallEvent:
    """Something that happened during the call, delivered to ``on_event`` as it happens."""

    kind: EventKind
    time: float
    message: dict[str, Any] | None = None
    name: str = ""
    cleared: bool = False
    detail: str = ""


@dataclass(frozen=True)
class MarkEcho:
    """A mark echoed to the gateway: ``cleared`` when a ``clear`` flushed its audio unplayed."""

    time: float
    name: str
    cleared: bool


@dataclass(frozen=True)
class TimingStats:
    """How late a real-time loop ran against its absolute schedule, in milliseconds."""

    samples: int = 0
    mean_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, lateness_s: list[float]) -> TimingStats:
        """Summarize per-iteration lateness values (seconds)."""
        if not lateness_s:
            return cls()
        ordered = sorted(lateness_s)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        return cls(
            samples=len(ordered),
            mean_ms=1000 * sum(ordered) / len(ordered),
            p99_ms=1000 * p99,
            max_ms=1000 * ordered[-1],
        )


class ProtocolViolationError(AssertionError):
    """Raised by :meth:`CallResult.raise_for_violations`."""


@dataclass
class CallResult:
    """Everything observed during one call (also readable live, while the call runs)."""

    webhook_url: str
    call_sid: str
    account_sid: str
    stream_sid: str
    webhook_status: int | None = None
    webhook_latency_s: float | None = None
    twiml: str = ""
    twiml_stream_url: str | None = None  # the <Stream url> as Twilio would use it
    stream_url: str | None = None  # the URL actually connected to (may be an override)
    parameters: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    heard: bytes = b""
    sent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)
    mark_echoes: list[MarkEcho] = field(default_factory=list)
    media_messages_received: int = 0
    media_bytes_received: int = 0
    odd_media_sizes: list[int] = field(default_factory=list)  # payloads not a multiple of 160
    first_media_time: float | None = None
    unplayed_bytes: int = 0  # gateway audio still buffered when the call ended (cut off)
    unechoed_marks: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: Literal["gateway", "caller"] | None = None  # None: no stream was opened
    send_timing: TimingStats = field(default_factory=TimingStats)
    playout_timing: TimingStats = field(default_factory=TimingStats)

    def call_time(self, t: float) -> float:
        """Seconds between ``start`` and monotonic time ``t``."""
        if self.started_at is None:
            raise ValueError("the stream never started")
        return t - self.started_at

    def heard_pcm(self) -> bytes:
        """What the caller heard, as PCM16 8 kHz on the call timeline."""
        return ulaw_to_pcm16(self.heard)

    def heard_between(self, start_s: float, end_s: float) -> bytes:
        """μ-law heard between two call times (seconds after ``start``)."""
        return self.heard[round(start_s * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)]

    def heard_onset_s(self, min_level: int = 64) -> float | None:
        """Call time of the first heard sample with ``|PCM16| > min_level`` (None: silence)."""
        pcm = np.frombuffer(self.heard_pcm(), dtype="<i2").astype(np.int32)
        loud = np.flatnonzero(np.abs(pcm) > min_level)
        return float(loud[0]) / SAMPLE_RATE if loud.size else None

    def write_wav(self, path: str | Path) -> None:
        """Save what the caller heard as a mono PCM16 8 kHz WAV."""
        write_wav(path, self.heard_pcm(), SAMPLE_RATE)

    def violation_kinds(self) -> list[str]:
        """The :class:`~gateway.simulator.twilio_peer.Violation` value of each violation."""
        return [violation_kind(v) for v in self.violations]

    def raise_for_violations(self) -> None:
        """Fail loudly if the gateway broke Twilio's protocol anywhere in the call."""
        if self.violations:
            lines = "\n  ".join(self.violations)
            raise ProtocolViolationError(f"{len(self.violations)} violation(s):\n  {lines}")

    def summary(self) -> str:
        """A few human-readable lines for the CLI."""
        lines = [f"call {self.call_sid} -> {self.webhook_url} (HTTP {self.webhook_status})"]
        if self.started_at is not None and self.ended_at is not None:
            lines.append(
                f"stream {self.stream_url}: {self.ended_at - self.started_at:.2f} s, "
                f"ended by {self.closed_by} (close {self.close_code} {self.close_reason!r})"
            )
            lines.append(
                f"heard {len(self.heard) / SAMPLE_RATE:.2f} s; received "
                f"{self.media_messages_received} media ({self.media_bytes_received} bytes), "
                f"{len(self.clear_times)} clear, {len(self.mark_echoes)} marks echoed"
            )
            if self.unplayed_bytes or self.unechoed_marks:
                lines.append(
                    f"cut off at hang-up: {self.unplayed_bytes / SAMPLE_RATE:.2f} s unplayed, "
                    f"marks never echoed: {self.unechoed_marks}"
                )
            lines.append(
                f"timing: send late max {self.send_timing.max_ms:.1f} ms, "
                f"playout late max {self.playout_timing.max_ms:.1f} ms"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"VIOLATION {v}" for v in self.violations]
        if not self.violations:
            lines.append("no protocol violations")
        return "\n".join(lines)
