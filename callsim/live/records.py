"""What the Live simulator remembers, for tests to assert on: one :class:`ConnectionRecord` per
websocket connection and one :class:`SessionRecord` per logical (resumable) session.

A session's history keeps every event, including those a resume rolled back: such entries are
flagged ``lost`` and left out of everything the simulated model knows (:meth:`SessionRecord.known`,
``texts``, ``heard_by``, ``caller_turns_answered``, ``utterances_heard``). Each resumption handle
maps to a :class:`HandlePoint`, the state it restores (see ``callsim.live.sessions``).

Records hold the API key (tests assert on it) but keep it, and the received audio, out of
``repr`` and out of :meth:`ConnectionRecord.summary`, which the HTTP control route serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from callsim.live.audio import INPUT_RATE
from callsim.live.voices import DEFAULT_VOICE

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
    #: Duration of a ``caller`` utterance as heard (first to last loud 20 ms window), in seconds.
    seconds: float | None = None
    #: Index (on this entry's connection) of the non-audio client message this entry comes from:
    #: the text, ``clientContent`` or ``toolResponse`` itself, or the text turn a model turn
    #: answers. None for caller utterances and what answers them. Used to leave entries out of a
    #: handle's state when their message is after the handle's last consumed client message.
    message_index: int | None = None
    #: Rolled back by a resume: the session (the simulated model) no longer knows this event.
    lost: bool = False


@dataclass(frozen=True)
class HandlePoint:
    """The session state a resumption handle restores, captured when the handle was issued.

    ``history_length`` entries existed then; of those, the indices in ``lost`` were not part of
    the state (rolled back earlier, or caused by client messages after ``last_consumed_index``).
    ``caller_utterances`` is the session's utterance counter at that moment, and
    ``last_consumed_index`` the index of the last client message on ``connection_index`` whose
    effect the state includes (setup = 0).
    """

    handle: str
    connection_index: int
    history_length: int
    lost: frozenset[int]
    caller_utterances: int
    last_consumed_index: int


@dataclass(eq=False)
class SessionRecord:
    """A logical session: one or more connections joined by resumption handles."""

    id: int
    model: str
    resumable: bool
    connection_indexes: list[int] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    #: Caller utterances the session knows of (restored to the handle's count on a resume).
    caller_utterances: int = 0
    points: dict[str, HandlePoint] = field(default_factory=dict, repr=False)

    @property
    def known(self) -> list[HistoryEntry]:
        """The history the simulated model knows: every entry not rolled back by a resume."""
        return [entry for entry in self.history if not entry.lost]

    @property
    def lost(self) -> list[HistoryEntry]:
        """Entries rolled back by a resume (recorded after the handle the client resumed with)."""
        return [entry for entry in self.history if entry.lost]

    def texts(self, *kinds: HistoryKind, include_lost: bool = False) -> list[str]:
        """Texts of the known history entries of the given kinds (all kinds if none given)."""
        entries = self.history if include_lost else self.known
        return [entry.text for entry in entries if not kinds or entry.kind in kinds]

    def utterances_heard(
        self, connection_index: int | None = None, *, include_lost: bool = False
    ) -> list[float]:
        """Durations (s) of the caller utterances the session heard, in order.

        ``connection_index`` keeps only those heard on that connection, e.g. "the resumed
        connection heard one 2.4 s utterance": ``utterances_heard(1) == [approx(2.4, abs=0.03)]``.
        Lost utterances are left out unless ``include_lost``.
        """
        entries = self.history if include_lost else self.known
        return [
            entry.seconds
            for entry in entries
            if entry.kind == "caller"
            and entry.seconds is not None
            and (connection_index is None or entry.connection_index == connection_index)
        ]

    def snapshot(self, handle: str, connection_index: int, last_consumed_index: int) -> HandlePoint:
        """The state a handle issued now on ``connection_index`` stands for.

        Entries caused by that connection's client messages after ``last_consumed_index`` are
        not part of it (a transparent client replays those messages after resuming).
        """
        lost = frozenset(
            index
            for index, entry in enumerate(self.history)
            if entry.lost
            or (
                entry.connection_index == connection_index
                and entry.message_index is not None
                and entry.message_index > last_consumed_index
            )
        )
        return HandlePoint(
            handle=handle,
            connection_index=connection_index,
            history_length=len(self.history),
            lost=lost,
            caller_utterances=self.caller_utterances,
            last_consumed_index=last_consumed_index,
        )

    def restore(self, point: HandlePoint) -> int:
        """Roll the session back to ``point``; return how many known entries became lost."""
        rolled_back = 0
        for index, entry in enumerate(self.history):
            lost = index >= point.history_length or index in point.lost
            if lost and not entry.lost:
                rolled_back += 1
            entry.lost = lost
        self.caller_utterances = point.caller_utterances
        return rolled_back

    def caller_turns_answered(self, system_instruction: str) -> int:
        """How many caller turns the agent with this system instruction has answered.

        A turn interrupted before it said anything does not count.
        """
        return sum(
            1
            for entry in self.known
            if entry.kind == "model"
            and entry.trigger == "caller"
            and entry.system_instruction == system_instruction
            and (entry.text or not entry.interrupted)
        )

    def heard_by(self, system_instruction: str) -> list[str]:
        """Caller transcripts heard while this system instruction was active (known ones)."""
        return [
            entry.text
            for entry in self.known
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
                    "seconds": entry.seconds,
                    "lost": entry.lost,
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
    #: The client's TCP port (its address is 127.0.0.1 here): tells this connection's packets
    #: in a capture of the loopback (``benchmarks/wire.py``).
    client_port: int | None = None
    #: The client's ``Sec-WebSocket-Extensions`` offer (e.g. permessage-deflate), as sent.
    extensions_offered: str = ""
    model: str | None = None
    setup_raw: JsonObject | None = field(default=None, repr=False)
    setup: JsonObject | None = field(default=None, repr=False)
    voice: str = DEFAULT_VOICE
    system_instruction: str = ""
    function_declarations: list[JsonObject] = field(default_factory=list, repr=False)
    resumption_requested: bool = False
    #: The setup asked for ``sessionResumption.transparent`` (Vertex AI; the SDK refuses it for
    #: the Developer API): handle updates then carry ``lastConsumedClientMessageIndex``.
    transparent: bool = False
    handle_requested: str | None = None
    resumed: bool = False
    #: The handle this connection resumed the session from, and how many history entries that
    #: resume rolled back (events after the handle, now lost).
    resumed_from: str | None = None
    rolled_back: int = 0
    session_id: int | None = None
    setup_completed: bool = False
    injected_failure: bool = False
    frames_received: int = 0
    #: (index, kind) of every valid client message, setup = 0; kinds: ``setup``, ``audio``,
    #: ``media``, ``text``, ``activity_start``, ``activity_end``, ``audio_stream_end``,
    #: ``client_content``, ``tool_response``, ``context_update`` (``+``-joined when a message
    #: holds several, ``empty`` when none).
    client_messages: list[tuple[int, str]] = field(default_factory=list)
    #: (handle, last consumed client message index) of every handle issued on this connection.
    handles_issued: list[tuple[str, int]] = field(default_factory=list)
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
    #: Function responses that answered no call pending on this connection (a call issued on an
    #: earlier connection, one already answered, cancelled or timed out, or an unknown id). The
    #: model ignores them: they are not in the session history.
    stray_tool_responses: list[JsonObject] = field(default_factory=list, repr=False)
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
            "transparent": self.transparent,
            "handle_requested": self.handle_requested,
            "resumed": self.resumed,
            "resumed_from": self.resumed_from,
            "rolled_back": self.rolled_back,
            "session_id": self.session_id,
            "setup_completed": self.setup_completed,
            "injected_failure": self.injected_failure,
            "frames_received": self.frames_received,
            "client_messages": len(self.client_messages),
            "handles_issued": [list(item) for item in self.handles_issued],
            "realtime_mime_types": list(self.realtime_mime_types),
            "audio_in_bytes": len(self.audio_in),
            "realtime_texts": list(self.realtime_texts),
            "client_contents": len(self.client_contents),
            "activity": [kind for _, kind in self.activity],
            "tool_responses": list(self.tool_responses),
            "stray_tool_responses": list(self.stray_tool_responses),
            "audio_chunks_sent": sum(1 for m in self.sent if m.summary.startswith("audio ")),
            "sent": [
                [round(m.at, 4), m.kind, m.summary]
                for m in self.sent
                if not m.summary.startswith("audio ")
            ],
            "opened_at": self.opened_at,
            "client_port": self.client_port,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
        }
