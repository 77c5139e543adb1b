"""An agent → the Gemini Live connection config that makes the model *be* that agent.

Gemini Live cannot change its configuration on an open connection, so an agent's whole
persona — instruction, voice, tools — is fixed here, once per connection; a handoff is a new
connection built from the next agent with the same resumption handle.

All the functions an agent may call (:mod:`gateway.model.tools`) go in one ``Tool`` (Gemini
takes any number of declarations there); Google Search is a tool of its own kind and stays
separate.
"""

from __future__ import annotations

from google.genai import types

from gateway.live.schema import to_live_schema
from gateway.model.persona import AgentPersona
from gateway.model.tools import FunctionSpec, agent_functions


def declaration(function: FunctionSpec) -> types.FunctionDeclaration:
    """A function as Gemini Live declares it: its JSON Schema as Gemini's ``Schema``, because
    the Live API ignores ``parameters_json_schema`` (see :mod:`gateway.live.schema`)."""
    return types.FunctionDeclaration(
        name=function.name,
        description=function.description,
        parameters=to_live_schema(function.parameters),
    )


def function_declarations(persona: AgentPersona) -> list[types.FunctionDeclaration]:
    """Every function ``persona`` may call: handoff first, then the agent's tools in order."""
    return [declaration(function) for function in agent_functions(persona)]


def live_config(persona: AgentPersona, *, handle: str | None) -> types.LiveConnectConfig:
    """The full connection config for ``persona``, resuming ``handle`` when one is held.

    Resumption is always requested (``{}`` on a first connection) because without it Gemini
    issues no handles and neither a handoff nor a dropped connection could keep the history.
    Context-window compression lets an audio call outlive the 15-minute uncompressed limit.
    """
    tools: list[types.Tool] = []
    declarations = function_declarations(persona)
    if declarations:
        tools.append(types.Tool(function_declarations=declarations))
    if "google_search" in persona.agent.tools:
        tools.append(types.Tool(google_search=types.GoogleSearch()))
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=persona.agent.voice)
            )
        ),
        system_instruction=persona.system_instruction(),
        tools=tools or None,
        session_resumption=types.SessionResumptionConfig(handle=handle),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        context_window_compression=types.ContextWindowCompressionConfig(
            sliding_window=types.SlidingWindow(),
        ),
    )
