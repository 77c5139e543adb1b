"""What the Realtime simulator saw and did on each connection: plain dataclasses that tests read
after (or during) a call. Audio is kept in the wire format of the session (the bytes the client
sent or received), so a test can compare it byte for byte with its own side of the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ItemType = Literal["message", "function_call", "function_call_output"]
ItemSource = Literal["client", "model", "caller_audio"]
ResponseStatus = Literal["in_progress", "completed", "cancelled", "failed", "incomplete"]
ResponseTrigger = Literal["client", "vad"]


@dataclass
class ItemRecord:
    """One conversation item, from the client or generated, in conversation order."""

    id: str
    type: ItemType
    source: ItemSource
    role: str | None = None
    #: input_text/output_text joined, or the audio transcript (caller or assistant).
    text: str = ""
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    #: Assistant audio sent for this item (in the session's output format), late deltas included.
    audio: bytearray = field(default_factory=bytearray)
    truncated_at_ms: int | None = None
    status: str = "completed"
    deleted: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "role": self.role,
            "text": self.text,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
            "output": self.output,
            "audio_bytes": len(self.audio),
            "truncated_at_ms": self.truncated_at_ms,
            "status": self.status,
            "deleted": self.deleted,
        }


@dataclass
class ResponseRecord:
    """One response: why it started and how it ended."""

    id: str
    trigger: ResponseTrigger
    status: ResponseStatus = "in_progress"
    output_item_ids: list[str] = field(default_factory=list)
    #: ``status_details.reason`` of a cancelled response (turn_detected, client_cancelled).
    reason: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "status": self.status,
            "reason": self.reason,
            "output_item_ids": list(self.output_item_ids),
        }


@dataclass
class RealtimeConnectionRecord:
    """Everything about one accepted websocket (``index`` counts from 0 per simulator)."""

    index: int
    model: str
    authorized: bool
    beta_header: str | None
    opened_at: float
    session: dict[str, Any] = field(default_factory=dict)
    #: Every ``session`` payload of a ``session.update``, in order (refused ones too).
    session_updates: list[dict[str, Any]] = field(default_factory=list)
    items: list[ItemRecord] = field(default_factory=list)
    #: The decoded bytes of every ``input_audio_buffer.append``, in the input format.
    audio_in: bytearray = field(default_factory=bytearray)
    #: Bytes per second of ``audio_in`` as it was appended (for ``audio_in_seconds``).
    audio_in_seconds_total: float = 0.0
    truncations: list[tuple[str, int, int]] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    client_events: list[tuple[float, str]] = field(default_factory=list)
    sent_events: list[tuple[float, str]] = field(default_factory=list)
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    speech_started_at: list[float] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["client", "server"] | None = None
    closed_at: float | None = None
    #: Set by ``fail_next_connects(error_code=...)``: refused after the upgrade.
    injected_failure: str | None = None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def audio_in_seconds(self) -> float:
        """Seconds of caller audio appended (each append measured in its own input format)."""
        return self.audio_in_seconds_total

    @property
    def voice(self) -> str:
        return str(self._output().get("voice") or "")

    @property
    def instructions(self) -> str:
        return str(self.session.get("instructions") or "")

    @property
    def tool_names(self) -> list[str]:
        tools = self.session.get("tools") or []
        return [str(tool.get("name")) for tool in tools if isinstance(tool, dict)]

    @property
    def input_format(self) -> dict[str, Any]:
        return dict(self._input().get("format") or {})

    @property
    def output_format(self) -> dict[str, Any]:
        return dict(self._output().get("format") or {})

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        value = self._input().get("turn_detection")
        return dict(value) if isinstance(value, dict) else None

    @property
    def transcription(self) -> dict[str, Any] | None:
        value = self._input().get("transcription")
        return dict(value) if isinstance(value, dict) else None

    def item(self, item_id: str) -> ItemRecord | None:
        """The item with this id, if the conversation ever had it."""
        return next((item for item in self.items if item.id == item_id), None)

    def sent(self, event_type: str) -> int:
        """How many events of this type were sent."""
        return sum(1 for _, kind in self.sent_events if kind == event_type)

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest for the control route: no audio, no credentials."""
        return {
            "index": self.index,
            "model": self.model,
            "authorized": self.authorized,
            "beta_header": self.beta_header,
            "is_open": self.is_open,
            "voice": self.voice,
            "instructions": self.instructions,
            "tool_names": self.tool_names,
            "input_format": self.input_format,
            "output_format": self.output_format,
            "turn_detection": self.turn_detection,
            "transcription": self.transcription,
            "session_updates": len(self.session_updates),
            "items": [item.summary() for item in self.items],
            "audio_in_bytes": len(self.audio_in),
            "audio_in_seconds": round(self.audio_in_seconds, 3),
            "truncations": [list(cut) for cut in self.truncations],
            "responses": [response.summary() for response in self.responses],
            "client_events": len(self.client_events),
            "sent_events": len(self.sent_events),
            "errors_sent": list(self.errors_sent),
            "speech_started": len(self.speech_started_at),
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
            "injected_failure": self.injected_failure,
        }

    def _input(self) -> dict[str, Any]:
        audio = self.session.get("audio") or {}
        value = audio.get("input") if isinstance(audio, dict) else None
        return value if isinstance(value, dict) else {}

    def _output(self) -> dict[str, Any]:
        audio = self.session.get("audio") or {}
        value = audio.get("output") if isinstance(audio, dict) else None
        return value if isinstance(value, dict) else {}
