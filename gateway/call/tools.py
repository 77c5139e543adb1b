"""The model's tool calls, sorted into what the call must do about each.

The gateway declares the active agent's functions: ``handoff_conversation`` (limited by an enum to
the stage's targets), the call tools ``end_call`` and ``transfer_call`` when the agent enables
them, and the HTTP tools it enables. The model can still name a target, a destination or a tool
the agent does not have; each gets an error answer it can act on, and the call carries on.

Who answers when differs, and that is the point of this module:

- a valid handoff is answered *before* the bridge moves the call: the answer must reach the
  connection that asked, which the handoff closes;
- ``end_call`` is answered at once: the model then says its goodbye (or has said it), and the
  bridge ends the call when that has played;
- ``transfer_call`` and HTTP tools are answered by the bridge when the outcome is known: a
  transfer that fails, or an API that is down, is an error answer the agent can tell the caller
  about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.agents import (
    END_CALL_TOOL,
    HANDOFF_TOOL,
    TRANSFER_CALL_TOOL,
    Agent,
    HandoffTarget,
    HttpTool,
)
from gateway.call.emitter import CallEvents
from gateway.call.handoff import HANDOFF_ACCEPTED, handoff_rejected
from gateway.model.events import ToolCall
from gateway.model.session import ModelSession

#: The answer to ``end_call``: the call ends once what the model says now has played.
END_CALL_ACCEPTED = {
    "result": "The call will end as soon as you finish speaking.",
    "instructions": "If you have not said goodbye yet, say a short goodbye now and nothing else.",
}
#: The answer to a transfer that went through (the stream then ends; nobody hears more).
TRANSFER_DONE = {"result": "transferred"}


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """An accepted handoff, for the bridge to carry out."""

    target: HandoffTarget
    #: The old agent's words about the caller (personal data), cut to a sane length.
    reason: str
    summary: str


@dataclass(frozen=True, slots=True)
class EndCallRequest:
    """``end_call``, already answered: end the call after the farewell has played."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """``transfer_call`` to a configured destination; the bridge answers with the outcome."""

    call: ToolCall
    #: The destination's name in the agent's ``transfers:``, and its number or SIP URI.
    name: str
    destination: str
    reason: str


@dataclass(frozen=True, slots=True)
class HttpToolRequest:
    """A call of one of the business's HTTP tools; the bridge answers with its response."""

    call: ToolCall
    tool: HttpTool


ToolRequest = HandoffRequest | EndCallRequest | TransferRequest | HttpToolRequest


async def answer_tool_call(
    call: ToolCall,
    session: ModelSession,
    *,
    agent: Agent,
    targets: Sequence[HandoffTarget],
    http_tools: Sequence[HttpTool],
    events: CallEvents,
) -> ToolRequest | None:
    """Sort ``call``; answers it when the answer is known now (errors, handoff, end_call)."""
    if call.name == HANDOFF_TOOL:
        return await _handoff(call, session, targets, events)
    if call.name == END_CALL_TOOL and END_CALL_TOOL in agent.tools:
        await session.send_tool_response(call.call_id, call.name, dict(END_CALL_ACCEPTED))
        return EndCallRequest(reason=_text(call.args, "reason", 500))
    if call.name == TRANSFER_CALL_TOOL and TRANSFER_CALL_TOOL in agent.tools:
        return await _transfer(call, session, agent.transfers, events)
    for tool in http_tools:
        if tool.name == call.name:
            return HttpToolRequest(call, tool)
    events.log.warning("call.unknown_tool", name=call.name[:80])
    await session.send_tool_response(call.call_id, call.name, {"error": "unknown tool"})
    return None


async def _handoff(
    call: ToolCall, session: ModelSession, targets: Sequence[HandoffTarget], events: CallEvents
) -> HandoffRequest | None:
    by_id = {t.agent.id: t for t in targets}
    target = by_id.get(str(call.args.get("target", "")))
    if target is None:
        events.emit("handoff.rejected", target=str(call.args.get("target"))[:80])
        await session.send_tool_response(
            call.call_id, call.name, handoff_rejected(call.args.get("target"), list(by_id))
        )
        return None
    # The new agent speaks next: the old one must not answer its own transfer.
    await session.send_tool_response(call.call_id, call.name, dict(HANDOFF_ACCEPTED), respond=False)
    return HandoffRequest(
        target, reason=_text(call.args, "reason", 500), summary=_text(call.args, "summary", 2000)
    )


async def _transfer(
    call: ToolCall, session: ModelSession, transfers: Mapping[str, str], events: CallEvents
) -> TransferRequest | None:
    name = str(call.args.get("destination", ""))
    destination = transfers.get(name)
    if destination is None:
        events.emit("transfer.rejected", destination=name[:80])
        valid = ", ".join(transfers) or "none"
        await session.send_tool_response(call.call_id, call.name, {
            "error": f"Cannot transfer to {name[:80]!r}. Valid destinations: {valid}. "
            "Continue helping the caller yourself or choose a valid destination.",
        })  # fmt: skip
        return None
    return TransferRequest(call, name, destination, reason=_text(call.args, "reason", 500))


def transfer_failed(name: str, problem: str) -> dict[str, Any]:
    """The answer to a transfer the carrier did not carry out: the caller is still here."""
    return {
        "error": f"The transfer to {name} did not go through ({problem}). The caller is still "
        "on the line with you: tell them, and offer to help in another way.",
    }


def _text(args: Mapping[str, Any], key: str, limit: int) -> str:
    return str(args.get(key, ""))[:limit]
