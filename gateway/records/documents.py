"""The record document (a JSON-ready dict the bridge builds) and what the store derives from it.

The store keeps the document as the bridge wrote it, keys it does not know included
(``handoffs``, ``transcript``, …), and reads only: ``call_id``, ``carrier``, ``direction``,
``from``, ``to``, ``started_at``, ``ended_at``, ``end_reason`` and ``agents``. Two rewrites are
its own: an *open* record says ``end_reason: "interrupted"`` and no end (what it must say if
its process dies before finishing it), and an *interrupted* one ends at its last heartbeat.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from gateway.records.times import format_time, parse_time

#: The end reason of a call whose process stopped before the call ended.
INTERRUPTED: Final = "interrupted"


def dumps(doc: dict[str, Any]) -> str:
    """The document's JSON as stored and POSTed: compact, and ASCII (escapes keep a stray lone
    surrogate in a transcript from making the text unencodable as UTF-8)."""
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("a call record document is a JSON object")
    return doc


def call_id(doc: dict[str, Any]) -> str:
    return str(_required(doc, "call_id"))


def columns(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``calls`` columns that mirror the document (all but owner and heartbeat)."""
    ended = doc.get("ended_at")
    return {
        "call_id": call_id(doc),
        "carrier": str(_required(doc, "carrier")),
        "direction": str(_required(doc, "direction")),
        "from_number": doc.get("from"),
        "to_number": doc.get("to"),
        "started_at": parse_time(_required(doc, "started_at")),
        "ended_at": parse_time(ended) if ended else None,
        "end_reason": str(doc.get("end_reason") or ""),
        "document": dumps(doc),
    }


def agents(doc: dict[str, Any]) -> list[str]:
    """The distinct agent ids of the record, first appearance first."""
    return list(dict.fromkeys(str(a) for a in doc.get("agents") or ()))


def opened(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as an open record is stored: no end yet, and interrupted unless finished."""
    return {**doc, "ended_at": None, "duration_s": None, "end_reason": INTERRUPTED}


def interrupted(doc: dict[str, Any], ended_at: datetime) -> dict[str, Any]:
    """An open record closed for its process: it ended at ``ended_at`` (its last heartbeat)."""
    started = parse_time(_required(doc, "started_at"))
    duration = max(0.0, (ended_at - started).total_seconds())
    return {
        **doc,
        "ended_at": format_time(ended_at),
        "duration_s": round(duration, 3),
        "end_reason": INTERRUPTED,
    }


def _required(doc: dict[str, Any], key: str) -> Any:
    value = doc.get(key)
    if value is None or value == "":
        raise ValueError(f"call record without {key!r}")
    return value
