"""The model's tool calls, answered.

The gateway declares one function, ``handoff_conversation``, limited by an enum to the active
stage's targets; the model can still name another agent or another tool, and each gets an
error answer it can act on (the call carries on). A valid handoff is answered *before* the
bridge moves the call: the answer must reach the connection that asked, which the handoff
closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.agents import HandoffTarget
from gateway.call.emitter import CallEvents
from gateway.call.handoff import HANDOFF_ACCEPTED, handoff_rejected
from gateway.call.model_session import ModelSession
from gateway.live.config import HANDOFF_TOOL
from gateway.live.events import ToolCall


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """An accepted handoff, for the bridge to carry out."""

    target: HandoffTarget
    #: The old agent's words about the caller (personal data), cut to a sane length.
    reason: str
    summary: str


async def answer_tool_call(
    call: ToolCall,
    session: ModelSession,
    targets: Sequence[HandoffTarget],
    events: CallEvents,
) -> HandoffRequest | None:
    """Answer ``call``; returns the handoff to carry out, if it asked for a valid one."""
    if call.name != HANDOFF_TOOL:
        events.log.warning("call.unknown_tool", name=call.name)
        await session.send_tool_response(call.call_id, call.name, {"error": "unknown tool"})
        return None
    by_id = {t.agent.id: t for t in targets}
    target = by_id.get(str(call.args.get("target", "")))
    if target is None:
        events.emit("handoff.rejected", target=str(call.args.get("target"))[:80])
        await session.send_tool_response(
            call.call_id, call.name, handoff_rejected(call.args.get("target"), list(by_id))
        )
        return None
    await session.send_tool_response(call.call_id, call.name, dict(HANDOFF_ACCEPTED))
    return HandoffRequest(
        target,
        reason=str(call.args.get("reason", ""))[:500],
        summary=str(call.args.get("summary", ""))[:2000],
    )
