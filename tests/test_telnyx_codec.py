"""Telnyx media streaming codec, reordering, TeXML and Ed25519 signatures, with plain bytes."""

from __future__ import annotations

import base64
import json
import random
import time
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from callsim.telnyx.peer import FORMATS
from callsim.telnyx.webhook import CC_FIELDS, StreamSetup, check_texml, negotiate
from gateway.audio.transcode import (
    G722_16K,
    L16_16K,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
    UnsupportedAudioFormat,
    downlink_for,
    uplink_for,
)
from gateway.carriers.base import (
    AudioReceived,
    CarrierReportedError,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from gateway.carriers.reorder import Reorderer
from gateway.carriers.telnyx import (
    TELNYX_CODECS,
    TEXML_CODECS,
    TelnyxCodec,
    call_control_state,
    connect_stream_texml,
    downlink_format,
    telnyx_format,
    token_from_state,
)
from gateway.carriers.telnyx_api import streaming_fields
from gateway.carriers.telnyx_signature import SignatureError, load_public_key, verify
from gateway.settings import TEXML_CODECS as SETTINGS_TEXML_CODECS

STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CALL = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"


def start(encoding: str = "PCMU", rate: int = 8000, **extra: object) -> str:
    body = {
        "event": "start",
        "sequence_number": "1",
        "start": {
            "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
            "call_control_id": CALL,
            "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
            "from": "+13122010094",
            "to": "+13122123456",
            "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
            "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
            **extra,
        },
        "stream_id": STREAM,
    }
    return json.dumps(body)


def media(chunk: int, payload: bytes = b"\xff" * 160, stream: str = STREAM) -> str:
    return json.dumps({
        "event": "media", "sequence_number": str(chunk + 2),
        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                  "payload": base64.b64encode(payload).decode()},
        "stream_id": stream,
    })  # fmt: skip


def started(**kwargs: object) -> TelnyxCodec:
    codec = TelnyxCodec()
    assert codec.parse('{"event": "connected", "version": "1.0.0"}') is None
    assert isinstance(codec.parse(start(**kwargs)), StreamStarted)  # type: ignore[arg-type]
    return codec


@pytest.mark.parametrize(
    ("encoding", "rate", "expected"),
    [("PCMU", 8000, ("PCMU", 8000)), ("PCMA", 8000, ("PCMA", 8000)),
     ("L16", 16000, ("L16", 16000)), ("G722", 8000, ("G722", 16000)),
     ("G722", 16000, ("G722", 16000))],
)  # fmt: skip
def test_start_announces_ids_and_the_negotiated_codec(
    encoding: str, rate: int, expected: tuple[str, int]
) -> None:
    event = TelnyxCodec().parse(start(encoding, rate, custom_parameters={"a": "1"}))
    assert isinstance(event, StreamStarted)
    assert (event.stream_id, event.call_id) == (STREAM, CALL)
    assert (event.audio_format.encoding, event.audio_format.sample_rate) == expected
    # start.from/start.to join the <Parameter>s: the caller ids of a Call Control stream.
    assert dict(event.parameters) == {"a": "1", "from": "+13122010094", "to": "+13122123456"}
    assert event.account_id == ""


def test_a_texml_streams_own_caller_ids_win_and_its_account_sid_is_the_account() -> None:
    account = "61bf923e-5e4d-4595-a110-56190ea18a1b"
    params = {"from": "+15550001111", "account_sid": account, "param.campaign": "spring"}
    event = TelnyxCodec().parse(start(custom_parameters=params))
    assert isinstance(event, StreamStarted)
    assert event.parameters["from"] == "+15550001111"
    assert event.parameters["to"] == "+13122123456"
    assert event.parameters["param.campaign"] == "spring"
    assert event.account_id == account


def test_a_malformed_account_sid_is_no_account() -> None:
    event = TelnyxCodec().parse(start(custom_parameters={"account_sid": "not an id"}))
    assert isinstance(event, StreamStarted)
    assert event.account_id == ""


# --- media_format: what start announces ---------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "rate", "expected"),
    [
        ("PCMU", 8000, PCMU_8K),
        ("PCMA", 8000, PCMA_8K),
        ("L16", 16000, L16_16K),
        ("G722", 8000, G722_16K),  # the RTP clock rate (RFC 3551)
        ("G722", 16000, G722_16K),  # the audio rate
        ("g722", 16000, G722_16K),
        (" pcmu ", 8000, PCMU_8K),
    ],
)
def test_telnyx_format_maps_media_format(encoding: str, rate: int, expected: AudioFormat) -> None:
    fmt = telnyx_format(encoding, rate)
    assert fmt is expected  # L16 therefore big-endian, as Telnyx sends it
    assert uplink_for(fmt).format is downlink_for(fmt).format is fmt  # all have transcoders


@pytest.mark.parametrize(
    ("encoding", "rate", "message"),
    [
        ("OPUS", 16000, "OPUS at 16000 Hz is not supported; use PCMU, PCMA, G722 or L16"),
        ("", 8000, " at 8000 Hz is not supported; use PCMU, PCMA, G722 or L16"),
        ("PCMU", 16000, "PCMU at 16000 Hz is not supported; Telnyx PCMU must be at 8000 Hz"),
        ("L16", 8000, "L16 at 8000 Hz is not supported; Telnyx L16 must be at 16000 Hz"),
        ("G722", 48000, "G722 at 48000 Hz is not supported; Telnyx G722 must be at 8000 or 16000"),
    ],
)
def test_telnyx_format_rejects_the_rest(encoding: str, rate: int, message: str) -> None:
    with pytest.raises(UnsupportedAudioFormat) as caught:
        telnyx_format(encoding, rate)
    assert str(caught.value).startswith(message)


# --- which codec each direction is in (the rule and its sources: carriers/telnyx.py) ---------


def streamed_codec(asked: str, call: str) -> str:
    """What Telnyx streams the caller in when ``asked`` is requested of a call in ``call``: the
    codec asked for where the call is in it or transcodes to it (PCMU <-> PCMA only), else the
    call's own (written out here independently of the simulator)."""
    return asked if asked == call or {asked, call} <= {"PCMU", "PCMA"} else call


@pytest.mark.parametrize(
    ("asked", "call", "caller_in", "gateway_out"),
    [
        ("PCMU", "PCMU", "PCMU/8000", "PCMU/8000"),
        ("PCMU", "PCMA", "PCMU/8000", "PCMU/8000"),  # transcoded: PCMU both ways
        ("PCMA", "PCMU", "PCMA/8000", "PCMA/8000"),
        ("G722", "PCMU", "PCMU/8000", "G722/16000"),  # not transcodable: the call's codec in
        ("G722", "PCMA", "PCMA/8000", "G722/16000"),
        ("G722", "G722", "G722/16000", "G722/16000"),
        ("L16", "PCMU", "PCMU/8000", "L16/16000/big-endian"),
        ("L16", "G722", "G722/16000", "L16/16000/big-endian"),
        ("PCMU", "G722", "G722/16000", "PCMU/8000"),  # a wideband leg, narrowband asked for
    ],
)
def test_the_gateway_answers_in_the_codec_asked_for_whatever_start_announces(
    asked: str, call: str, caller_in: str, gateway_out: str
) -> None:
    streamed = FORMATS[streamed_codec(asked, call)]
    rate = 8000 if streamed.encoding == "G722" else streamed.sample_rate  # G.722: RTP clock
    event = TelnyxCodec(requested=asked).parse(start(streamed.encoding, rate))
    assert isinstance(event, StreamStarted)
    assert (str(event.audio_format), str(event.outbound_format)) == (caller_in, gateway_out)
    assert (event.downlink_format is None) == (caller_in == gateway_out)


@given(
    asked=st.sampled_from(sorted(TELNYX_CODECS)),
    announced=st.sampled_from(sorted(FORMATS)),
    g722_rate=st.sampled_from([8000, 16000]),
)
def test_downlink_format_is_the_codec_asked_for(asked: str, announced: str, g722_rate: int) -> None:
    rate = g722_rate if announced == "G722" else FORMATS[announced].sample_rate
    streamed = telnyx_format(announced, rate)
    requested = telnyx_format(asked, TELNYX_CODECS[asked])
    fmt = downlink_format(asked, streamed)
    assert (fmt or streamed) == requested
    assert fmt is None or fmt != streamed
    assert downlink_format(None, streamed) is None  # nothing asked for: the stream's both ways


@given(
    asked=st.sampled_from(sorted(TELNYX_CODECS)),
    call=st.sampled_from(sorted(FORMATS)),
    g722_rate=st.sampled_from([8000, 16000]),
)
def test_gateway_and_simulated_telnyx_agree_on_both_directions(
    asked: str, call: str, g722_rate: int
) -> None:
    """The request the gateway really sends (TeXML or streaming_start), negotiated as the
    simulator's Telnyx does, announced in ``start``, parsed by the gateway's codec: both sides
    must then hold the same format for each direction."""
    setups: list[StreamSetup] = []
    if asked in TEXML_CODECS:
        texml = connect_stream_texml("wss://gw.example.com/telnyx/stream/t", asked, {})
        setups.append(check_texml(status=200, content_type="text/xml", body=texml.encode(),
                                  require_wss=True, call_codec=call))  # fmt: skip
    body = streaming_fields("wss://gw.example.com/telnyx/stream/t", asked, "tok")
    setups.append(StreamSetup())
    negotiate(body, CC_FIELDS, call_codec=call, out=setups[-1])
    for setup in setups:
        assert setup.violations == []
        assert setup.inbound == FORMATS[streamed_codec(asked, call)]
        assert setup.outbound == FORMATS[asked]
        inbound = setup.inbound
        rate = g722_rate if inbound.encoding == "G722" else inbound.sample_rate
        event = TelnyxCodec(requested=asked).parse(start(inbound.encoding, rate))
        assert isinstance(event, StreamStarted)
        assert (event.audio_format, event.outbound_format) == (setup.inbound, setup.outbound)


def test_texml_offers_no_l16_and_the_codec_knows_the_codecs() -> None:
    assert TEXML_CODECS == SETTINGS_TEXML_CODECS == ("PCMU", "PCMA", "G722")
    with pytest.raises(ValueError, match="PCMU, PCMA, G722"):
        connect_stream_texml("wss://gw.example.com/telnyx/stream", "L16", {})
    with pytest.raises(ValueError, match="requested codec"):
        TelnyxCodec(requested="OPUS")


def test_unsupported_codecs_end_the_stream_clearly() -> None:
    with pytest.raises(ProtocolError, match="OPUS") as info:
        TelnyxCodec().parse(start("OPUS", 16000))
    assert info.value.fatal


def test_a_call_control_client_state_carries_the_stream_token() -> None:
    codec = TelnyxCodec()
    event = codec.parse(start(client_state=call_control_state("v1.123.abc")))
    assert isinstance(event, StreamStarted)
    assert event.parameters["token"] == "v1.123.abc"
    assert codec.call_control is True
    assert token_from_state("aGF2ZSBhIG5pY2UgZGF5ID1d") is None  # someone else's state


def test_inbound_events() -> None:
    codec = started()
    assert codec.call_control is False
    assert codec.parse(media(1, b"\x01" * 160)) == AudioReceived(b"\x01" * 160)
    dtmf = {"event": "dtmf", "stream_id": STREAM, "occurred_at": "2025-06-05T08:54:19Z",
            "sequence_number": "5", "dtmf": {"digit": "1"}}  # fmt: skip
    assert codec.parse(json.dumps(dtmf)) == DtmfReceived("1")
    mark = {"event": "mark", "stream_id": STREAM, "sequence_number": "6", "mark": {"name": "t"}}
    assert codec.parse(json.dumps(mark)) == MarkPlayed("t")
    error = {"event": "error", "stream_id": STREAM,
             "payload": {"code": 100003, "title": "malformed_frame", "detail": "bad"}}  # fmt: skip
    assert codec.parse(json.dumps(error)) == CarrierReportedError(
        "100003", "malformed_frame", "bad"
    )
    stop = {"event": "stop", "sequence_number": "7", "stream_id": STREAM,
            "stop": {"user_id": "u", "call_control_id": CALL}}  # fmt: skip
    assert codec.parse(json.dumps(stop)) == StreamStopped()


def test_outbound_messages_carry_no_stream_id() -> None:
    codec = started()
    assert json.loads(codec.media(b"\x01\x02")) == {"event": "media", "media": {"payload": "AQI="}}
    assert json.loads(codec.mark("turn-1")) == {"event": "mark", "mark": {"name": "turn-1"}}
    assert json.loads(codec.clear()) == {"event": "clear"}


def test_out_of_order_and_duplicate_frames_are_put_right() -> None:
    codec = started()
    frames = {n: bytes([n]) * 160 for n in range(1, 7)}
    out: list[bytes] = []
    for n in (1, 3, 2, 2, 5, 4, 4, 6, 1):
        event = codec.parse(media(n, frames[n]))
        if event is not None:
            assert isinstance(event, AudioReceived)
            out.append(event.payload)
    assert b"".join(out) == b"".join(frames[n] for n in range(1, 7))
    assert codec.reorder.duplicates + codec.reorder.late == 3


@given(st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=5),
       st.randoms(use_true_random=False))  # fmt: skip
def test_reorderer_restores_any_shuffle_within_its_window(
    count: int, window: int, rng: random.Random
) -> None:
    order = list(range(count))
    # Displace each frame by at most `window` positions, and duplicate some.
    for i in range(0, count, window + 1):
        block = order[i : i + window + 1]
        rng.shuffle(block)
        order[i : i + window + 1] = block
    arrivals = [n for n in order for _ in range(2 if rng.random() < 0.2 else 1)]
    r = Reorderer(window, first=0)
    released = [p for n in arrivals for p in r.push(n, n.to_bytes(2, "big"))] + r.drain()
    assert [int.from_bytes(p, "big") for p in released] == list(range(count))
    assert r.lost == 0


def test_reorderer_gives_up_on_a_lost_frame_after_the_window() -> None:
    r = Reorderer(2, first=0)
    assert r.push(0, b"0") == [b"0"]
    assert r.push(2, b"2") == []  # 1 is missing: hold
    assert r.push(3, b"3") == []
    assert r.push(4, b"4") == [b"2", b"3", b"4"]  # 1 is lost: release the rest
    assert r.lost == 1
    assert r.push(1, b"1") == []  # too late now
    assert r.late == 1


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"event": "media", "media": {"payload": "AAAA"}}',
        json.dumps({"event": "teleport"}),
        media(1, stream="other-stream"),
        json.dumps({"event": "media", "stream_id": STREAM, "media": {"payload": "%%%"}}),
    ],
)
def test_bad_messages_are_droppable(text: str) -> None:
    codec = TelnyxCodec() if "AAAA" in text else started()
    with pytest.raises(ProtocolError) as info:
        codec.parse(text)
    assert not info.value.fatal


def test_texml_streams_both_ways_in_rtp_mode() -> None:
    xml = connect_stream_texml("wss://gw.example.com/telnyx/stream", "G722", {"x": "1"})
    stream = ET.fromstring(xml).find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib["url"] == "wss://gw.example.com/telnyx/stream"
    assert stream.attrib["bidirectionalMode"] == "rtp"
    assert stream.attrib["bidirectionalCodec"] == "G722"
    assert stream.attrib["codec"] == "G722"
    assert stream.attrib["bidirectionalSamplingRate"] == "16000"
    assert [(p.attrib["name"], p.attrib["value"]) for p in stream] == [("x", "1")]
    assert connect_stream_texml("wss://gw/s", "PCMU", {"t": "1"}, "<Hangup/>") == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://gw/s"'
        ' track="inbound_track" codec="PCMU" bidirectionalMode="rtp" bidirectionalCodec="PCMU"'
        ' bidirectionalSamplingRate="8000"><Parameter name="t" value="1"/></Stream></Connect>'
        "<Hangup/></Response>"
    )  # the bytes Telnyx has always been sent


def _keys() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(raw).decode()


def _signed(private: Ed25519PrivateKey, body: bytes, ts: int) -> dict[str, str]:
    signature = private.sign(str(ts).encode() + b"|" + body)
    return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": str(ts)}  # fmt: skip


def test_signatures_valid_tampered_stale_and_missing() -> None:
    private, public = _keys()
    key = load_public_key(public)
    body = b'{"data":{"event_type":"call.initiated"}}'
    now = int(time.time())
    verify(key, _signed(private, body, now), body, now)
    with pytest.raises(SignatureError, match="invalid"):
        verify(key, _signed(private, body, now), body.replace(b"initiated", b"answered"), now)
    with pytest.raises(SignatureError, match="stale"):
        verify(key, _signed(private, body, now - 301), body, now)
    with pytest.raises(SignatureError, match="missing"):
        verify(key, {}, body, now)
    other, _ = _keys()
    with pytest.raises(SignatureError, match="invalid"):
        verify(key, _signed(other, body, now), body, now)
    with pytest.raises(ValueError, match="32 bytes"):
        load_public_key("not-a-key")
