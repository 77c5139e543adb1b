"""The media-stream state machine both carriers share (gateway/carriers/stream.py), run through
each carrier's codec: the same order of events must hold whatever the wire names are."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.carriers.base import (
    AudioReceived,
    CarrierReportedError,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from gateway.carriers.stream import DTMF_DIGITS, StreamCodec, StreamState
from gateway.carriers.telnyx import TelnyxCodec
from gateway.carriers.twilio import TwilioCodec

PAYLOAD = b"\xff" * 160


@dataclass(frozen=True)
class Wire:
    """One carrier's spelling of the shared protocol, enough to drive its codec."""

    factory: Callable[[], StreamCodec]
    key: str  # the top-level key naming the stream
    stream: str
    start: dict[str, Any]

    def message(self, event: str, body: dict[str, Any] | None = None, **top: Any) -> str:
        """``event`` for this carrier's stream (``stream=None`` drops the id)."""
        msg: dict[str, Any] = {"event": event, self.key: top.pop("stream", self.stream)}
        if msg[self.key] is None:
            del msg[self.key]
        if body is not None:
            msg[event] = body
        return json.dumps(msg | top)

    def media(self, chunk: int = 1, **top: Any) -> str:
        body = {
            "track": "inbound",
            "chunk": str(chunk),
            "payload": base64.b64encode(PAYLOAD).decode(),
        }
        return self.message("media", body, **top)

    def started(self) -> StreamCodec:
        codec = self.factory()
        assert isinstance(codec.parse(json.dumps(self.start)), StreamStarted)
        return codec


TWILIO_SID = "MZ" + "a" * 32
TWILIO = Wire(
    factory=TwilioCodec,
    key="streamSid",
    stream=TWILIO_SID,
    start={
        "event": "start", "streamSid": TWILIO_SID,
        "start": {"streamSid": TWILIO_SID, "callSid": "CA" + "b" * 32,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    },
)  # fmt: skip
TELNYX_STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TELNYX = Wire(
    factory=TelnyxCodec,
    key="stream_id",
    stream=TELNYX_STREAM,
    start={
        "event": "start", "stream_id": TELNYX_STREAM,
        "start": {"call_control_id": "v3:abc",
                  "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
    },
)  # fmt: skip
WIRES = [pytest.param(TWILIO, id="twilio"), pytest.param(TELNYX, id="telnyx")]
CONNECTED = '{"event": "connected", "version": "1.0.0"}'


def _after_start(wire: Wire) -> dict[str, str]:
    """A valid message of each event allowed only once the stream has started."""
    return {
        "media": wire.media(),
        "mark": wire.message("mark", {"name": "turn-1"}),
        "dtmf": wire.message("dtmf", {"digit": "7"}),
        "stop": wire.message("stop", {}),
    }


@pytest.mark.parametrize("wire", WIRES)
def test_start_moves_the_stream_from_awaiting_start_to_streaming(wire: Wire) -> None:
    codec = wire.factory()
    assert (codec.state, codec.stream_id) == (StreamState.AWAITING_START, None)
    assert codec.parse(CONNECTED) is None
    started = codec.parse(json.dumps(wire.start))
    assert isinstance(started, StreamStarted)
    assert started.stream_id == wire.stream
    assert (codec.state, codec.stream_id) == (StreamState.STREAMING, wire.stream)
    assert codec.parse(CONNECTED) is None  # ignored in either state


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("event", ["media", "mark", "dtmf", "stop"])
def test_events_before_start_are_droppable_errors(wire: Wire, event: str) -> None:
    codec = wire.factory()
    with pytest.raises(ProtocolError, match=f"'{event}' before 'start'") as info:
        codec.parse(_after_start(wire)[event])
    assert not info.value.fatal
    assert codec.state is StreamState.AWAITING_START


@pytest.mark.parametrize("wire", WIRES)
def test_a_second_start_is_dropped_and_changes_nothing(wire: Wire) -> None:
    codec = wire.started()
    other = json.loads(json.dumps(wire.start))
    other[wire.key] = "other-stream"
    other["start"][wire.key] = "other-stream"
    with pytest.raises(ProtocolError, match="second 'start'") as info:
        codec.parse(json.dumps(other))
    assert not info.value.fatal
    assert (codec.state, codec.stream_id) == (StreamState.STREAMING, wire.stream)
    assert codec.parse(wire.media()) == AudioReceived(PAYLOAD)


@pytest.mark.parametrize("wire", WIRES)
def test_a_refused_start_leaves_the_stream_awaiting_start(wire: Wire) -> None:
    codec = wire.factory()
    with pytest.raises(ProtocolError) as info:
        codec.parse(wire.message("start", {"nothing": "useful"}))
    assert info.value.fatal
    assert (codec.state, codec.stream_id) == (StreamState.AWAITING_START, None)
    assert isinstance(codec.parse(json.dumps(wire.start)), StreamStarted)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("event", ["media", "mark", "dtmf", "stop"])
def test_messages_for_another_stream_are_dropped(wire: Wire, event: str) -> None:
    codec = wire.started()
    msg = json.loads(_after_start(wire)[event])
    msg[wire.key] = "someone-else"
    with pytest.raises(ProtocolError, match=f"another {wire.key}") as info:
        codec.parse(json.dumps(msg))
    assert not info.value.fatal


@pytest.mark.parametrize("wire", WIRES)
def test_events_of_the_stream_with_or_without_its_id(wire: Wire) -> None:
    codec = wire.started()
    for stream in (wire.stream, None):
        assert codec.parse(wire.message("mark", {"name": "t"}, stream=stream)) == MarkPlayed("t")
        assert codec.parse(wire.message("dtmf", {"digit": "#"}, stream=stream)) == DtmfReceived("#")
        assert codec.parse(wire.message("stop", {}, stream=stream)) == StreamStopped()
    assert codec.parse(wire.media(chunk=1)) == AudioReceived(PAYLOAD)
    assert codec.parse(wire.media(chunk=2, stream=None)) == AudioReceived(PAYLOAD)


@pytest.mark.parametrize("wire", WIRES)
def test_every_dtmf_key_is_reported_upper_case(wire: Wire) -> None:
    codec = wire.started()
    for digit in sorted(DTMF_DIGITS):
        event = codec.parse(wire.message("dtmf", {"digit": digit}))
        assert event == DtmfReceived(digit.upper())
    assert {d.upper() for d in DTMF_DIGITS} == set("0123456789*#ABCD")


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("dtmf", [{"digit": "55"}, {"digit": ""}, {"digit": "E"}, {"digit": 5},
                                  {"digit": None}, {}, "5", None])  # fmt: skip
def test_dtmf_without_a_valid_digit_is_dropped(wire: Wire, dtmf: Any) -> None:
    codec = wire.started()
    text = json.dumps({"event": "dtmf", wire.key: wire.stream, "dtmf": dtmf})
    with pytest.raises(ProtocolError, match="dtmf without a valid digit") as info:
        codec.parse(text)
    assert not info.value.fatal


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("mark", [{}, {"name": None}, {"name": 1}, {"name": ["t"]}, "t", None])
def test_a_mark_without_a_name_is_dropped(wire: Wire, mark: Any) -> None:
    codec = wire.started()
    text = json.dumps({"event": "mark", wire.key: wire.stream, "mark": mark})
    with pytest.raises(ProtocolError, match="mark without a name") as info:
        codec.parse(text)
    assert not info.value.fatal


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("event", ["teleport", None, 7, ["media"], {"a": 1}, "MEDIA", "clear"])
@pytest.mark.parametrize("started", [False, True])
def test_unknown_events_are_dropped_in_either_state(wire: Wire, event: Any, started: bool) -> None:
    codec = wire.started() if started else wire.factory()
    with pytest.raises(ProtocolError, match="unknown event") as info:
        codec.parse(json.dumps({"event": event, wire.key: wire.stream}))
    assert not info.value.fatal


@pytest.mark.parametrize("started", [False, True])
def test_the_error_event_is_telnyxs_own_in_either_state(started: bool) -> None:
    error = json.dumps({"event": "error", "payload": {"code": 100003, "title": "malformed_frame"}})
    telnyx = TELNYX.started() if started else TELNYX.factory()
    assert telnyx.parse(error) == CarrierReportedError("100003", "malformed_frame")
    twilio = TWILIO.started() if started else TWILIO.factory()
    with pytest.raises(ProtocolError, match="unknown event"):
        twilio.parse(error)


@pytest.mark.parametrize("wire", WIRES)
def test_there_is_no_stopped_state(wire: Wire) -> None:
    """The bridge stops reading at StreamStopped; Telnyx does not promise order, so a frame or a
    mark echo behind the ``stop`` is still the stream's, not a protocol error."""
    codec = wire.started()
    assert codec.parse(wire.message("stop", {})) == StreamStopped()
    assert codec.state is StreamState.STREAMING
    assert codec.parse(wire.media()) == AudioReceived(PAYLOAD)
    assert codec.parse(wire.message("mark", {"name": "last"})) == MarkPlayed("last")


# --- any sequence of events -----------------------------------------------------------------


def _pool(wire: Wire) -> list[str]:
    """Messages to draw sequences from: every event valid, for another stream, without an id,
    malformed, plus a second start for another stream and things that are not messages."""
    bad_start = json.loads(json.dumps(wire.start))
    bad_start["start"] = {"mediaFormat": "x", "media_format": 7}
    other_start = json.loads(json.dumps(wire.start))
    other_start[wire.key] = other_start["start"][wire.key] = "other"
    valid = _after_start(wire)
    return [
        CONNECTED,
        json.dumps(wire.start),
        json.dumps(bad_start),
        json.dumps(other_start),
        *valid.values(),
        *(t.replace(wire.stream, "other") for t in valid.values()),
        wire.media(chunk=3),
        wire.media(chunk=2, stream=None),
        wire.message("media", {"payload": "%%%"}),
        wire.message("mark", {"name": 5}),
        wire.message("dtmf", {"digit": "X"}),
        json.dumps({"event": "error", "payload": "x"}),
        json.dumps({"event": "teleport"}),
        '{"event": ["media"]}',
        "[]",
        "not json",
    ]


@pytest.mark.parametrize("wire", WIRES)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_sequence_of_events_yields_events_or_protocol_errors(
    wire: Wire, data: st.DataObject
) -> None:
    """Whatever order messages come in, parse answers with an event, None or ProtocolError;
    the stream starts at most once, exactly when a StreamStarted comes out, and keeps its id."""
    pool = _pool(wire)
    texts = data.draw(st.lists(st.sampled_from(pool) | st.text(max_size=40), max_size=25))
    codec = wire.factory()
    starts: list[StreamStarted] = []
    for text in texts:
        with contextlib.suppress(ProtocolError):
            event = codec.parse(text)
            if isinstance(event, StreamStarted):
                starts.append(event)
        assert len(starts) <= 1
        assert (codec.state is StreamState.STREAMING) == bool(starts)
        assert codec.stream_id == (starts[0].stream_id if starts else None)


def test_a_start_keeps_a_number_beyond_64_bits_exactly_as_written() -> None:
    # Media messages are parsed in C (gateway.wire.loads), which reads such a number as a float;
    # a start's custom parameters are kept as text, so a start is read by json itself.
    start = json.loads(json.dumps(TWILIO.start))
    start["start"]["customParameters"] = {"account": 123456789012345678901234567890}
    started = TwilioCodec().parse(json.dumps(start))
    assert isinstance(started, StreamStarted)
    assert started.parameters == {"account": "123456789012345678901234567890"}


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("number", ["18446744073709551616", "1e999", "-1", "2147483648"])
def test_a_media_counter_out_of_range_is_refused_whatever_type_it_is_read_as(
    wire: Wire, number: str
) -> None:
    # A number beyond 64 bits is an int to json and a float to orjson (gateway.wire): the
    # counter must be refused either way, as one that is not a number at all is.
    message = wire.media()
    assert '"chunk": "1"' in message
    outcomes = []
    for chunk in (number, '"not a number"'):
        codec = wire.started()
        events = [codec.parse(message.replace('"chunk": "1"', f'"chunk": {chunk}'))]
        events.append(codec.parse(wire.media(chunk=2)))  # what the counter did to the order
        outcomes.append(events)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == AudioReceived(PAYLOAD)
