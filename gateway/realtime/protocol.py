"""OpenAI Realtime server events → the call's events, with no I/O (tested with plain dicts).

One :class:`RealtimeReader` per connection keeps what the translation needs to remember:

- which response is in progress, and which were interrupted: the service cancels an answer
  when the caller speaks over it, but audio already on its way still arrives after
  ``input_audio_buffer.speech_started``; those late deltas must never reach the caller;
- how much audio each assistant item delivered, so a barge-in can truncate the interrupted
  item at what the caller heard (:meth:`RealtimeReader.cut`);
- the function calls of the response in progress: they are handed over when the response is
  done, because the model cannot take their outputs and a new ``response.create`` while its
  response is still active (``conversation_already_has_active_response``).

Event names are the GA ones (openai 3.63 ``types.realtime``); the beta's ``response.audio.*``
names are not read. Anything else the service sends (``rate_limits.updated``, item
bookkeeping) is ignored.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway import wire
from gateway.model.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    CallerTurnEnded,
    Interrupted,
    LiveEvent,
    ToolCall,
    TurnComplete,
    UsageReported,
)

#: Error codes after which no retry can help: the call ends politely.
PERMANENT_ERROR_CODES: Final = frozenset({
    "invalid_api_key", "model_not_found", "insufficient_quota", "account_deactivated",
    "unsupported_country_region_territory", "organization_verification_required",
})  # fmt: skip
#: Error codes that are expected in a healthy call and say nothing about the session.
HARMLESS_ERROR_CODES: Final = frozenset({"response_cancel_not_active"})
#: At most this many spoken items are remembered for a truncation.
_SPOKEN_KEPT: Final = 16


@dataclass(frozen=True, slots=True)
class Configured:
    """``session.updated``: the session took the configuration."""


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` event. Most are recoverable (the session stays open)."""

    type: str
    code: str
    message: str

    @property
    def permanent(self) -> bool:
        return self.code in PERMANENT_ERROR_CODES

    @property
    def expired(self) -> bool:
        """The session reached its time limit (60 minutes); the service closes it next."""
        return self.code == "session_expired"


@dataclass(frozen=True, slots=True)
class ResponseFinished:
    """``response.done``: the response is over (the next ``response.create`` may go out).
    ``failed`` carries the error of a response the service could not produce."""

    status: str
    failed: ServerError | None = None


Signal = Configured | ServerError | ResponseFinished


@dataclass(slots=True)
class RealtimeReader:
    """See the module docstring. ``bytes_per_ms`` is the output format's (8 for G.711 at
    8 kHz, 48 for PCM16 at 24 kHz)."""

    bytes_per_ms: float
    active_response: str | None = None
    #: A ``response.create`` was sent and its ``response.created`` has not come yet.
    requested: bool = False
    #: Between the service's ``speech_started`` and ``speech_stopped``.
    caller_speaking: bool = False
    #: Responses the caller interrupted: what they still send is dropped.
    interrupted: set[str] = field(default_factory=set)
    #: [item id, audio ms delivered], oldest first, since the last barge-in.
    spoken: list[list[Any]] = field(default_factory=list)
    #: What ``spoken`` held at the newest barge-in: what :meth:`cut` truncates.
    at_barge_in: list[list[Any]] = field(default_factory=list)
    calls: dict[str, ToolCall] = field(default_factory=dict)

    def feed(self, message: Mapping[str, Any]) -> list[LiveEvent | Signal]:
        """The call's events (and the session's signals) for one server event, in order."""
        kind = message.get("type")
        if kind == "response.output_audio.delta":
            return self._audio(message)
        if kind == "response.output_audio_transcript.delta":
            if _text(message.get("response_id")) in self.interrupted:
                return []
            delta = message.get("delta")
            return [AgentTranscript(delta)] if isinstance(delta, str) and delta else []
        if kind == "input_audio_buffer.speech_started":
            return self._speech_started()
        if kind == "input_audio_buffer.speech_stopped":
            self.caller_speaking = False
            return [CallerTurnEnded()]
        if kind == "conversation.item.input_audio_transcription.completed":
            text = message.get("transcript")
            if not isinstance(text, str) or not text.strip():
                return []
            return [CallerTranscript(text.strip(), late=True)]
        if kind == "response.created":
            response = message.get("response")
            if isinstance(response, Mapping) and isinstance(response.get("id"), str):
                self.active_response = response["id"]
            self.requested = False
            return []
        if kind == "response.function_call_arguments.done":
            self._function_call(message)
            return []
        if kind == "response.done":
            return self._response_done(message.get("response"))
        if kind == "session.updated":
            return [Configured()]
        if kind == "error":
            return [server_error(message)]
        return []

    def cut(self, unheard_ms: float) -> list[tuple[str, int]]:
        """(item id, audio_end_ms) truncations for a barge-in that left the newest
        ``unheard_ms`` of the delivered audio unheard; newest item first."""
        truncations: list[tuple[str, int]] = []
        left = unheard_ms
        for item_id, delivered in reversed(self.at_barge_in):
            if left <= 0:
                break
            heard = max(0.0, delivered - left)
            truncations.append((item_id, int(heard)))
            left -= delivered
        self.at_barge_in = []
        return truncations

    def _audio(self, message: Mapping[str, Any]) -> list[LiveEvent | Signal]:
        if _text(message.get("response_id")) in self.interrupted:
            return []  # already in flight when the caller spoke over it
        try:
            audio = wire.b64decode(message.get("delta") or "")
        except (binascii.Error, ValueError, TypeError):
            return []
        if not audio:
            return []
        ms = len(audio) / self.bytes_per_ms
        item_id = message.get("item_id")
        if isinstance(item_id, str):
            if self.spoken and self.spoken[-1][0] == item_id:
                self.spoken[-1][1] += ms
            else:
                self.spoken.append([item_id, ms])
                del self.spoken[:-_SPOKEN_KEPT]
        return [AudioOut(audio)]

    def _speech_started(self) -> list[LiveEvent | Signal]:
        self.caller_speaking = True
        if self.active_response is not None:
            # The service cancels it (interrupt_response): drop what it still sends.
            self.interrupted.add(self.active_response)
        self.at_barge_in, self.spoken = self.spoken, []
        return [Interrupted()]

    def _function_call(self, message: Mapping[str, Any]) -> None:
        call_id, name = message.get("call_id"), message.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            return
        self.calls[call_id] = ToolCall(call_id, name, _arguments(message.get("arguments")))

    def _response_done(self, response: object) -> list[LiveEvent | Signal]:
        if not isinstance(response, Mapping):
            response = {}
        status = str(response.get("status") or "completed")
        response_id = _text(response.get("id"))
        if response_id == self.active_response:
            self.active_response = None
        if response_id is not None:
            self.interrupted.discard(response_id)
        output = response.get("output")
        for item in output if isinstance(output, list) else ():
            if isinstance(item, Mapping) and item.get("type") == "function_call":
                self._function_call(item)
        calls, self.calls = list(self.calls.values()), {}
        out: list[LiveEvent | Signal] = []
        usage = response.get("usage")
        if isinstance(usage, Mapping):
            out.append(
                UsageReported(
                    input_tokens=_count(usage, "input_tokens"),
                    output_tokens=_count(usage, "output_tokens"),
                    total_tokens=_count(usage, "total_tokens"),
                )
            )
        if status == "completed":
            out.extend(calls)  # a cancelled or failed response's calls were never made
        out.append(TurnComplete())
        failed = None
        if status == "failed":
            details = response.get("status_details")
            error = details.get("error") if isinstance(details, Mapping) else None
            failed = server_error({"error": error if isinstance(error, Mapping) else {}})
        out.append(ResponseFinished(status, failed))
        return out


def server_error(message: Mapping[str, Any]) -> ServerError:
    error = message.get("error")
    if not isinstance(error, Mapping):
        error = {}
    return ServerError(
        type=str(error.get("type") or "server_error"),
        code=str(error.get("code") or ""),
        message=str(error.get("message") or "")[:300],
    )


def _arguments(raw: object) -> dict[str, Any]:
    """The call's arguments: a JSON object in a string; anything else counts as none (the
    gateway's answer then tells the model what was missing)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw) if isinstance(raw, str | bytes) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    """An id, if it is one (the service's, or a malformed event's anything)."""
    return value if isinstance(value, str) else None


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) else 0
