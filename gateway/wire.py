"""JSON and base64 of the per-frame paths, in C, with the standard library's answers.

Every 20 ms frame of a call is a JSON message with base64 audio in it, both ways: a caller's
frame is parsed and its payload decoded, then encoded again for the model; a model message of
2.6 KB is parsed and decoded. Under load the standard library's parser and its byte-at-a-time
base64 were 16 % of the gateway's CPU (benchmarks/README.md, "JSON and base64 in C"). `orjson`
parses 2-3x faster and `pybase64` (SIMD) codes base64 4-10x faster.

Neither may change what the gateway accepts. So each function here is the standard library
function it names, answer for answer, on every input:

- the fast library is tried first; whatever it refuses goes to the standard library, which then
  gives the answer (the value, or the very exception it always raised);
- what the fast library accepts, it reads as the standard library does: checked by property
  tests against arbitrary input (tests/test_wire.py). ``pybase64`` is the stricter of the two
  (it refuses excess padding that ``binascii`` lets through), never the laxer.
- The one difference is in :func:`loads`: an integer beyond 64 bits comes back as a float
  (``orjson`` 3.11 and later; older ones refuse it, and ``json`` then reads it). Use it only
  where no number is read, or none could be that large: see :func:`loads`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import orjson
import pybase64

__all__ = ["b64decode", "b64decode_strict", "b64encode", "loads", "urlsafe_b64decode",
           "urlsafe_b64encode"]  # fmt: skip

_URLSAFE = b"-_"
_Data = str | bytes


def loads(data: _Data) -> Any:
    """``json.loads(data)``, except that an integer beyond 64 bits may come back as a float.

    For messages whose numbers are read only as bounded counters (a carrier's media message,
    whose counters beyond 2**31 are refused whatever their type) or that hold no number the
    caller reads (a model's audio message): there the difference cannot change an outcome.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def b64decode(data: _Data) -> bytes:
    """``base64.b64decode(data, validate=True)``."""
    try:
        return pybase64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error is one
        return base64.b64decode(data, validate=True)


def b64decode_strict(data: _Data) -> bytes:
    """``binascii.a2b_base64(data, strict_mode=True)``."""
    try:
        return pybase64.b64decode(data, validate=True)
    except ValueError:
        return binascii.a2b_base64(data, strict_mode=True)


def urlsafe_b64decode(data: _Data) -> bytes:
    """``base64.urlsafe_b64decode(data)`` (which skips characters outside the alphabet)."""
    plus, slash = ("+", "/") if isinstance(data, str) else (b"+", b"/")
    if plus in data or slash in data:  # type: ignore[operator]
        # The standard alphabet's two: pybase64 still takes them here, with a warning that
        # it will refuse them, and the standard library reads them as its own.
        return base64.urlsafe_b64decode(data)
    try:
        return pybase64.b64decode(data, altchars=_URLSAFE, validate=True)
    except ValueError:
        return base64.urlsafe_b64decode(data)


def b64encode(data: bytes) -> str:
    """``base64.b64encode(data).decode("ascii")``."""
    return pybase64.b64encode_as_string(data)


def urlsafe_b64encode(data: bytes) -> str:
    """``base64.urlsafe_b64encode(data).decode("ascii")``."""
    return pybase64.b64encode_as_string(data, altchars=_URLSAFE)
