"""What the Live simulator remembers, for tests to assert on: one :class:`ConnectionRecord` per
websocket connection and one :class:`SessionRecord` per logical (resumable) session.

Records hold the API key (tests assert on it) but keep it, and the received audio, out of
``repr`` and out of :meth:`ConnectionRecord.summary`, which the HTTP control route serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from gateway.simulator.live_audio import INPUT_RATE
from gateway.simulator.voices import DEFAULT_VOICE

JsonObject = dict[str, Any]
HistoryKind = Literal[
    "caller", "text", "seed", "model", "tool_call", "tool_response", "tool_cancelled"
]


class SentMessage(NamedTuple):
    """A message the simulator sent: monotonic time, top-level key, short description."""

    at: float
    kind: str
    summary: str


@dataclass(eq=False)
class HistoryEntry:
    """One event of a logical session's conversation.

    ``caller`` and ``text`` are user turns (``text`` is what the caller said, as transcribed, or
    the text sent); ``seed`` is a ``clientContent`` turn that only seeds history (``role`` tells
    whose); ``model`` is what the model said (``trigger`` says what it answered); the ``tool_*``
    kinds carry the call or response in ``data``. ``voice`` and ``system_instruction`` are those
    of the connection the event happened on, so continuity across resumes can be checked.
    """

    kind: HistoryKind
    text: str
    connection_index: int
    voice: str
    system_instruction: str
    at: float
    role: str = ""
    trigger: str | None = None
    interrupted: bool = False
    data: JsonObject | None = None


@dataclass(eq=False)
class SessionRecord:
    """A logical session: one or more connections joined by resumption handles."""

    id: int
    model: str
    resumable: bool
    created_at: float
    connection_indexes: list[int] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    caller_utterances: int = 0

    @property
    def last_handle(self) -> str | None:
        return self.handles[-1] if self.handles else None

    def texts(self, *kinds: HistoryKind) -> list[str]:
        """Texts of the history entries of the given kinds (all kinds if none given)."""
        return [entry.text for entry in self.history if not kinds or entry.kind in kinds]

    def caller_turns_answered(self, system_instruction: str) -> int:
        """How many caller turns the agent with this system instruction has answered.

        A turn interrupted before it said anything does not count.
        """
        return sum(
            1
            for entry in self.history
            if entry.kind == "model"
            and entry.trigger == "caller"
            and entry.system_instruction == system_instruction
            and (entry.text or not entry.interrupted)
        )

    def heard_by(self, system_instruction: str) -> list[str]:
        """Caller transcripts heard while this system instruction was active."""
        return [
            entry.text
            for entry in self.history
            if entry.kind == "caller" and entry.system_instruction == system_instruction
        ]

    def summary(self) -> JsonObject:
        return {
            "id": self.id,
            "model": self.model,
            "resumable": self.resumable,
            "connections": list(self.connection_indexes),
            "handles": list(self.handles),
            "caller_utterances": self.caller_utterances,
            "history": [
                {
                    "kind": entry.kind,
                    "text": entry.text,
                    "connection": entry.connection_index,
                    "voice": entry.voice,
                    "interrupted": entry.interrupted,
                }
                for entry in self.history
            ],
        }


@dataclass(eq=False)
class ConnectionRecord:
    """Everything observed on one websocket connection, in arrival order."""

    index: int
    path: str
    api_version: str
    method: str
    api_key: str = field(repr=False)
    opened_at: float
    model: str | None = None
    setup_raw: JsonObject | None = field(default=None, repr=False)
    setup: JsonObject | None = field(default=None, repr=False)
    voice: str = DEFAULT_VOICE
    system_instruction: str = ""
    function_declarations: list[JsonObject] = field(default_factory=list, repr=False)
    resumption_requested: bool = False
    handle_requested: str | None = None
    resumed: bool = False
    session_id: int | None = None
    setup_completed: bool = False
    injected_failure: bool = False
    frames_received: int = 0
    realtime_mime_types: list[str] = field(default_factory=list)
    audio_in: bytearray = field(default_factory=bytearray, repr=False)
    audio_in_started_at: float | None = None
    #: (monotonic arrival time, bytes) of every audio message, for latency measurements.
    audio_in_chunks: list[tuple[float, int]] = field(default_factory=list, repr=False)
    client_contents: list[JsonObject] = field(default_factory=list, repr=False)
    realtime_texts: list[str] = field(default_factory=list)
    activity: list[tuple[float, str]] = field(default_factory=list, repr=False)
    context_updates: list[JsonObject] = field(default_factory=list, repr=False)
    tool_responses: list[JsonObject] = field(default_factory=list, repr=False)
    sent: list[SentMessage] = field(default_factory=list, repr=False)
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["client", "server"] | None = None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def audio_in_seconds(self) -> float:
        """Seconds of caller audio received (assuming 16 kHz PCM16)."""
        return len(self.audio_in) / 2 / INPUT_RATE

    def sent_times(self, summary_prefix: str, kind: str = "serverContent") -> list[float]:
        """Send times of messages of ``kind`` whose summary starts with ``summary_prefix``.

        E.g. ``sent_times("interrupted")`` or ``sent_times("audio")`` for latency measurements.
        """
        return [m.at for m in self.sent if m.kind == kind and m.summary.startswith(summary_prefix)]

    def sent_summaries(self, *, include_audio: bool = False) -> list[str]:
        """``kind: summary`` strings of the sent messages, audio chunks left out by default."""
        return [
            f"{m.kind}: {m.summary}" if m.summary else m.kind
            for m in self.sent
            if include_audio or not m.summary.startswith("audio ")
        ]

    def summary(self) -> JsonObject:
        """A JSON-safe digest without the API key and without audio payloads."""
        return {
            "index": self.index,
            "path": self.path,
            "api_version": self.api_version,
            "method": self.method,
            "model": self.model,
            "voice": self.voice,
            "system_instruction": self.system_instruction,
            "functions": [d.get("name") for d in self.function_declarations],
            "resumption_requested": self.resumption_requested,
            "handle_requested": self.handle_requested,
            "resumed": self.resumed,
            "session_id": self.session_id,
            "setup_completed": self.setup_completed,
            "injected_failure": self.injected_failure,
            "frames_received": self.frames_received,
            "realtime_mime_types": list(self.realtime_mime_types),
            "audio_in_bytes": len(self.audio_in),
            "realtime_texts": list(self.realtime_texts),
            "client_contents": len(self.client_contents),
            "activity": [kind for _, kind in self.activity],
            "tool_responses": list(self.tool_responses),
            "audio_chunks_sent": sum(1 for m in self.sent if m.summary.startswith("audio ")),
            "sent": [
                [round(m.at, 4), m.kind, m.summary]
                for m in self.sent
                if not m.summary.startswith("audio ")
            ],
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
        }
