"""The Realtime session object: its defaults (what ``session.created`` reports) and how a
``session.update`` is checked and merged. Pure functions over plain dicts.

A refused update changes nothing (the whole update is refused, not just the bad field): our
reading of the API, which answers the update with one ``error`` and no ``session.updated``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from callsim.live.voices import OPENAI_VOICES
from callsim.realtime.formats import AudioFormat, FormatError, parse_format

DEFAULT_VOICE = "alloy"
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. Act like a "
    "human, but remember that you aren't a human and that you can't do human things in the real "
    "world. Your voice and personality should be warm and engaging, with a lively and playful "
    "tone."
)
SESSION_SECONDS = 60 * 60
"""The service's maximum session duration (the ``expire`` hook's message names it)."""

CANNOT_UPDATE_VOICE = "Cannot update a conversation's voice if assistant audio is present."


class SessionError(ValueError):
    """A refused ``session.update``: the error ``code``, ``param`` and message."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def default_session(
    session_id: str, model: str, *, vad_silence_ms: int, now: float | None = None
) -> dict[str, Any]:
    """The session a new connection starts with (GA shape, as ``session.created`` carries it)."""
    started = int(time.time() if now is None else now)
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": started + SESSION_SECONDS,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": vad_silence_ms,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "voice": DEFAULT_VOICE,
                "speed": 1.0,
            },
        },
    }


def merge_update(
    current: dict[str, Any], update: object, *, assistant_audio_sent: bool
) -> dict[str, Any]:
    """The session after ``update``; raises :class:`SessionError` and leaves ``current`` as is.

    Top-level fields replace; ``audio.input`` and ``audio.output`` merge field by field (so an
    update of the voice keeps the format). ``model`` cannot change, nor the voice once the
    conversation has assistant audio.
    """
    if not isinstance(update, dict):
        raise SessionError("invalid_type", "Invalid type for 'session': expected an object.")
    if "type" not in update:
        raise SessionError(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    if update["type"] != "realtime":
        raise SessionError(
            "invalid_value",
            f"Invalid value: {update['type']!r}. Supported values are: 'realtime'.",
            "session.type",
        )
    if "model" in update and update["model"] != current.get("model"):
        raise SessionError(
            "invalid_value", "Cannot update a session's model.", "session.model"
        )  # the URL chose it
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key in ("type", "model", "id", "object"):
            continue
        if key == "audio":
            _merge_audio(merged, value)
        else:
            merged[key] = copy.deepcopy(value)
    _check(merged, current, assistant_audio_sent)
    return merged


def _merge_audio(merged: dict[str, Any], audio: object) -> None:
    if not isinstance(audio, dict):
        raise SessionError("invalid_type", "Invalid type for 'session.audio'.", "session.audio")
    target = merged.setdefault("audio", {})
    for side in ("input", "output"):
        if side not in audio:
            continue
        part = audio[side]
        if not isinstance(part, dict):
            raise SessionError(
                "invalid_type", f"Invalid type for 'session.audio.{side}'.", f"session.audio.{side}"
            )
        target.setdefault(side, {}).update(copy.deepcopy(part))


def _check(merged: dict[str, Any], current: dict[str, Any], assistant_audio_sent: bool) -> None:
    for side in ("input", "output"):
        param = f"session.audio.{side}.format"
        try:
            parse_format(merged["audio"][side]["format"], param)
        except FormatError as exc:
            raise SessionError("invalid_value", str(exc), param) from None
    voice = merged["audio"]["output"].get("voice")
    if voice not in OPENAI_VOICES:
        raise SessionError(
            "invalid_value",
            f"Invalid value: {voice!r}. Supported values are: "
            + ", ".join(f"'{name}'" for name in OPENAI_VOICES)
            + ".",
            "session.audio.output.voice",
        )
    if assistant_audio_sent and voice != current["audio"]["output"].get("voice"):
        raise SessionError("cannot_update_voice", CANNOT_UPDATE_VOICE, "session.audio.output.voice")
    detection = merged["audio"]["input"].get("turn_detection")
    if detection is not None and (
        not isinstance(detection, dict)
        or detection.get("type") not in ("server_vad", "semantic_vad")
    ):
        raise SessionError(
            "invalid_value",
            "Invalid value for 'session.audio.input.turn_detection.type'. Supported values are: "
            "'server_vad' and 'semantic_vad'.",
            "session.audio.input.turn_detection.type",
        )
    tools = merged.get("tools")
    if not isinstance(tools, list) or not all(
        isinstance(tool, dict) and isinstance(tool.get("name"), str) for tool in tools
    ):
        raise SessionError(
            "invalid_value", "Each tool needs a 'name' string.", "session.tools"
        )  # our check: the service's message differs


def input_format(session: dict[str, Any]) -> AudioFormat:
    return parse_format(session["audio"]["input"]["format"], "session.audio.input.format")


def output_format(session: dict[str, Any]) -> AudioFormat:
    return parse_format(session["audio"]["output"]["format"], "session.audio.output.format")


def turn_detection(session: dict[str, Any]) -> dict[str, Any] | None:
    value = session["audio"]["input"].get("turn_detection")
    return value if isinstance(value, dict) else None


def transcription_of(session: dict[str, Any]) -> dict[str, Any] | None:
    value = session["audio"]["input"].get("transcription")
    return value if isinstance(value, dict) else None
