"""Messages the Live simulator sends, shaped like the real service's (camelCase, proto3 JSON
that omits default values, standard base64), plus short summaries for connection records.
Pure builders; no I/O.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any

JsonObject = dict[str, Any]

AUDIO_OUT_MIME = "audio/pcm;rate=24000"
OUTPUT_RATE = 24_000

SERVER_MESSAGE_KEYS = frozenset(
    {
        "setupComplete",
        "serverContent",
        "toolCall",
        "toolCallCancellation",
        "usageMetadata",
        "goAway",
        "sessionResumptionUpdate",
        "voiceActivityDetectionSignal",
        "voiceActivity",
    }
)
"""Top-level keys the SDK maps; a frame without one of them crashes ``AsyncSession.receive``."""

_RATE_RE = re.compile(r"rate=(\d+)")


def encode_base64(data: bytes) -> str:
    """Standard base64, as the real service sends it."""
    return base64.b64encode(data).decode("ascii")


def setup_complete() -> JsonObject:
    return {"setupComplete": {}}


def audio_chunk(pcm: bytes) -> JsonObject:
    part = {"inlineData": {"mimeType": AUDIO_OUT_MIME, "data": encode_base64(pcm)}}
    return {"serverContent": {"modelTurn": {"parts": [part]}}}


def text_chunk(text: str) -> JsonObject:
    """Model text (for a setup that asked for TEXT responses instead of AUDIO)."""
    return {"serverContent": {"modelTurn": {"parts": [{"text": text}]}}}


def input_transcription(text: str) -> JsonObject:
    return {"serverContent": {"inputTranscription": {"text": text}}}


def output_transcription(text: str) -> JsonObject:
    return {"serverContent": {"outputTranscription": {"text": text}}}


def server_flag(name: str) -> JsonObject:
    """``interrupted``, ``generationComplete`` or ``turnComplete``."""
    return {"serverContent": {name: True}}


def tool_call(calls: list[tuple[str, str, JsonObject]]) -> JsonObject:
    """``toolCall`` from (id, name, args) triples."""
    return {
        "toolCall": {
            "functionCalls": [{"id": id_, "name": name, "args": args} for id_, name, args in calls]
        }
    }


def tool_call_cancellation(ids: list[str]) -> JsonObject:
    return {"toolCallCancellation": {"ids": ids}}


def go_away(time_left: str) -> JsonObject:
    return {"goAway": {"timeLeft": time_left}}


def resumption_update(handle: str | None, last_consumed_index: int | None = None) -> JsonObject:
    """A new handle, or ``{}`` (proto3 omits defaults) while the session is not resumable.

    ``last_consumed_index`` (only for a setup that asked for ``transparent``) is an int64, which
    proto3 JSON writes as a string, e.g. ``"lastConsumedClientMessageIndex": "12"``.
    """
    if handle is None:
        return {"sessionResumptionUpdate": {}}
    update: JsonObject = {"newHandle": handle, "resumable": True}
    if last_consumed_index is not None:
        update["lastConsumedClientMessageIndex"] = str(last_consumed_index)
    return {"sessionResumptionUpdate": update}


def usage_metadata(
    prompt_audio_tokens: int, prompt_text_tokens: int, response_tokens: int
) -> JsonObject:
    prompt = prompt_audio_tokens + prompt_text_tokens
    details = [
        {"modality": modality, "tokenCount": count}
        for modality, count in (("AUDIO", prompt_audio_tokens), ("TEXT", prompt_text_tokens))
        if count
    ]
    return {
        "usageMetadata": {
            "promptTokenCount": prompt,
            "responseTokenCount": response_tokens,
            "totalTokenCount": prompt + response_tokens,
            "promptTokensDetails": details,
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response_tokens}],
        }
    }


def format_duration(time_left: str | float) -> str:
    """A protobuf Duration string: ``"10s"`` or ``"9.5s"``; strings are checked and kept."""
    if isinstance(time_left, str):
        if not re.fullmatch(r"\d+(\.\d+)?s", time_left):
            raise ValueError(f"time_left must look like '10s' or '9.5s', got {time_left!r}")
        return time_left
    if not math.isfinite(time_left) or time_left < 0:
        raise ValueError("time_left must be a non-negative number of seconds")
    return f"{time_left:g}s"


def server_message_kind(message: Mapping[str, Any]) -> str | None:
    """The first top-level key the SDK understands, or None (such a frame must not be sent)."""
    return next((key for key in message if key in SERVER_MESSAGE_KEYS), None)


def summarise(message: Mapping[str, Any]) -> str:
    """A short, audio-free description of a server message for connection records.

    For ``serverContent`` it names each field: ``audio 40ms``, ``outputTranscription 'Hi '``,
    ``interrupted``, ``turnComplete`` ...
    """
    kind = server_message_kind(message)
    body = message.get(kind) if kind else None
    if not isinstance(body, dict):
        return ""
    if kind == "serverContent":
        return ", ".join(_summarise_content(name, value) for name, value in body.items())
    if kind == "toolCall":
        calls = body.get("functionCalls") or []
        return ", ".join(f"{c.get('name')}#{c.get('id')}" for c in calls if isinstance(c, dict))
    if kind == "toolCallCancellation":
        return ", ".join(str(i) for i in body.get("ids") or [])
    if kind == "goAway":
        return str(body.get("timeLeft", ""))
    if kind == "sessionResumptionUpdate":
        if not body.get("newHandle"):
            return "not resumable"
        consumed = body.get("lastConsumedClientMessageIndex")
        suffix = f" (last consumed {consumed})" if consumed is not None else ""
        return f"{body['newHandle']}{suffix}"
    if kind == "usageMetadata":
        return f"totalTokenCount={body.get('totalTokenCount')}"
    return ""


def _summarise_content(name: str, value: Any) -> str:
    if name == "modelTurn" and isinstance(value, dict):
        pieces = []
        for part in value.get("parts") or []:
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if isinstance(inline, dict):
                size = len(str(inline.get("data", ""))) * 3 // 4
                rate_match = _RATE_RE.search(str(inline.get("mimeType", "")))
                rate = int(rate_match.group(1)) if rate_match else OUTPUT_RATE
                pieces.append(f"audio {round(size / 2 / rate * 1000)}ms")
            elif isinstance(part, dict) and "text" in part:
                pieces.append(f"text {part['text']!r}")
        return "; ".join(pieces) or "modelTurn"
    if name in ("inputTranscription", "outputTranscription") and isinstance(value, dict):
        return f"{name} {value.get('text', '')!r}"
    return name
