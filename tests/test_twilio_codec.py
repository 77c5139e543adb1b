"""Twilio Media Streams codec and TwiML, tested with plain strings (no sockets)."""

from __future__ import annotations

import base64
import contextlib
import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.carriers.base import (
    AudioReceived,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from gateway.carriers.twilio import TwilioCodec, connect_stream_twiml

SID = "MZ" + "a" * 32
CALL = "CA" + "b" * 32


def start_message(**overrides: object) -> str:
    msg = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC" + "c" * 32,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"call_sid": CALL, "from": "+15550001111"},
        },
        "streamSid": SID,
    }
    msg.update(overrides)
    return json.dumps(msg)


def media_message(payload: bytes, sid: str = SID, seq: int = 2) -> str:
    return json.dumps({
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {"track": "inbound", "chunk": str(seq - 1), "timestamp": "20",
                  "payload": base64.b64encode(payload).decode()},
        "streamSid": sid,
    })  # fmt: skip


@pytest.fixture
def codec() -> TwilioCodec:
    c = TwilioCodec()
    assert c.parse('{"event":"connected","protocol":"Call","version":"1.0.0"}') is None
    event = c.parse(start_message())
    assert isinstance(event, StreamStarted)
    return c


def test_start_carries_ids_format_and_parameters(codec: TwilioCodec) -> None:
    fresh = TwilioCodec()
    event = fresh.parse(start_message())
    assert isinstance(event, StreamStarted)
    assert event.stream_id == SID
    assert event.call_id == CALL
    assert event.audio_format.encoding == "PCMU"
    assert event.audio_format.sample_rate == 8000
    assert dict(event.parameters) == {"call_sid": CALL, "from": "+15550001111"}


def test_inbound_events(codec: TwilioCodec) -> None:
    assert codec.parse(media_message(b"\xff" * 160)) == AudioReceived(b"\xff" * 160)
    mark = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "turn-1"}}
    assert codec.parse(json.dumps(mark)) == MarkPlayed("turn-1")
    dtmf = {"event": "dtmf", "streamSid": SID, "sequenceNumber": "5",
            "dtmf": {"track": "inbound_track", "digit": "5"}}  # fmt: skip
    assert codec.parse(json.dumps(dtmf)) == DtmfReceived("5")
    stop = {"event": "stop", "sequenceNumber": "6", "streamSid": SID,
            "stop": {"accountSid": "AC", "callSid": CALL}}  # fmt: skip
    assert codec.parse(json.dumps(stop)) == StreamStopped()


def test_outbound_messages_carry_exactly_twilios_fields(codec: TwilioCodec) -> None:
    media = json.loads(codec.media(b"\x01\x02\xff"))
    assert media == {"event": "media", "streamSid": SID, "media": {"payload": "AQL/"}}
    assert json.loads(codec.mark('turn "1"')) == {
        "event": "mark", "streamSid": SID, "mark": {"name": 'turn "1"'}
    }  # fmt: skip
    assert json.loads(codec.clear()) == {"event": "clear", "streamSid": SID}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"event": "teleport"}', "unknown event"),
        ('{"no": "event"}', "unknown event"),
        (media_message(b"x", sid="MZother"), "another streamSid"),
        (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "***"}}), "base64"),
        (json.dumps({"event": "media", "streamSid": SID, "media": {}}), "without a payload"),
        (
            json.dumps(
                {"event": "media", "streamSid": SID, "media": {"track": "outbound", "payload": ""}}
            ),
            "track",
        ),
        (json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "55"}}), "digit"),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {}}), "without a name"),
        (start_message(), "second 'start'"),
    ],
)
def test_bad_messages_are_droppable_errors(codec: TwilioCodec, text: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as info:
        codec.parse(text)
    assert not info.value.fatal


def test_events_before_start_are_rejected() -> None:
    codec = TwilioCodec()
    with pytest.raises(ProtocolError, match="before 'start'"):
        codec.parse(media_message(b"\xff"))
    with pytest.raises(ProtocolError, match="before 'start'"):
        codec.parse('{"event": "stop"}')


def test_unsupported_format_is_fatal() -> None:
    bad = json.loads(start_message())
    bad["start"]["mediaFormat"]["sampleRate"] = 16000
    with pytest.raises(ProtocolError) as info:
        TwilioCodec().parse(json.dumps(bad))
    assert info.value.fatal


@given(st.binary(max_size=2000))
def test_media_round_trips_any_payload(payload: bytes) -> None:
    codec = TwilioCodec()
    codec.parse(start_message())
    out = json.loads(codec.media(payload))
    assert base64.b64decode(out["media"]["payload"]) == payload
    assert codec.parse(media_message(payload)) == AudioReceived(payload)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


_KEYS = st.sampled_from(["event", "streamSid", "media", "start", "mark", "dtmf", "stop"])
_messages = st.one_of(
    st.text(max_size=300),
    _json_values.map(json.dumps),
    st.dictionaries(_KEYS, _json_values).map(json.dumps),
    st.fixed_dictionaries(
        {"event": st.sampled_from(["start", "media", "mark", "dtmf", "stop", "connected"])},
        optional={"streamSid": _json_values, "start": _json_values, "media": _json_values,
                  "mark": _json_values, "dtmf": _json_values},
    ).map(json.dumps),
)  # fmt: skip


@given(_messages)
def test_parser_never_raises_anything_but_protocol_error(text: str) -> None:
    for codec in (TwilioCodec(), _started()):
        with contextlib.suppress(ProtocolError):
            codec.parse(text)


def _started() -> TwilioCodec:
    codec = TwilioCodec()
    codec.parse(start_message())
    return codec


def test_twiml_connects_a_stream_with_parameters_and_no_query() -> None:
    xml = connect_stream_twiml(
        "wss://gw.example.com/twilio/stream", {"call_sid": CALL, "x": 'a"<b'}
    )
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    (connect,) = list(root)
    assert connect.tag == "Connect"
    (stream,) = list(connect)
    assert stream.tag == "Stream"
    assert stream.attrib == {"url": "wss://gw.example.com/twilio/stream"}
    assert {p.attrib["name"]: p.attrib["value"] for p in stream} == {"call_sid": CALL, "x": 'a"<b'}
    assert connect_stream_twiml("wss://gw/s", {"t": "1"}, "<Hangup/>") == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://gw/s">'
        '<Parameter name="t" value="1"/></Stream></Connect><Hangup/></Response>'
    )  # the bytes Twilio has always been sent
    with pytest.raises(ValueError, match="query"):
        connect_stream_twiml("wss://gw.example.com/twilio/stream?token=1", {})
    with pytest.raises(ValueError, match="too long"):
        connect_stream_twiml("wss://gw/s", {"p": "x" * 600})
