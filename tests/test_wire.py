"""``gateway.wire`` answers as the standard library does, on any input: same value, or the same
exception. Inputs are drawn near the edges (padding, alphabets, escapes, surrogates, numbers at
the 64-bit bounds, byte order marks), where two implementations are likeliest to differ."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import wire

_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: Mostly the alphabet, and now and then what must not be there.
_NEAR_B64 = st.text(
    st.sampled_from(_B64_CHARS + "=" * 8 + "-_" * 2 + " \n\r\t.!é\x00"), max_size=40
)


def _outcome(fn: Callable[[Any], Any], data: Any) -> tuple[str, Any]:
    try:
        return "value", fn(data)
    except (ValueError, RecursionError) as exc:  # binascii.Error, JSONDecodeError are ValueErrors
        return "raised", type(exc)


def _valid_b64(urlsafe: bool) -> st.SearchStrategy[str]:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return st.binary(max_size=40).map(lambda raw: encode(raw).decode())


def _corrupted(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid base64 with one character replaced, or padding added or cut."""

    @st.composite
    def draw(draw: st.DrawFn) -> str:
        text = draw(strategy)
        how = draw(st.sampled_from(["replace", "pad", "cut"]))
        if how == "pad":
            return text + "=" * draw(st.integers(1, 3))
        if how == "cut" or not text:
            return text[: draw(st.integers(0, len(text)))]
        at = draw(st.integers(0, len(text) - 1))
        return text[:at] + draw(st.sampled_from("=-_+/ é\n")) + text[at + 1 :]

    return draw()


_ANY_B64 = st.one_of(
    _NEAR_B64, _valid_b64(False), _valid_b64(True), _corrupted(_valid_b64(False)),
    _corrupted(_valid_b64(True)),
)  # fmt: skip


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (wire.b64decode, lambda data: base64.b64decode(data, validate=True)),
        (wire.b64decode_strict, lambda data: binascii.a2b_base64(data, strict_mode=True)),
        (wire.urlsafe_b64decode, base64.urlsafe_b64decode),
    ],
    ids=["b64decode-validate", "a2b_base64-strict", "urlsafe_b64decode"],
)
@settings(max_examples=1500, deadline=None)
@given(text=_ANY_B64, as_bytes=st.booleans())
@example(text="mIeiUerL=", as_bytes=False)  # excess padding: binascii takes it, pybase64 does not
@example(text="A-_A", as_bytes=True)
@example(text="AA==\n", as_bytes=False)
def test_base64_decoding_answers_as_the_standard_library(
    ours: Callable[[Any], bytes], theirs: Callable[[Any], bytes], text: str, as_bytes: bool
) -> None:
    data: str | bytes = text.encode("utf-8") if as_bytes else text
    assert _outcome(ours, data) == _outcome(theirs, data)


@given(raw=st.binary(max_size=3000))
def test_base64_encoding_answers_as_the_standard_library(raw: bytes) -> None:
    assert wire.b64encode(raw) == base64.b64encode(raw).decode("ascii")
    assert wire.urlsafe_b64encode(raw) == base64.urlsafe_b64encode(raw).decode("ascii")
    assert wire.b64encode(bytearray(raw)) == wire.b64encode(memoryview(raw))  # what callers pass


_JSON_TOKENS = st.sampled_from([
    "{", "}", "[", "]", ":", ",", " ", "\n", '"a"', '"b"', '"é"', '"\\u00e9"', '"\\ud800"',
    '"\\udc00\\ud800"', '"\\/"', '"\\x"', '"\t"', "\ufeff", "1", "-0", "-0.0", "01", ".5", "1.0",
    "1E2", "1e400", "-1e-400", "2.2250738585072011e-308", "4.9e-324", "1.7976931348623157e308",
    "9007199254740993", "0.30000000000000004", "9223372036854775807", "-9223372036854775808",
    "18446744073709551615", "NaN", "-Infinity", "true", "false", "null", '"\\u0000"',
])  # fmt: skip


def _has_a_big_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return any(_has_a_big_integer(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_a_big_integer(v) for v in value)
    return False


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal, type for type (1 is not 1.0 here, -0.0 is not 0.0), NaN equal to NaN."""
    if a[0] != b[0] or a[0] == "raised":
        return a == b
    return _canonical(a[1]) == _canonical(b[1])


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value.hex())
    if isinstance(value, dict):
        return ("dict", [(k, _canonical(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_canonical(v) for v in value])
    return (type(value).__name__, value)


@settings(max_examples=3000, deadline=None)
@given(tokens=st.lists(_JSON_TOKENS, min_size=1, max_size=12), wrap=st.booleans(),
       as_bytes=st.booleans())  # fmt: skip
@example(tokens=['{"a":', "18446744073709551616", "}"], wrap=False, as_bytes=False)
@example(tokens=['{"a":1,"a":2}'], wrap=False, as_bytes=True)
def test_json_answers_as_the_standard_library_but_for_integers_beyond_64_bits(
    tokens: list[str], wrap: bool, as_bytes: bool
) -> None:
    text = "".join(tokens)
    if wrap:
        text = '{"event":"media","media":' + text + "}"
    data: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    theirs, ours = _outcome(json.loads, data), _outcome(wire.loads, data)
    if theirs[0] == "value" and _has_a_big_integer(theirs[1]):
        assert ours[0] == "value"  # read, perhaps as a float: the documented difference
        return
    assert _same(ours, theirs), (ours, theirs)


def test_json_nested_too_deep_raises_as_the_standard_library_does() -> None:
    text = "[" * 5000 + "]" * 5000
    assert _outcome(wire.loads, text) == _outcome(json.loads, text) == ("raised", RecursionError)
