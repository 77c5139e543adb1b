"""The simulators' compact JSON is json.dumps's, whoever writes it (callsim.jsontext)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callsim.jsontext import compact


def _standard(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _spelled_alike(value: Any) -> bool:
    """No float and no DEL: the two spellings compact may differ in are absent."""
    if isinstance(value, float):
        return False
    if isinstance(value, str):
        return "\x7f" not in value
    if isinstance(value, dict):
        return all(_spelled_alike(k) and _spelled_alike(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_spelled_alike(item) for item in value)
    return True


@given(_values)
def test_compact_writes_the_same_json_as_the_standard_library(value: Any) -> None:
    text = compact(value)
    # The same value (NaN compared by its spelling, as json writes it back).
    assert _standard(json.loads(text)) == _standard(json.loads(_standard(value)))
    if _spelled_alike(value):
        assert text == _standard(value)


def test_the_usual_messages_are_written_exactly_as_before() -> None:
    media = {
        "event": "media",
        "sequenceNumber": "7",
        "media": {"track": "inbound", "chunk": "6", "timestamp": "120", "payload": "/v7+/w=="},
        "streamSid": "MZ0123",
    }
    live = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "AAA="}}]}}}
    for message in (media, live, {"text": "café \u2603"}, {"n": float("nan")}, {3: "x"}):
        assert compact(message) == _standard(message)


def test_what_json_refuses_is_refused() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    for value in (Point(1), dt.date(2026, 12, 7), {"a": {1, 2}}, b"bytes"):
        with pytest.raises(TypeError):
            compact(value)
