"""An agent and a carrier → what an OpenAI Realtime session is told, as plain JSON.

Unlike a Gemini Live connection, a Realtime session takes ``session.update`` at any time: a
handoff changes instructions, tools and turn settings in place. Two things cannot change: the
model (chosen in the URL) and, once the session has spoken, the voice. Everything here is pure
(dicts in the wire's shape, as the openai SDK's ``types.realtime`` define them in 3.63), so it
is tested without a socket.

Audio (``realtime_audio``): Realtime speaks G.711 at 8 kHz both ways, so a μ-law or A-law
carrier's bytes pass through untouched; anything else (G.722, L16, the browser) meets the model
at PCM16 24 kHz, its only PCM rate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from gateway.audio.transcode import PCM16_24K, PCMA_8K, PCMU_8K, AudioFormat
from gateway.model.persona import AgentPersona
from gateway.model.session import ModelAudio
from gateway.model.tools import agent_functions
from gateway.model.turns import Turn

#: The transcription model for the caller's words (``audio.input.transcription``): the
#: records and the console need them, and Realtime does not transcribe unless asked.
TRANSCRIBE_MODEL: Final = "gpt-4o-mini-transcribe"

#: Server VAD, tuned for phone lines like the Gemini side's defaults: 300 ms of lead-in kept,
#: 500 ms of silence ends a turn. ``interrupt_response`` makes the service cancel its answer
#: when the caller speaks over it (the gateway then clears the carrier and truncates).
TURN_DETECTION: Final[dict[str, Any]] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}

_WIRE_FORMATS: Final[dict[AudioFormat, dict[str, Any]]] = {
    PCMU_8K: {"type": "audio/pcmu"},
    PCMA_8K: {"type": "audio/pcma"},
    PCM16_24K: {"type": "audio/pcm", "rate": 24000},
}


def realtime_audio(carrier: AudioFormat) -> ModelAudio:
    """The session's formats for a carrier: its own G.711, else PCM16 at 24 kHz. Playback is
    tracked: an interrupted answer is truncated at what the caller heard."""
    same = carrier if carrier in (PCMU_8K, PCMA_8K) else PCM16_24K
    return ModelAudio(input=same, output=same, tracks_playback=True)


def wire_format(fmt: AudioFormat) -> dict[str, Any]:
    """``audio.input.format`` / ``audio.output.format`` for one of :func:`realtime_audio`'s."""
    return dict(_WIRE_FORMATS[fmt])


def tool_declarations(persona: AgentPersona) -> list[dict[str, Any]]:
    """The agent's functions as Realtime's flat tool objects (JSON Schema as written)."""
    return [
        {
            "type": "function",
            "name": function.name,
            "description": function.description,
            "parameters": dict(function.parameters),
        }
        for function in agent_functions(persona)
    ]


def session_config(
    persona: AgentPersona, audio: ModelAudio, *, in_place: bool = False
) -> dict[str, Any]:
    """The ``session`` of a ``session.update`` that makes the model *be* ``persona``.

    ``in_place`` (a handoff on the open session): only what a handoff changes — instructions,
    tools, turn detection. The voice is left out because a session that has spoken refuses
    any voice in an update, and the formats and transcription because they stay as they are.
    """
    turn_detection = dict(TURN_DETECTION)
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": persona.system_instruction(),
        "tools": tool_declarations(persona),
        "tool_choice": "auto",
    }
    if in_place:
        session["audio"] = {"input": {"turn_detection": turn_detection}}
        return session
    session["output_modalities"] = ["audio"]
    session["audio"] = {
        "input": {
            "format": wire_format(audio.input),
            "transcription": {"model": TRANSCRIBE_MODEL},
            "turn_detection": turn_detection,
        },
        "output": {"format": wire_format(audio.output), "voice": persona.agent.voice},
    }
    return session


def message_item(turn: Turn) -> dict[str, Any]:
    """A conversation item for one turn: the caller's (or the gateway's notes) as the user's
    ``input_text``, the model's as the assistant's ``output_text``."""
    if turn.role == "model":
        return {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": turn.text}],
        }
    return {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": turn.text}],
    }


def event(kind: str, **fields: Any) -> str:
    """One client event, serialised (the SDK's ``send`` would run a type transform first)."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def seed_events(turns: Sequence[Turn]) -> list[str]:
    """The items that tell a session ``turns`` (no response is asked for here)."""
    return [event("conversation.item.create", item=message_item(turn)) for turn in turns]
