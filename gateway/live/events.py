"""What a Gemini Live conversation tells the call bridge, in plain terms.

The SDK's ``LiveServerMessage`` mixes audio, transcripts, tool calls and session bookkeeping in
one nested object whose shape differs between model generations (one part per message on 2.5,
several on 3.x). The session flattens each message into these events, in order, so the bridge
handles one small thing at a time without walking SDK message types.

That holds for what the call *receives*: no event carries an SDK type. What the call *sends*
back as conversation turns (greeting, handoff opening, recap) is SDK ``types.Content``, built
by ``gateway/call/handoff.py`` for ``gateway/call/conversation.py``; the bridge module itself
imports nothing from the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AudioOut:
    """Model speech: PCM16 little-endian, 24 kHz mono."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class CallerTranscript:
    """A piece of Gemini's transcription of the caller's speech."""

    text: str


@dataclass(frozen=True, slots=True)
class AgentTranscript:
    """A piece of Gemini's transcription of its own speech."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCallCancelled:
    call_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The caller spoke over the model: everything it has said but not yet played is void."""


@dataclass(frozen=True, slots=True)
class TurnComplete:
    """The model finished its turn (its audio may still be playing to the caller)."""


@dataclass(frozen=True, slots=True)
class UsageReported:
    """Tokens Gemini counted for one model turn (its ``usageMetadata``), as it bills them.

    Per turn, not a running total: each turn's ``input_tokens`` is everything the model
    processed for that turn (system instruction, tools, the session's context so far and the
    new input), so it grows through a conversation, and a call's usage is the sum of these
    over its turns and over its connections (handoffs and reconnects open new sessions).
    ``total_tokens`` is Gemini's own total, which also counts tool-use prompts and thoughts,
    so it may exceed the sum of the other two.
    """

    input_tokens: int
    output_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class HandleUpdated:
    """Gemini issued a session-resumption handle: a resume restores the state as of now.

    ``consumed_index`` is the server's ``lastConsumedClientMessageIndex`` when it sends one
    (only with transparent resumption, a Vertex feature): the last client message it covers.
    """

    handle: str
    consumed_index: int | None = None


@dataclass(frozen=True, slots=True)
class GoAway:
    """The server will close this connection soon; ``time_left`` is a Duration like ``"50s"``."""

    time_left: str | None


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The session moved to a new connection without the bridge asking.

    ``reason`` is ``goaway`` (planned: the server announced the end of the connection) or
    ``dropped`` (a fault); ``detail`` says more (close code and reason).
    """

    reason: str
    resumed: bool
    elapsed_ms: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The conversation with Gemini is over for good; the call cannot continue."""

    reason: str
    code: int | None = None


LiveEvent = (
    AudioOut
    | CallerTranscript
    | AgentTranscript
    | ToolCall
    | ToolCallCancelled
    | Interrupted
    | TurnComplete
    | UsageReported
    | HandleUpdated
    | GoAway
    | Reconnected
    | SessionEnded
)
