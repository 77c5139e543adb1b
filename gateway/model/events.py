"""What a model conversation tells the call bridge, in plain terms, whoever the provider.

Gemini's ``LiveServerMessage`` mixes audio, transcripts, tool calls and session bookkeeping in
one nested object whose shape differs between model generations; OpenAI Realtime sends one small
event per thing but in its own vocabulary. Each session flattens what it receives into these
events, in order, so the bridge handles one small thing at a time and never sees an SDK type.
Some events are one provider's only (handles and ``goAway`` are Gemini's, ``CallerTurnEnded``
is OpenAI's); the bridge handles each the same whoever sends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AudioOut:
    """Model speech, in the session's output format (``ModelSession.audio.output``): PCM16
    little-endian at 24 kHz, or G.711 at 8 kHz when the provider speaks the carrier's codec."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class CallerTranscript:
    """A piece of the model's transcription of the caller's speech.

    ``late``: it arrived after the utterance was over (OpenAI transcribes asynchronously, often
    once the answer has begun), so it says nothing about when the caller spoke.
    """

    text: str
    late: bool = False


@dataclass(frozen=True, slots=True)
class CallerTurnEnded:
    """The provider's turn detection found the end of a caller utterance: the model's next
    audio answers it (Gemini does not report this; its transcripts mark the caller's turns)."""


@dataclass(frozen=True, slots=True)
class AgentTranscript:
    """A piece of the model's transcription of its own speech."""

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
    """Tokens the provider counted for one model turn (Gemini's ``usageMetadata``, OpenAI's
    ``response.usage``), as it bills them.

    Per turn, not a running total: each turn's ``input_tokens`` is everything the model
    processed for that turn (system instruction, tools, the session's context so far and the
    new input), so it grows through a conversation, and a call's usage is the sum of these
    over its turns and over its connections (handoffs and reconnects open new sessions).
    ``total_tokens`` is the provider's own total, which (on Gemini) also counts tool-use prompts
    and thoughts, so it may exceed the sum of the other two.
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

    ``reason`` is ``goaway`` (planned: the server announced the end of the connection),
    ``expired`` (OpenAI's session reached its time limit) or ``dropped`` (a fault); ``detail``
    says more (close code and reason).
    """

    reason: str
    resumed: bool
    elapsed_ms: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The conversation with the model is over for good; the call cannot continue."""

    reason: str
    code: int | None = None


LiveEvent = (
    AudioOut
    | CallerTranscript
    | CallerTurnEnded
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
