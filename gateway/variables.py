"""Call variables in prompts: ``{{caller_number}}`` and friends, filled in per call.

An agent's ``system_prompt`` and ``greeting`` are written once in agents.yaml but often need
something about the call in hand (who is calling, today's date). The syntax is the
double-brace one prompt writers already know; single braces are left alone because prompts
quote JSON. A name the gateway does not know is kept exactly as written rather than blanked:
a visible ``{{foo}}`` in a transcript is easier to diagnose than text that silently vanished,
and ``gateway check`` warns about it before any call is made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, tzinfo

#: The variables every call has (besides ``param.NAME``, one per custom parameter).
CALL_VARIABLES: tuple[str, ...] = (
    "caller_number",
    "called_number",
    "call_id",
    "carrier",
    "date",
    "time",
)
PARAM_PREFIX = "param."

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_PARAM = re.compile(r"^param\.[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def render(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``{{name}}`` whose name is in ``values`` replaced by its value.

    Every other ``{{...}}`` stays exactly as written (spaces included), so rendering with a
    partial set of values never destroys what a later step, or a person, needs to see.
    """
    if "{{" not in text:
        return text
    return _VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def unknown_variables(text: str) -> list[str]:
    """Names used in ``text`` that no call provides, in order of first use, no repeats."""
    unknown: list[str] = []
    for match in _VARIABLE.finditer(text):
        name = match.group(1)
        known = name in CALL_VARIABLES or _PARAM.match(name)
        if not known and name not in unknown:
            unknown.append(name)
    return unknown


def call_variables(
    *,
    caller: str,
    called: str,
    call_id: str,
    carrier: str,
    now: datetime,
    tz: tzinfo,
    params: Mapping[str, str],
) -> dict[str, str]:
    """The values for one call; date and time are local to ``tz`` (the TIMEZONE setting),
    because "today" in a prompt means the business's today, not the server's."""
    local = now.astimezone(tz)
    values = {
        "caller_number": caller,
        "called_number": called,
        "call_id": call_id,
        "carrier": carrier,
        "date": local.date().isoformat(),
        "time": local.strftime("%H:%M"),
    }
    values.update({f"{PARAM_PREFIX}{name}": value for name, value in params.items()})
    return values
