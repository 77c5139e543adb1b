"""What a simulated call (Twilio, Telnyx or the browser) observed: the record tests assert on and
the CLI prints.

Times are ``time.monotonic()`` values so in-process tests can compare them with timestamps taken
by other peers (the gateway, the Live simulator, the fake Telnyx API). ``heard`` is on the *call
timeline*, which starts when the ``start`` message was sent. Its format depends on the carrier:
Twilio's is μ-law 8 kHz exactly as received (byte ``i`` was heard ``i / 8000`` s in); Telnyx's is
PCM16LE at ``heard_rate`` (8000 or 16000), decoded from the negotiated codec as each frame
arrived, because several codecs (G.722 is stateful ADPCM) cannot be compared byte for byte; the
browser's is PCM16LE at 24000 Hz exactly as received. ``heard_pcm()`` gives PCM16 for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callsim.callers.audio import SAMPLE_RATE, ulaw_to_pcm16
from callsim.twilio.peer import violation_kind
from callsim.wav import write_wav

__all__ = [
    "ApiRequest",
    "CallEvent",
    "CallResult",
    "EventKind",
    "MarkEcho",
    "ProtocolViolationError",
    "TimingStats",
    "WebhookDelivery",
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
    "webhook",  # Telnyx: a webhook was delivered; detail: "<event> <HTTP status>"
    "api_command",  # Telnyx: the gateway called the fake API; detail: "<action> <HTTP status>"
    "error_sent",  # Telnyx: an `error` event answered a frame Telnyx rejects; detail: the code
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
    max_ms: float = 0.0

    @classmethod
    def of(cls, lateness_s: list[float]) -> TimingStats:
        """Summarize per-iteration lateness values (seconds)."""
        if not lateness_s:
            return cls()
        return cls(samples=len(lateness_s), max_ms=1000 * max(lateness_s))


@dataclass(frozen=True)
class WebhookDelivery:
    """One webhook the simulated carrier POSTed to the gateway (Telnyx records every one)."""

    time: float
    event: str  # "texml" for the TeXML fetch, else the Call Control event_type
    status: int | None  # None: no HTTP answer
    signature: str  # how it was signed: valid | tampered | stale | missing


@dataclass(frozen=True)
class ApiRequest:
    """One request the gateway made to a fake carrier API (Telnyx Call Control or TeXML REST,
    Twilio's Calls update), and the answer."""

    time: float
    method: str
    path: str
    #: e.g. "answer", "streaming_start", "hangup"; "texml_update" (Telnyx TeXML REST),
    #: "update" (Twilio REST); "" when the path is not a command
    action: str
    body: Any  # parsed JSON, or the form as a dict (None if the body was neither)
    status: int  # HTTP status the fake API answered
    violations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: How it was authenticated, without the secret: "Basic <AccountSid>", "Bearer", or "".
    auth: str = ""

    @property
    def accepted(self) -> bool:
        """The command took effect (HTTP 2xx)."""
        return 200 <= self.status < 300


class ProtocolViolationError(AssertionError):
    """Raised by :meth:`CallResult.raise_for_violations`."""


@dataclass
class CallResult:
    """Everything observed during one call (also readable live, while the call runs)."""

    webhook_url: str  # the browser: POST /web/calls, which issues the call
    call_sid: str  # Telnyx: the call_control_id (TeXML's CallSid); the browser: the call_id
    account_sid: str  # Telnyx: the user_id (TeXML's AccountSid); the browser: ""
    stream_sid: str  # Telnyx: the stream_id; the browser: the issued stream_id
    webhook_status: int | None = None
    twiml: str = ""  # the webhook answer (Telnyx: TeXML; the browser: POST /web/calls' JSON)
    twiml_stream_url: str | None = None  # the <Stream url> (the browser: the issued stream_url)
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
    odd_media_sizes: list[int] = field(default_factory=list)  # not whole 20 ms frames
    first_media_time: float | None = None
    unplayed_bytes: int = 0  # gateway audio (in `heard`'s format) still buffered at the end
    unechoed_marks: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: Literal["gateway", "caller"] | None = None  # None: no stream was opened
    send_timing: TimingStats = field(default_factory=TimingStats)
    playout_timing: TimingStats = field(default_factory=TimingStats)
    # What Telnyx and the browser add (the defaults describe a Twilio call):
    carrier: Literal["twilio", "telnyx", "web"] = "twilio"
    mode: str = "twiml"  # twiml | texml | call-control | browser
    codec: str = "PCMU"  # what the caller sends (Telnyx start.media_format.encoding)
    bidirectional_codec: str = "PCMU"  # what the gateway must send back
    heard_rate: int = SAMPLE_RATE  # samples per second on the heard timeline
    heard_encoding: Literal["ulaw", "pcm16"] = "ulaw"
    call_session_id: str = ""
    webhooks: list[WebhookDelivery] = field(default_factory=list)
    #: Requests the gateway made about this call to the fake carrier API (Telnyx's Call Control
    #: and TeXML REST, Twilio's Calls update), in order.
    api_requests: list[ApiRequest] = field(default_factory=list)
    #: What the carrier ran once the stream was over: the markup a REST update put in place
    #: (``Hangup`` for ``Status=completed``), the Call Control hang-up or transfer (``Hangup``,
    #: ``Dial:<to>``), or else, when the gateway closed the stream itself, the verbs after
    #: ``</Connect>`` in the webhook answer. Empty when the caller hung up. Entries: ``Hangup``,
    #: ``Say:<text>``, ``Dial:<number>``, ``Sip:<uri>``, else the verb's tag.
    after_stream: list[str] = field(default_factory=list)

    @property
    def call_control_id(self) -> str:
        """Telnyx's name for the call id (TeXML's ``CallSid``)."""
        return self.call_sid

    @property
    def stream_id(self) -> str:
        """Telnyx's name for the stream id."""
        return self.stream_sid

    @property
    def heard_bytes_per_second(self) -> int:
        """Bytes of ``heard`` per second of call time."""
        return self.heard_rate * (1 if self.heard_encoding == "ulaw" else 2)

    @property
    def heard_s(self) -> float:
        """Length of the heard timeline in seconds."""
        return len(self.heard) / self.heard_bytes_per_second

    @property
    def unplayed_s(self) -> float:
        """Gateway audio still buffered when the call ended, in seconds."""
        return self.unplayed_bytes / self.heard_bytes_per_second

    def api_actions(self) -> list[str]:
        """The Call Control commands the gateway sent for this call, in order."""
        return [r.action for r in self.api_requests]

    def call_time(self, t: float) -> float:
        """Seconds between ``start`` and monotonic time ``t``."""
        if self.started_at is None:
            raise ValueError("the stream never started")
        return t - self.started_at

    def heard_pcm(self) -> bytes:
        """What the caller heard, as PCM16LE at ``heard_rate`` on the call timeline."""
        return ulaw_to_pcm16(self.heard) if self.heard_encoding == "ulaw" else self.heard

    def heard_between(self, start_s: float, end_s: float) -> bytes:
        """``heard`` between two call times (seconds after ``start``), in its own format."""
        width = self.heard_bytes_per_second // self.heard_rate
        start, end = round(start_s * self.heard_rate), round(end_s * self.heard_rate)
        return self.heard[start * width : end * width]

    def heard_onset_s(self, min_level: int = 64) -> float | None:
        """Call time of the first heard sample with ``|PCM16| > min_level`` (None: silence)."""
        pcm = np.frombuffer(self.heard_pcm(), dtype="<i2").astype(np.int32)
        loud = np.flatnonzero(np.abs(pcm) > min_level)
        return float(loud[0]) / self.heard_rate if loud.size else None

    def write_wav(self, path: str | Path) -> None:
        """Save what the caller heard as a mono PCM16 WAV at ``heard_rate``."""
        write_wav(path, self.heard_pcm(), self.heard_rate)

    def violation_kinds(self) -> list[str]:
        """The kind of each violation (a ``callsim.twilio.peer.Violation``,
        ``callsim.telnyx.peer.Violation`` or ``callsim.callers.web.Violation`` value)."""
        return [violation_kind(v) for v in self.violations]

    def raise_for_violations(self) -> None:
        """Fail loudly if the gateway broke the carrier's protocol anywhere in the call."""
        if self.violations:
            lines = "\n  ".join(self.violations)
            raise ProtocolViolationError(f"{len(self.violations)} violation(s):\n  {lines}")

    def summary(self) -> str:
        """A few human-readable lines for the CLI."""
        lines = [f"call {self.call_sid} -> {self.webhook_url} (HTTP {self.webhook_status})"]
        if self.carrier != "twilio":
            commands = f"; commands {self.api_actions()}" if self.carrier == "telnyx" else ""
            lines.append(
                f"{self.carrier} {self.mode}: caller sends {self.codec}, gateway must send "
                f"{self.bidirectional_codec}{commands}"
            )
        if self.started_at is not None and self.ended_at is not None:
            lines.append(
                f"stream {self.stream_url}: {self.ended_at - self.started_at:.2f} s, "
                f"ended by {self.closed_by} (close {self.close_code} {self.close_reason!r})"
            )
            lines.append(
                f"heard {self.heard_s:.2f} s; received "
                f"{self.media_messages_received} media ({self.media_bytes_received} bytes), "
                f"{len(self.clear_times)} clear, {len(self.mark_echoes)} marks echoed"
            )
            if self.unplayed_bytes or self.unechoed_marks:
                lines.append(
                    f"cut off at hang-up: {self.unplayed_s:.2f} s unplayed, "
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
