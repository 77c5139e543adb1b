"""The functions an agent may call, as JSON Schema, for every provider to declare its own way.

OpenAI Realtime takes these as they are (``{type: "function", name, description, parameters}``);
Gemini Live needs its ``Schema`` subset (:mod:`gateway.live.schema` converts). Writing them once
keeps what the model is told about a handoff or a hang-up the same whichever model hears it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.agents import END_CALL_TOOL, HANDOFF_TOOL, TRANSFER_CALL_TOOL, HandoffTarget, HttpTool
from gateway.model.persona import AgentPersona


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


def _string(description: str, enum: Sequence[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "description": description}
    if enum is not None:
        schema["enum"] = list(enum)
    return schema


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def handoff_function(targets: Sequence[HandoffTarget]) -> FunctionSpec:
    """``handoff_conversation``, with ``target`` limited to reachable agents.

    An enum keeps the model from inventing agents; each option's role and description are
    spelled out in the description because the model only sees the ids in the enum itself.
    """
    options = "; ".join(
        f"{t.agent.id} = {t.agent.role}"
        + (f" ({t.agent.description})" if t.agent.description else "")
        for t in targets
    )
    return FunctionSpec(
        HANDOFF_TOOL,
        "Transfer the caller to another agent when their request is outside your role or "
        "another agent is better placed to help. Say one short sentence telling the caller "
        f"you are transferring them, then call this. Agents you can transfer to: {options}.",
        _object({
            "target": _string(
                "Id of the agent to transfer the caller to.", [t.agent.id for t in targets]
            ),
            "reason": _string("Why the caller is being transferred, in one sentence."),
            "summary": _string("What the caller needs and what has been established so far."),
        }),
    )  # fmt: skip


def end_call_function() -> FunctionSpec:
    """``end_call(reason)``: the model hangs up. The goodbye must come first, because the
    call ends as soon as the gateway has the function call, not after the audio before it."""
    return FunctionSpec(
        END_CALL_TOOL,
        "End the phone call. Use it when the conversation is over or the caller asks to "
        "hang up. First say a short goodbye to the caller, then call this.",
        _object({"reason": _string("Why the call is ending, in one sentence.")}),
    )


def transfer_call_function(transfers: Mapping[str, str]) -> FunctionSpec:
    """``transfer_call(destination, reason)``, ``destination`` limited to the agent's names.

    The model sees names only, never the numbers behind them: it cannot dial a number a
    caller talks it into, and the numbers stay out of the transcript.
    """
    options = "; ".join(
        f"{name} ({'a SIP line' if number.startswith('sip') else 'a phone line'})"
        for name, number in transfers.items()
    )
    return FunctionSpec(
        TRANSFER_CALL_TOOL,
        "Transfer the phone call to a person or line outside this conversation. First "
        "tell the caller you are transferring them, then call this; the conversation "
        f"with you ends. Destinations: {options}.",
        _object({
            "destination": _string(
                "Name of the destination to transfer the caller to.", list(transfers)
            ),
            "reason": _string("Why the caller is being transferred, in one sentence."),
        }),
    )  # fmt: skip


def http_tool_function(tool: HttpTool) -> FunctionSpec:
    """A declared HTTP tool, its JSON Schema as written in agents.yaml."""
    return FunctionSpec(tool.name, tool.description, tool.parameters)


def agent_functions(persona: AgentPersona) -> list[FunctionSpec]:
    """Every function ``persona`` may call: handoff first, then the agent's tools in order."""
    functions = [handoff_function(persona.targets)] if persona.targets else []
    http = {tool.name: tool for tool in persona.http_tools}
    for name in persona.agent.tools:
        if name == END_CALL_TOOL:
            functions.append(end_call_function())
        elif name == TRANSFER_CALL_TOOL and persona.agent.transfers:
            functions.append(transfer_call_function(persona.agent.transfers))
        elif name in http:
            functions.append(http_tool_function(http[name]))
    return functions
