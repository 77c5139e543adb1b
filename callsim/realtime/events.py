"""Server events of the GA Realtime API as plain dicts, in the shapes the ``openai`` SDK's
``types.realtime`` models define (``event_id`` is added when an event is sent).
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from callsim.realtime.records import ItemRecord

JsonObject = dict[str, Any]

AUDIO_TOKENS_PER_SECOND_IN = 10
AUDIO_TOKENS_PER_SECOND_OUT = 20
CHARS_PER_TOKEN = 4


class Ids:
    """Id factory: the service's prefixes with a counter, unique per simulator."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def new(self, prefix: str) -> str:
        return f"{prefix}_sim{next(self._counter):015d}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def error(
    code: str | None,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> JsonObject:
    """An ``error`` event; ``event_id`` is the client event it answers, if any."""
    return {
        "type": "error",
        "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    }


def item_json(item: ItemRecord, *, status: str | None = None) -> JsonObject:
    """A conversation item as the API reports it (audio itself is never echoed)."""
    base: JsonObject = {
        "id": item.id,
        "object": "realtime.item",
        "type": item.type,
        "status": status or item.status,
    }
    if item.type == "function_call":
        return base | {"call_id": item.call_id, "name": item.name, "arguments": item.arguments}
    if item.type == "function_call_output":
        return base | {"call_id": item.call_id, "output": item.output}
    content: list[JsonObject]
    if item.source == "caller_audio":
        content = [{"type": "input_audio", "transcript": item.text or None}]
    elif item.source == "model":
        content = [{"type": "output_audio", "transcript": item.text}]
    elif item.role == "assistant":
        content = [{"type": "output_text", "text": item.text}]
    else:
        content = [{"type": "input_text", "text": item.text}]
    return base | {"role": item.role, "content": content}


def response_json(
    response_id: str,
    *,
    status: str,
    session: JsonObject,
    output: list[JsonObject],
    status_details: JsonObject | None = None,
    usage: JsonObject | None = None,
) -> JsonObject:
    """The ``response`` object of ``response.created`` and ``response.done``."""
    audio_out = session["audio"]["output"]
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": "conv_" + session["id"].removeprefix("sess_"),
        "output_modalities": list(session.get("output_modalities") or ["audio"]),
        "max_output_tokens": session.get("max_output_tokens", "inf"),
        "audio": {"output": {"format": audio_out["format"], "voice": audio_out["voice"]}},
        "usage": usage,
        "metadata": None,
    }


def usage(
    *, input_text: str, input_audio_s: float, output_text: str, output_audio_s: float
) -> JsonObject:
    """Token usage of one response, at rough but stable rates (the numbers are not the
    service's, only their shape and that they grow with the conversation)."""
    in_text = len(input_text) // CHARS_PER_TOKEN
    in_audio = round(input_audio_s * AUDIO_TOKENS_PER_SECOND_IN)
    out_text = len(output_text) // CHARS_PER_TOKEN
    out_audio = round(output_audio_s * AUDIO_TOKENS_PER_SECOND_OUT)
    return {
        "total_tokens": in_text + in_audio + out_text + out_audio,
        "input_tokens": in_text + in_audio,
        "output_tokens": out_text + out_audio,
        "input_token_details": {
            "text_tokens": in_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def rate_limits() -> JsonObject:
    """``rate_limits.updated``, as the service sends it after each ``response.done``."""
    return {
        "type": "rate_limits.updated",
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
        ],
    }
