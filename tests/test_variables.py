"""Prompt variables: ``{{name}}`` replaced per call, everything else left exactly as written."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from gateway.variables import CALL_VARIABLES, call_variables, render, unknown_variables

NAMES = st.sampled_from([*CALL_VARIABLES, "param.account", "foo", "param.x-y"])
#: Values as calls produce them: no braces (a value never introduces a variable).
VALUES = st.dictionaries(NAMES, st.text(st.characters(exclude_characters="{}"), max_size=12))
PLAIN = st.text(st.characters(exclude_characters="{}"), max_size=20)
TOKEN = st.builds(lambda name, pad: f"{{{{{pad}{name}{pad}}}}}", NAMES, st.sampled_from(["", " "]))
#: Prompt text: plain runs (any non-brace text) and variables, in any order.
PROMPT = st.lists(st.one_of(PLAIN, TOKEN), max_size=8).map("".join)
#: A variable as TOKEN writes it.
WRITTEN = re.compile(r"\{\{ ?[\w.-]+ ?\}\}")


def test_known_names_are_replaced_spaces_tolerated_single_braces_untouched() -> None:
    text = 'Hi {{caller_number}}, today is {{ date }}. Reply {"id": "{{call_id}}"} {{param.acct}}'
    values = {"caller_number": "+15551234567", "date": "2025-01-31", "param.acct": "A-7"}
    assert render(text, values) == (
        'Hi +15551234567, today is 2025-01-31. Reply {"id": "{{call_id}}"} A-7'
    )


@given(st.text().filter(lambda t: "{{" not in t), VALUES)
def test_text_without_double_braces_is_unchanged(text: str, values: dict[str, str]) -> None:
    assert render(text, values) == text


@given(PROMPT, VALUES)
def test_render_is_idempotent(text: str, values: dict[str, str]) -> None:
    once = render(text, values)
    assert render(once, values) == once


@given(PROMPT, VALUES)
def test_names_without_a_value_are_kept_as_written(text: str, values: dict[str, str]) -> None:
    rendered = render(text, values)
    for token in WRITTEN.findall(text):
        name = token.strip("{} ")
        if name not in values:
            assert token in rendered


def test_unknown_variables_are_listed_once_in_order() -> None:
    text = "{{caller_number}} {{nmae}} {{ param.order }} {{carier}} {{nmae}} {{param.}} {x}"
    assert unknown_variables(text) == ["nmae", "carier", "param."]


def test_call_variables_use_the_time_zone_for_date_and_time() -> None:
    now = datetime(2025, 1, 31, 23, 30, tzinfo=UTC)
    values = call_variables(
        caller="+15551234567",
        called="+15557654321",
        call_id="CA123",
        carrier="twilio",
        now=now,
        tz=ZoneInfo("Asia/Tokyo"),
        params={"account": "A-7"},
    )
    assert values == {
        "caller_number": "+15551234567",
        "called_number": "+15557654321",
        "call_id": "CA123",
        "carrier": "twilio",
        "date": "2025-02-01",
        "time": "08:30",
        "param.account": "A-7",
    }
