"""The call record built from call events: plain events in, the document out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.records.record import END_REASONS, CallRecord, record_end_reason


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=250)
        return self.now


def new_record() -> CallRecord:
    return CallRecord(call_id="CA1", carrier="twilio", direction="inbound", caller="+1415",
                      called="+1800", agent_id="triage", clock=Clock())  # fmt: skip


def events(record: CallRecord, *named: tuple[str, dict[str, Any]]) -> None:
    for name, payload in named:
        record.observe(name, payload)


def test_an_open_record_says_interrupted_and_has_no_end() -> None:
    doc = new_record().document()
    assert (doc["end_reason"], doc["ended_at"], doc["duration_s"]) == ("interrupted", None, None)
    assert doc["started_at"] == "2026-12-06T09:00:00.250Z"
    assert doc["agents"] == ["triage"] and doc["usage"]["total_tokens"] == 0


def test_the_events_of_a_call_become_its_fields() -> None:
    record = new_record()
    events(
        record,
        ("transcript", {"speaker": "caller", "agent_id": "triage", "text": "Hi"}),
        ("transcript", {"speaker": "note", "agent_id": "triage", "text": "keys"}),
        ("transcript", {"speaker": "agent", "agent_id": "triage", "text": "Hel",
                        "interrupted": True}),
        ("handoff.completed", {"from_agent": "triage", "to_agent": "advisor", "reason": "r",
                               "summary": "s", "reconnect_ms": 12.5}),
        ("handoff.rejected", {"target": "nobody"}),
        ("tool.completed", {"tool": "lookup", "ok": True, "ms": 4.2, "arguments": {"id": 1}}),
        ("tool.completed", {"tool": "secret", "ok": False, "ms": 9.0}),  # redact: no arguments
        ("dtmf.entry", {"keys": 3, "digits": "12#"}),
        ("live.reconnected", {"reason": "goaway", "ms": 180.0, "resumed": True}),
        ("live.usage", {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}),
        ("live.usage", {"input_tokens": 20, "output_tokens": 7, "total_tokens": 27}),
        ("call.transferred", {"to": "billing", "destination": "+15551234567"}),
        ("agent.speaking", {}),  # not part of the record
    )  # fmt: skip
    record.finish("transferred")
    doc = record.document()
    assert doc["end_reason"] == "transferred" and doc["transfer_to"] == "+15551234567"
    assert doc["agents"] == ["triage", "advisor"]
    assert [(t["role"], t["text"]) for t in doc["transcript"]] == [("caller", "Hi"),
                                                                   ("agent", "Hel")]  # fmt: skip
    assert doc["transcript"][1]["interrupted"] is True
    (handoff,) = doc["handoffs"]
    assert {k: handoff[k] for k in ("from", "to", "reason", "summary", "reconnect_ms")} == {
        "from": "triage",
        "to": "advisor",
        "reason": "r",
        "summary": "s",
        "reconnect_ms": 12.5,
    }
    names = [(t["name"], t["ok"], t.get("arguments")) for t in doc["tool_calls"]]
    assert names == [
        ("handoff_conversation", True, {"target": "advisor"}),
        ("handoff_conversation", False, {"target": "nobody"}),
        ("lookup", True, {"id": 1}),
        ("secret", False, None),
        ("transfer_call", True, {"destination": "billing"}),
    ]
    assert "arguments" not in doc["tool_calls"][3]
    assert [d["digits"] for d in doc["dtmf"]] == ["12#"]
    assert doc["reconnects"][0]["reason"] == "goaway" and doc["reconnects"][0]["ms"] == 180.0
    assert doc["usage"] == {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42}
    started, ended = (datetime.fromisoformat(doc[k]) for k in ("started_at", "ended_at"))
    assert doc["duration_s"] == (ended - started).total_seconds()
    ats = [datetime.fromisoformat(t["at"]) for t in doc["transcript"] + doc["tool_calls"]]
    assert all(started < at < ended for at in ats)


@pytest.mark.parametrize(
    ("bridge", "record"),
    [
        ("caller_hung_up", "caller_hangup"), ("caller_disconnected", "caller_hangup"),
        ("agent_ended", "agent_ended"), ("transferred", "transferred"),
        ("idle_ended", "idle"), ("idle_timeout", "idle"), ("drained", "drained"),
        ("cancelled", "drained"), ("max_duration", "limit"), ("model_ended", "failed"),
        ("model_unavailable", "failed"), ("protocol_error", "failed"),
        ("error in caller", "failed"),
    ],
)  # fmt: skip
def test_every_bridge_end_reason_maps_to_one_of_the_records(bridge: str, record: str) -> None:
    assert record_end_reason(bridge) == record
    assert record in END_REASONS


def test_a_handoff_back_to_an_earlier_agent_is_listed_again() -> None:
    record = new_record()
    for source, target in (("triage", "advisor"), ("advisor", "triage")):
        record.observe("handoff.completed", {"from_agent": source, "to_agent": target})
    assert record.document()["agents"] == ["triage", "advisor", "triage"]
