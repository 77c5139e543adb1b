"""One call's record, built from the call's own events.

Every call event already goes through one emitter (:mod:`gateway.call.emitter`), personal data
included for observers; the record is one more observer. Building it from the events, rather
than from the bridge's internals, keeps one account of what happened: the log, the observers
and the record cannot disagree, and the bridge does not grow a second bookkeeping path.

The document is plain JSON. Its fields are a contract with the systems that receive it (CRMs,
data warehouses): they are added to, never renamed. ``at`` fields are ISO 8601 UTC, taken when
the event happened (a transcript entry's when the utterance ended).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gateway.records.documents import INTERRUPTED
from gateway.records.times import format_time, utc_now

#: The record's ``end_reason`` values (a contract; see :func:`record_end_reason`).
END_REASONS = (
    "caller_hangup", "agent_ended", "transferred", "idle", "failed", "drained", "limit",
    INTERRUPTED, "operator_ended",
)  # fmt: skip

_END_REASONS: dict[str, str] = {
    "caller_hung_up": "caller_hangup",
    "caller_disconnected": "caller_hangup",
    "agent_ended": "agent_ended",
    "transferred": "transferred",
    "idle_ended": "idle",  # the agent checked on a quiet line, then said goodbye
    "idle_timeout": "idle",  # nothing heard from either side: a dead line
    "drained": "drained",
    "cancelled": "drained",  # the server stopped with the call up
    "max_duration": "limit",
    "operator_ended": "operator_ended",  # the console's end-call button
}


def record_end_reason(bridge_reason: str) -> str:
    """The record's end reason for the bridge's own (finer, and free to change) reason."""
    return _END_REASONS.get(bridge_reason, "failed")


class CallRecord:
    """Collects one call's record; :meth:`observe` is its call-event observer."""

    def __init__(
        self,
        *,
        call_id: str,
        carrier: str,
        direction: str,
        caller: str,
        called: str,
        agent_id: str,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._clock = clock
        self.started_at = clock()
        self.ended_at: datetime | None = None
        self.call_id = call_id
        self.carrier = carrier
        self.direction = direction
        self.caller = caller
        self.called = called
        self.end_reason = INTERRUPTED  # what a record not yet finished says
        self.end_detail: str | None = None
        self.transfer_to: str | None = None
        self.agents = [agent_id]
        self.handoffs: list[dict[str, Any]] = []
        self.transcript: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.dtmf: list[dict[str, Any]] = []
        self.reconnects: list[dict[str, Any]] = []
        self.usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self.recording: str | None = None
        self._handlers: dict[str, Callable[[str, Mapping[str, Any]], None]] = {
            "transcript": self._transcript,
            "handoff.completed": self._handoff,
            "handoff.rejected": self._handoff_rejected,
            "tool.completed": self._tool,
            "call.end_requested": self._end_requested,
            "call.transferred": self._transferred,
            "transfer.failed": self._transfer_failed,
            "dtmf.entry": self._dtmf,
            "live.reconnected": self._reconnected,
            "live.usage": self._usage,
        }

    def observe(self, name: str, payload: Mapping[str, Any]) -> None:
        handler = self._handlers.get(name)
        if handler is not None:
            handler(format_time(self._clock()), payload)

    def finish(self, bridge_reason: str) -> None:
        """The call is over: ``bridge_reason`` is the bridge's end reason."""
        self.ended_at = self._clock()
        self.end_reason = record_end_reason(bridge_reason)
        self.end_detail = bridge_reason

    def document(self) -> dict[str, Any]:
        """The record as JSON-ready data (open records say ``interrupted`` and no end)."""
        ended = self.ended_at
        return {
            "call_id": self.call_id,
            "carrier": self.carrier,
            "direction": self.direction,
            "from": self.caller,
            "to": self.called,
            "started_at": format_time(self.started_at),
            "ended_at": format_time(ended) if ended is not None else None,
            "duration_s": (
                round((ended - self.started_at).total_seconds(), 3) if ended is not None else None
            ),
            "end_reason": self.end_reason,
            "end_detail": self.end_detail,
            "transfer_to": self.transfer_to,
            "agents": list(self.agents),
            "handoffs": list(self.handoffs),
            "transcript": list(self.transcript),
            "tool_calls": list(self.tool_calls),
            "dtmf": list(self.dtmf),
            "reconnects": list(self.reconnects),
            "usage": dict(self.usage),
            "recording": self.recording,
        }

    # ------------------------------------------------------------------ event handlers

    def _transcript(self, at: str, p: Mapping[str, Any]) -> None:
        speaker = p.get("speaker")
        if speaker not in ("caller", "agent"):  # keypad and handoff notes have their fields
            return
        entry = {"role": speaker, "agent_id": p.get("agent_id"), "text": p.get("text", ""),
                 "at": at}  # fmt: skip
        if p.get("interrupted"):
            entry["interrupted"] = True
        self.transcript.append(entry)

    def _handoff(self, at: str, p: Mapping[str, Any]) -> None:
        source, target = p.get("from_agent"), p.get("to_agent")
        self.handoffs.append({
            "from": source,
            "to": target,
            "reason": p.get("reason", ""),
            "summary": p.get("summary", ""),
            "at": at,
            "reconnect_ms": p.get("reconnect_ms"),
        })  # fmt: skip
        self.tool_calls.append(_tool_call("handoff_conversation", {"target": target}, True, at))
        if isinstance(target, str) and (not self.agents or self.agents[-1] != target):
            self.agents.append(target)

    def _handoff_rejected(self, at: str, p: Mapping[str, Any]) -> None:
        self.tool_calls.append(
            _tool_call("handoff_conversation", {"target": p.get("target")}, False, at)
        )

    def _tool(self, at: str, p: Mapping[str, Any]) -> None:
        arguments = p.get("arguments")  # absent for a tool marked ``redact: true``
        self.tool_calls.append(
            _tool_call(str(p.get("tool")), arguments, bool(p.get("ok")), at, ms=p.get("ms"))
        )

    def _end_requested(self, at: str, p: Mapping[str, Any]) -> None:
        self.tool_calls.append(_tool_call("end_call", {"reason": p.get("reason", "")}, True, at))

    def _transferred(self, at: str, p: Mapping[str, Any]) -> None:
        self.transfer_to = p.get("destination")
        self.tool_calls.append(_tool_call("transfer_call", {"destination": p.get("to")}, True, at))

    def _transfer_failed(self, at: str, p: Mapping[str, Any]) -> None:
        self.tool_calls.append(_tool_call("transfer_call", {"destination": p.get("to")}, False, at))

    def _dtmf(self, at: str, p: Mapping[str, Any]) -> None:
        self.dtmf.append({"digits": p.get("digits", ""), "at": at})

    def _reconnected(self, at: str, p: Mapping[str, Any]) -> None:
        self.reconnects.append({"reason": p.get("reason"), "at": at, "ms": p.get("ms")})

    def _usage(self, _: str, p: Mapping[str, Any]) -> None:
        for key in self.usage:
            value = p.get(key)
            if isinstance(value, int):
                self.usage[key] += value


def _tool_call(
    name: str, arguments: object, ok: bool, at: str, *, ms: object = 0.0
) -> dict[str, Any]:
    call: dict[str, Any] = {"name": name}
    if arguments is not None:
        call["arguments"] = arguments
    call.update(ok=ok, ms=ms, at=at)
    return call
