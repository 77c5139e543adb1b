"""No message can break a call: every frame class of both carriers, fuzzed, parses to an event
or a ProtocolError, never anything else; plus the specific tricks seen from outside."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.carriers.base import (
    MAX_JSON_DEPTH,
    MAX_PARAMETERS,
    ProtocolError,
    StreamStarted,
    bounded_int,
    custom_parameters,
    load_object,
)
from gateway.carriers.reorder import Reorderer
from gateway.carriers.telnyx import TelnyxCodec
from gateway.carriers.twilio import TwilioCodec
from gateway.carriers.web import WebCodec

SID = "MZ" + "5" * 32
TWILIO = {
    "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    "start": {
        "event": "start", "sequenceNumber": "1", "streamSid": SID,
        "start": {"accountSid": "AC" + "2" * 32, "streamSid": SID, "callSid": "CA" + "1" * 32,
                  "tracks": ["inbound"], "customParameters": {"token": "v2.x.1.y"},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                  "channels": 1}},
    },
    "media": {"event": "media", "sequenceNumber": "3", "streamSid": SID,
              "media": {"track": "inbound", "chunk": "1", "timestamp": "5",
                        "payload": "//////////8="}},
    "mark": {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "turn-1"}},
    "dtmf": {"event": "dtmf", "sequenceNumber": "5", "streamSid": SID,
             "dtmf": {"track": "inbound_track", "digit": "1"}},
    "stop": {"event": "stop", "sequenceNumber": "6", "streamSid": SID,
             "stop": {"accountSid": "AC" + "2" * 32, "callSid": "CA" + "1" * 32}},
}  # fmt: skip
STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TELNYX = {
    "connected": {"event": "connected", "version": "1.0.0"},
    "start": {
        "event": "start", "sequence_number": "1", "stream_id": STREAM,
        "start": {"user_id": "u", "call_control_id": "v3:abc", "call_session_id": "s",
                  "from": "+13122010094", "to": "+13122123456", "client_state": "aGk=",
                  "custom_parameters": {"token": "v2.x.1.y"},
                  "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
    },
    "media": {"event": "media", "sequence_number": "3", "stream_id": STREAM,
              "media": {"track": "inbound", "chunk": "1", "timestamp": "5",
                        "payload": "//////////8="}},
    "mark": {"event": "mark", "sequence_number": "4", "stream_id": STREAM,
             "mark": {"name": "turn-1"}},
    "dtmf": {"event": "dtmf", "sequence_number": "5", "stream_id": STREAM,
             "dtmf": {"digit": "1"}},
    "stop": {"event": "stop", "sequence_number": "6", "stream_id": STREAM,
             "stop": {"user_id": "u", "call_control_id": "v3:abc"}},
    "error": {"event": "error", "stream_id": STREAM,
              "payload": {"code": 100003, "title": "malformed_frame", "detail": "x"}},
}  # fmt: skip

#: Values that have broken parsers elsewhere: huge and odd numbers, deep nesting, odd types.
NASTY: list[Any] = [
    None, True, False, 0, -1, 2**31, 2**63, 10**40, 1e308, -1e308, 0.5, float("nan"),
    "", " ", "²", "٣", "9" * 5000, "1e999", "-1", "\x00", "\ud800x"[1:], "🙂" * 100,
    [], {}, [[[]]], {"a": {"b": {"c": {}}}}, ["1"] * 100, {"name": [1], "value": {}},
    [{"name": [1], "value": 2}], [{"name": "x", "value": {"deep": [1]}}],
]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.sampled_from(NASTY),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a message, so a fuzz case can replace any field at any depth."""
    out: list[tuple[str, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


def _mutated(base: dict[str, Any], path: tuple[str, ...], value: Any, drop: bool) -> str:
    msg = copy.deepcopy(base)
    node = msg
    for key in path[:-1]:
        node = node[key]
    if drop:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return json.dumps(msg, allow_nan=True)


def _survives(codec_factory: Callable[[], Any], messages: dict[str, Any], text: str) -> None:
    """Parse ``text`` on a fresh codec and on one already started: only events or
    ProtocolError may come out."""
    fresh, started = codec_factory(), codec_factory()
    started.parse(json.dumps(messages["start"]))
    for codec in (fresh, started):
        with contextlib.suppress(ProtocolError):
            codec.parse(text)


#: The browser's (``/web/stream``): Twilio's shape, its own audio format.
WEB: dict[str, Any] = {
    "connected": {"event": "connected"},
    "start": {"event": "start", "start": {
        "streamSid": "WS1", "callSid": "WB1", "customParameters": {"token": "t", "phase": "p"},
        "mediaFormat": {"encoding": "audio/pcm16le", "sampleRate": 16000, "channels": 1}}},
    "media": {"event": "media", "media": {"payload": "AAABAA=="}},
    "mark": {"event": "mark", "mark": {"name": "played-1"}},
    "dtmf": {"event": "dtmf", "dtmf": {"digit": "5"}},
    "stop": {"event": "stop"},
}  # fmt: skip

CODECS = [
    pytest.param(TwilioCodec, TWILIO, id="twilio"),
    pytest.param(TelnyxCodec, TELNYX, id="telnyx"),
    pytest.param(WebCodec, WEB, id="web"),
]


@pytest.mark.parametrize(("factory", "messages"), CODECS)
@pytest.mark.parametrize("frame", ["connected", "start", "media", "mark", "dtmf", "stop", "error"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_fuzzed_frame_class_is_an_event_or_a_protocol_error(
    factory: Callable[[], Any], messages: dict[str, Any], frame: str, data: st.DataObject
) -> None:
    base = messages.get(frame, {"event": frame})
    path = data.draw(st.sampled_from(_paths(base)))
    value = data.draw(JSON_VALUES)
    text = _mutated(base, path, value, drop=data.draw(st.booleans()))
    _survives(factory, messages, text)


@pytest.mark.parametrize(("factory", "messages"), CODECS)
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_text_at_all_is_an_event_or_a_protocol_error(
    factory: Callable[[], Any], messages: dict[str, Any], text: str
) -> None:
    _survives(factory, messages, text)


@pytest.mark.parametrize(("factory", "messages"), CODECS)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_refused_before_the_parser_recurses(
    factory: Callable[[], Any], messages: dict[str, Any], depth: int
) -> None:
    media = dict(messages["media"])
    text = json.dumps(media)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    codec = factory()
    codec.parse(json.dumps(messages["start"]))
    with pytest.raises(ProtocolError, match="nested deeper"):
        codec.parse(text)


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = json.dumps({"event": "mark", "mark": {"name": "[{" * 500 + '"\\\\'}})
    assert load_object(text)["mark"]["name"].startswith("[{[{")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2), (8000, 8000), ("0", 0), ("-1", None), ("²", None), ("٣", None), ("9" * 5000, None),
     (1e999, None), (float("nan"), None), (True, None), (2**31, None), ("", None), (None, None)],
)  # fmt: skip
def test_numbers_are_bounded_before_conversion(value: object, expected: int | None) -> None:
    assert bounded_int(value) == expected


def test_custom_parameters_keep_scalars_only_bounded() -> None:
    raw = {f"p{i}": i for i in range(100)} | {"nested": {"a": 1}, "flag": True}
    params = custom_parameters(raw)
    assert len(params) == MAX_PARAMETERS and params["p1"] == "1"
    listed = custom_parameters([{"name": "token", "value": "t"}, {"name": [1], "value": 2}, "x"])
    assert listed == {"token": "t"}
    assert custom_parameters({"v": "x" * 5000})["v"] == "x" * 1000
    with pytest.raises(ProtocolError):
        custom_parameters("a string")


def test_telnyx_start_with_nonsense_numbers_is_a_fatal_protocol_error() -> None:
    for rate in ("8000²", "9" * 5000, 1e999, -8000, None):
        msg = copy.deepcopy(TELNYX["start"])
        msg["start"]["media_format"]["sample_rate"] = rate
        with pytest.raises(ProtocolError) as info:
            TelnyxCodec().parse(json.dumps(msg, allow_nan=True))
        assert info.value.fatal


def test_a_start_is_parsed_with_bounded_ids_and_parameters() -> None:
    msg = copy.deepcopy(TWILIO["start"])
    msg["start"]["customParameters"] = {"token": "t", "from": {"deep": 1}, "n": 5}
    event = TwilioCodec().parse(json.dumps(msg))
    assert isinstance(event, StreamStarted)
    assert event.parameters == {"token": "t", "n": "5"}
    assert event.account_id == "AC" + "2" * 32
    for bad_id in ("", "x" * 257, "CA 1", "CA\n1", 7, None):
        msg["start"]["callSid"] = bad_id
        with pytest.raises(ProtocolError) as info:
            TwilioCodec().parse(json.dumps(msg))
        assert info.value.fatal


def test_chunk_numbers_far_ahead_cost_no_more_than_near_ones() -> None:
    """A stream numbered from a billion on used to make the reorder buffer count up to it."""
    reorder = Reorderer(3, first=1)
    for n in range(10**9, 10**9 + 10):
        reorder.push(n, b"x")
    assert reorder.lost == 10**9 - 1


def test_a_browser_start_keeps_only_the_parameters_the_page_may_set() -> None:
    msg = copy.deepcopy(WEB["start"])
    msg["start"]["customParameters"].update(direction="outbound", to="+15551234567")
    event = WebCodec().parse(json.dumps(msg))
    assert isinstance(event, StreamStarted)
    assert dict(event.parameters) == {"token": "t", "phase": "p", "from": "browser"}
    assert event.direction == "inbound"  # a page cannot pass for a call the gateway placed
    assert str(event.audio_format) == "L16/16000/little-endian"
    assert event.downlink_format is not None and event.downlink_format.sample_rate == 24000
