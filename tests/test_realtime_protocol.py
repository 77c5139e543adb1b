"""OpenAI Realtime server events → the call's events: the translation, with plain dicts.

The event shapes are the GA ones the openai SDK (3.63) types define; each test feeds what the
service sends in one situation and checks what the call would be told.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.model.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    CallerTurnEnded,
    Interrupted,
    ToolCall,
    TurnComplete,
    UsageReported,
)
from gateway.realtime.protocol import (
    Configured,
    RealtimeReader,
    ResponseFinished,
    ServerError,
)

ULAW_PER_MS = 8.0


def _delta(response: str, item: str, audio: bytes) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }


def _created(response: str) -> dict[str, Any]:
    return {"type": "response.created", "response": {"id": response, "status": "in_progress"}}


def _done(response: str, status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": response, "status": status, **extra}}


def test_audio_and_transcript_of_a_response_reach_the_call_in_order() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    assert reader.feed(_created("r1")) == []
    assert reader.active_response == "r1"
    out = reader.feed(_delta("r1", "i1", b"\x11" * 160))
    assert out == [AudioOut(b"\x11" * 160)]
    assert reader.feed(
        {"type": "response.output_audio_transcript.delta", "response_id": "r1", "delta": "Hi"}
    ) == [AgentTranscript("Hi")]
    usage = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
    out = reader.feed(_done("r1", usage=usage))
    assert out == [UsageReported(10, 4, 14), TurnComplete(), ResponseFinished("completed")]
    assert reader.active_response is None


def test_late_audio_of_an_interrupted_response_is_dropped() -> None:
    """The service cancels the answer at speech_started, but deltas already in flight still
    arrive after it: the caller must never hear them."""
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed(_created("r1"))
    reader.feed(_delta("r1", "i1", b"\x11" * 800))
    assert reader.feed({"type": "input_audio_buffer.speech_started", "audio_start_ms": 900}) == [
        Interrupted()
    ]
    assert reader.feed(_delta("r1", "i1", b"\x22" * 160)) == []
    assert (
        reader.feed(
            {"type": "response.output_audio_transcript.delta", "response_id": "r1", "delta": "x"}
        )
        == []
    )
    out = reader.feed(_done("r1", "cancelled", status_details={"reason": "turn_detected"}))
    assert out == [TurnComplete(), ResponseFinished("cancelled")]
    # The next response's audio plays again.
    reader.feed(_created("r2"))
    assert reader.feed(_delta("r2", "i2", b"\x33" * 160)) == [AudioOut(b"\x33" * 160)]


def test_a_cut_truncates_the_newest_item_at_what_was_heard() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed(_created("r1"))
    for _ in range(10):  # 10 x 100 ms of item i1
        reader.feed(_delta("r1", "i1", b"\x11" * 800))
    reader.feed({"type": "input_audio_buffer.speech_started"})
    assert reader.cut(250.0) == [("i1", 750)]
    assert reader.cut(100.0) == []  # one cut per barge-in


def test_a_cut_larger_than_the_newest_item_reaches_the_one_before() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed(_created("r1"))
    reader.feed(_delta("r1", "i1", b"\x11" * 4000))  # 500 ms
    reader.feed(_done("r1"))
    reader.feed(_created("r2"))
    reader.feed(_delta("r2", "i2", b"\x11" * 1600))  # 200 ms
    reader.feed({"type": "input_audio_buffer.speech_started"})
    assert reader.cut(300.0) == [("i2", 0), ("i1", 400)]


def test_the_audio_after_a_barge_in_is_not_cut_by_it() -> None:
    reader = RealtimeReader(48.0)  # PCM16 at 24 kHz
    reader.feed(_created("r1"))
    reader.feed(_delta("r1", "i1", bytes(4800)))  # 100 ms
    reader.feed({"type": "input_audio_buffer.speech_started"})
    reader.feed(_created("r2"))
    reader.feed(_delta("r2", "i2", bytes(4800)))
    assert reader.cut(50.0) == [("i1", 50)]


def test_tool_calls_are_handed_over_when_the_response_is_done() -> None:
    """Outputs and a new response.create are refused while the response is active."""
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed(_created("r1"))
    done_args = {
        "type": "response.function_call_arguments.done",
        "response_id": "r1",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": json.dumps({"order": "A17"}),
    }
    assert reader.feed(done_args) == []
    out = reader.feed(_done("r1"))
    assert out[0] == ToolCall("call_1", "lookup", {"order": "A17"})
    assert out[1:] == [TurnComplete(), ResponseFinished("completed")]


def test_a_call_only_in_response_done_is_found_there_too() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    item = {"type": "function_call", "call_id": "c9", "name": "end_call", "arguments": "{}"}
    out = reader.feed(_done("r1", output=[item]))
    assert out[0] == ToolCall("c9", "end_call", {})


def test_a_cancelled_responses_calls_were_never_made() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed(_created("r1"))
    reader.feed({"type": "response.function_call_arguments.done", "call_id": "c", "name": "x"})
    out = reader.feed(_done("r1", "cancelled"))
    assert not any(isinstance(e, ToolCall) for e in out)


def test_a_failed_response_carries_its_error() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    details = {"type": "failed", "error": {"type": "server_error", "code": "internal"}}
    out = reader.feed(_done("r1", "failed", status_details=details))
    assert out[-1] == ResponseFinished("failed", ServerError("server_error", "internal", ""))


def test_caller_speech_and_its_late_transcript() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed({"type": "input_audio_buffer.speech_started"})
    assert reader.caller_speaking  # a reconnect now lets the caller's words make the turn
    assert reader.feed({"type": "input_audio_buffer.speech_stopped"}) == [CallerTurnEnded()]
    assert not reader.caller_speaking
    completed = {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "u1",
        "transcript": " I want to sell. ",
    }
    assert reader.feed(completed) == [CallerTranscript("I want to sell.", late=True)]
    assert reader.feed({**completed, "transcript": "  "}) == []


def test_session_updated_and_errors_are_signals() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    assert reader.feed({"type": "session.updated", "session": {}}) == [Configured()]
    error = {"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired"}}
    (signal,) = reader.feed(error)
    assert isinstance(signal, ServerError)
    assert signal.expired
    assert not signal.permanent
    key = {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_api_key"}}
    (signal,) = reader.feed(key)
    assert isinstance(signal, ServerError)
    assert signal.permanent


def test_unknown_and_bookkeeping_events_are_ignored() -> None:
    reader = RealtimeReader(ULAW_PER_MS)
    for kind in ("rate_limits.updated", "conversation.item.added", "session.created", "whatever"):
        assert reader.feed({"type": kind}) == []


_KINDS = st.sampled_from([
    "response.output_audio.delta", "response.done", "error", "response.created",
    "response.function_call_arguments.done",
    "conversation.item.input_audio_transcription.completed",
])  # fmt: skip
_KEYS = st.sampled_from([
    "type", "response_id", "item_id", "delta", "response", "transcript", "error", "call_id",
    "name", "arguments", "output", "status", "usage", "status_details", "id",
])  # fmt: skip
_LEAF = st.one_of(st.none(), st.text(max_size=20), st.integers(), _KINDS)
_VALUE = st.recursive(
    _LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner)),
    max_leaves=8,
)  # fmt: skip


@given(st.dictionaries(_KEYS, _VALUE))
def test_no_event_shape_makes_the_reader_raise(message: dict[str, Any]) -> None:
    """A service that sends something unexpected must not take the call down with it."""
    reader = RealtimeReader(ULAW_PER_MS)
    reader.feed(message)
    reader.cut(100.0)
