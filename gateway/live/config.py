"""An agent → the Gemini Live connection config that makes the model *be* that agent.

Gemini Live cannot change its configuration on an open connection, so an agent's whole
persona — instruction, voice, tools — is fixed here, once per connection; a handoff is a new
connection built from the next agent with the same resumption handle.

All the functions an agent may call go in one ``Tool`` (Gemini takes any number of
declarations there); Google Search is a tool of its own kind and stays separate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.genai import types

from gateway.agents import (
    END_CALL_TOOL,
    HANDOFF_TOOL,
    TRANSFER_CALL_TOOL,
    Agent,
    HandoffTarget,
    HttpTool,
)
from gateway.live.schema import to_live_schema
from gateway.variables import render

__all__ = [
    "HANDOFF_TOOL",
    "AgentPersona",
    "end_call_declaration",
    "function_declarations",
    "handoff_declaration",
    "http_tool_declaration",
    "live_config",
    "transfer_call_declaration",
]


@dataclass(frozen=True, slots=True)
class AgentPersona:
    """What a connection needs to know about the active agent.

    ``variables`` are the call's prompt variables (``gateway.variables``): the same agent
    reads differently on each call, so they travel with the persona, not the agent.
    """

    agent: Agent
    targets: tuple[HandoffTarget, ...] = ()
    http_tools: tuple[HttpTool, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)

    def system_instruction(self) -> str:
        """The agent's system instruction with this call's variables filled in."""
        return render(self.agent.system_instruction(), self.variables)

    def greeting(self) -> str:
        """The agent's greeting with this call's variables filled in ("" when it has none)."""
        return render(self.agent.greeting, self.variables)


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


def end_call_declaration() -> types.FunctionDeclaration:
    """``end_call(reason)``: the model hangs up. The goodbye must come first, because the
    call ends as soon as the gateway has the function call, not after the audio before it."""
    return types.FunctionDeclaration(
        name=END_CALL_TOOL,
        description=(
            "End the phone call. Use it when the conversation is over or the caller asks to "
            "hang up. First say a short goodbye to the caller, then call this."
        ),
        parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={
                "reason": types.Schema(
                    type=types.Type.STRING,
                    description="Why the call is ending, in one sentence.",
                ),
            },
            required=["reason"],
        ),
    )


def transfer_call_declaration(transfers: Mapping[str, str]) -> types.FunctionDeclaration:
    """``transfer_call(destination, reason)``, ``destination`` limited to the agent's names.

    The model sees names only, never the numbers behind them: it cannot dial a number a
    caller talks it into, and the numbers stay out of the transcript.
    """
    options = "; ".join(
        f"{name} ({'a SIP line' if number.startswith('sip') else 'a phone line'})"
        for name, number in transfers.items()
    )
    return types.FunctionDeclaration(
        name=TRANSFER_CALL_TOOL,
        description=(
            "Transfer the phone call to a person or line outside this conversation. First "
            "tell the caller you are transferring them, then call this; the conversation "
            f"with you ends. Destinations: {options}."
        ),
        parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={
                "destination": types.Schema(
                    type=types.Type.STRING,
                    enum=list(transfers),
                    description="Name of the destination to transfer the caller to.",
                ),
                "reason": types.Schema(
                    type=types.Type.STRING,
                    description="Why the caller is being transferred, in one sentence.",
                ),
            },
            required=["destination", "reason"],
        ),
    )


def http_tool_declaration(tool: HttpTool) -> types.FunctionDeclaration:
    """A declared HTTP tool, its JSON Schema as Gemini's ``Schema``: the Live API ignores
    ``parameters_json_schema`` (see :mod:`gateway.live.schema`)."""
    return types.FunctionDeclaration(
        name=tool.name, description=tool.description, parameters=to_live_schema(tool.parameters)
    )


def function_declarations(persona: AgentPersona) -> list[types.FunctionDeclaration]:
    """Every function ``persona`` may call: handoff first, then the agent's tools in order."""
    declarations = [handoff_declaration(persona.targets)] if persona.targets else []
    http = {tool.name: tool for tool in persona.http_tools}
    for name in persona.agent.tools:
        if name == END_CALL_TOOL:
            declarations.append(end_call_declaration())
        elif name == TRANSFER_CALL_TOOL and persona.agent.transfers:
            declarations.append(transfer_call_declaration(persona.agent.transfers))
        elif name in http:
            declarations.append(http_tool_declaration(http[name]))
    return declarations


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
