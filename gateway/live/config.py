"""An agent → the Gemini Live connection config that makes the model *be* that agent.

Gemini Live cannot change its configuration on an open connection, so an agent's whole
persona — instruction, voice, tools — is fixed here, once per connection; a handoff is a new
connection built from the next agent with the same resumption handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.genai import types

from gateway.agents import Agent, HandoffTarget

HANDOFF_TOOL = "handoff_conversation"


@dataclass(frozen=True, slots=True)
class AgentPersona:
    """What a connection needs to know about the active agent."""

    agent: Agent
    targets: tuple[HandoffTarget, ...] = ()


def handoff_declaration(targets: Sequence[HandoffTarget]) -> types.FunctionDeclaration:
    """The ``handoff_conversation`` tool, with ``target`` limited to reachable agents.

    An enum keeps the model from inventing agents; each option's role and description are
    spelled out in the description because the model only sees the ids in the enum itself.
    """
    options = "; ".join(
        f"{t.agent.id} = {t.agent.role}"
        + (f" ({t.agent.description})" if t.agent.description else "")
        for t in targets
    )
    return types.FunctionDeclaration(
        name=HANDOFF_TOOL,
        description=(
            "Transfer the caller to another agent when their request is outside your role or "
            "another agent is better placed to help. Say one short sentence telling the caller "
            f"you are transferring them, then call this. Agents you can transfer to: {options}."
        ),
        parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={
                "target": types.Schema(
                    type=types.Type.STRING,
                    enum=[t.agent.id for t in targets],
                    description="Id of the agent to transfer the caller to.",
                ),
                "reason": types.Schema(
                    type=types.Type.STRING,
                    description="Why the caller is being transferred, in one sentence.",
                ),
                "summary": types.Schema(
                    type=types.Type.STRING,
                    description="What the caller needs and what has been established so far.",
                ),
            },
            required=["target", "reason", "summary"],
        ),
    )


def live_config(persona: AgentPersona, *, handle: str | None) -> types.LiveConnectConfig:
    """The full connection config for ``persona``, resuming ``handle`` when one is held.

    Resumption is always requested (``{}`` on a first connection) because without it Gemini
    issues no handles and neither a handoff nor a dropped connection could keep the history.
    Context-window compression lets an audio call outlive the 15-minute uncompressed limit.
    """
    tools: list[types.Tool] = []
    if persona.targets:
        tools.append(types.Tool(function_declarations=[handoff_declaration(persona.targets)]))
    if "google_search" in persona.agent.tools:
        tools.append(types.Tool(google_search=types.GoogleSearch()))
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=persona.agent.voice)
            )
        ),
        system_instruction=persona.agent.system_instruction(),
        tools=tools or None,
        session_resumption=types.SessionResumptionConfig(handle=handle),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        context_window_compression=types.ContextWindowCompressionConfig(
            sliding_window=types.SlidingWindow(),
        ),
    )
