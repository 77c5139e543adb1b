"""The simulators' JSON text: compact, as the real services write it, built in C.

Every simulated peer (the callers, the Live and Realtime models) writes its messages as
``json.dumps(message, separators=(",", ":"))`` would. Under load that was the load generators'
largest single cost after the websocket itself (a tenth of a caller process at 50 calls), so
:func:`compact` has ``orjson`` write it instead whenever the result is the same JSON:

- the same value, in the same text but for two spellings: some floats (``0.00001`` for
  ``1e-05``) and DEL, U+007F, which ``orjson`` leaves unescaped;
- ``json``'s own text for what ``orjson`` writes differently or refuses: non-ASCII text (left
  escaped as ``\\uXXXX``, as before), integers beyond 64 bits, keys that are not strings,
  ``NaN`` and infinities (``json`` writes them, not valid JSON, as a test of a peer may want),
  and subclasses, dataclasses and dates (``json`` refuses the last two: so does this). A
  plain enum, which ``json`` refuses, is written by its value: the simulators send none.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

#: Types ``orjson`` would write on its own where ``json`` has its own rules (or refuses them).
_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def compact(message: Any) -> str:
    """``json.dumps(message, separators=(",", ":"))``, written by ``orjson`` when that is the
    same JSON (see the module's note)."""
    try:
        data = orjson.dumps(message, option=_PASSTHROUGH)
    except TypeError:  # a big integer, a key that is not a string, a type left to json
        return _standard(message)
    if not data.isascii() or (b"null" in data and _has_non_finite(message)):
        return _standard(message)
    return data.decode("ascii")


def _standard(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def _has_non_finite(value: Any) -> bool:
    """Whether a float that is not finite (written ``null`` by orjson) is anywhere in it."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(item) for item in value)
    return False
