"""Telnyx webhook bodies, Ed25519 signatures, TeXML checks and codec negotiation (pure)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callsim.telnyx import webhook
from callsim.telnyx.peer import FORMATS, Violation
from callsim.telnyx.webhook import CC_FIELDS, TEXML_FIELDS, StreamSetup

KEY = Ed25519PrivateKey.generate()
BODY = b"CallSid=v3%3Aabc&CallStatus=ringing"


def telnyx_accepts(headers: dict[str, str], body: bytes, now: float) -> bool:
    """Telnyx's documented check, with `cryptography` and nothing from the simulator."""
    lower = {k.lower(): v for k, v in headers.items()}
    signature, timestamp = lower.get("telnyx-signature-ed25519"), lower.get("telnyx-timestamp")
    if signature is None or timestamp is None or abs(now - int(timestamp)) > 300:
        return False
    try:
        KEY.public_key().verify(base64.b64decode(signature), f"{timestamp}|".encode() + body)
    except InvalidSignature:
        return False
    return True


def test_signatures_valid_tampered_stale_missing() -> None:
    now = time.time()
    valid = webhook.signature_headers(KEY, BODY, mode="valid", now=now)
    assert set(valid) == {"telnyx-signature-ed25519", "telnyx-timestamp"}
    assert valid["telnyx-timestamp"] == str(int(now))
    assert len(base64.b64decode(valid["telnyx-signature-ed25519"])) == 64
    assert telnyx_accepts(valid, BODY, now)
    assert not telnyx_accepts(valid, BODY + b"&x=1", now)  # a body changed in transit
    tampered = webhook.signature_headers(KEY, BODY, mode="tampered", now=now)
    assert tampered["telnyx-timestamp"] == str(int(now))
    assert not telnyx_accepts(tampered, BODY, now)
    stale = webhook.signature_headers(KEY, BODY, mode="stale", now=now)
    assert int(now) - int(stale["telnyx-timestamp"]) == 301
    assert not telnyx_accepts(stale, BODY, now)
    assert telnyx_accepts(stale, BODY, int(stale["telnyx-timestamp"]))  # only the age is wrong
    assert webhook.signature_headers(KEY, BODY, mode="missing", now=now) == {}


def test_texml_form_and_call_event_bodies() -> None:
    form = webhook.texml_form(
        call_sid="v3:abc",
        account_sid="acc",
        call_session_id="sess",
        connection_id="123",
        from_number="+1",
        to_number="+2",
        extra={"CallStatus": "in-progress"},
    )
    assert form["CallSid"] == form["CallSidLegacy"] == "v3:abc"
    assert (form["From"], form["To"], form["Direction"]) == ("+1", "+2", "inbound")
    assert form["CallStatus"] == "in-progress"  # extra overrides
    ids = webhook.CallIds("v3:abc", "leg", "sess", "123", "+1", "+2")
    event = webhook.call_event(
        "call.initiated",
        ids,
        event_id="e1",
        occurred="2025-01-01T00:00:00.000000Z",
        delivered_to="http://gw/telnyx/voice",
        payload={"direction": "incoming", "state": "parked", "client_state": None},
    )
    assert event == {
        "data": {
            "event_type": "call.initiated",
            "id": "e1",
            "occurred_at": "2025-01-01T00:00:00.000000Z",
            "record_type": "event",
            "payload": {
                "call_control_id": "v3:abc",
                "call_leg_id": "leg",
                "call_session_id": "sess",
                "connection_id": "123",
                "from": "+1",
                "to": "+2",
                "direction": "incoming",
                "state": "parked",
                "client_state": None,
            },
        },
        "meta": {"attempt": 1, "delivered_to": "http://gw/telnyx/voice"},
    }
    assert json.loads(webhook.encode_json(event)) == event
    assert b" " not in webhook.encode_json(event)


def texml(
    attrs: str = 'bidirectionalMode="rtp" bidirectionalCodec="PCMU"', inner: str = ""
) -> bytes:
    return (
        '<?xml version="1.0"?><Response><Connect>'
        f'<Stream url="wss://gw.example.com/telnyx/stream?t=1" {attrs}>{inner}</Stream>'
        "</Connect></Response>"
    ).encode()


def check(body: bytes, **options: Any) -> StreamSetup:
    args: dict[str, Any] = {
        "status": 200,
        "content_type": "text/xml",
        "require_wss": False,
        "call_codec": "PCMU",
    }
    return webhook.check_texml(body=body, **(args | options))


def kinds(setup: StreamSetup) -> list[str]:
    return [v.partition(":")[0] for v in setup.violations]


@pytest.mark.parametrize(
    ("attrs", "inbound", "outbound"),
    [
        ('bidirectionalMode="rtp"', "PCMU", "PCMU"),  # bidirectionalCodec defaults to PCMU
        ('codec="PCMA" bidirectionalMode="rtp" bidirectionalCodec="PCMA"', "PCMA", "PCMA"),
        (
            'bidirectionalMode="rtp" bidirectionalCodec="G722" bidirectionalSamplingRate="16000"',
            "PCMU",
            "G722",
        ),
        (
            'bidirectionalMode="rtp" bidirectionalCodec="G722" bidirectionalSamplingRate="8000"',
            "PCMU",
            "G722",
        ),
        (  # the call is PCMU: Telnyx transcodes it to PCMA, and reads PCMU back
            'codec="PCMA" bidirectionalMode="rtp" bidirectionalCodec="PCMU"',
            "PCMA",
            "PCMU",
        ),
        (
            'codec="default" bidirectionalMode="rtp" bidirectionalCodec="PCMU" '
            'track="inbound_track"',
            "PCMU",
            "PCMU",
        ),
    ],
)
def test_valid_texml(attrs: str, inbound: str, outbound: str) -> None:
    setup = check(texml(attrs, '<Parameter name="a" value="1"/><Parameter name="b" value=""/>'))
    assert setup.violations == []
    assert setup.url == "wss://gw.example.com/telnyx/stream?t=1"  # Telnyx keeps the query
    assert setup.parameters == {"a": "1", "b": ""}
    assert (setup.inbound, setup.outbound) == (FORMATS[inbound], FORMATS[outbound])


@pytest.mark.parametrize(
    ("body", "options", "expected", "usable"),
    [
        (texml(), {"status": 500}, [Violation.WEBHOOK_STATUS], False),
        (texml(), {"content_type": "text/html"}, [Violation.WEBHOOK_CONTENT_TYPE], True),
        (b"<Response><Connect>", {}, [Violation.TEXML_INVALID], False),
        (b"<Reply/>", {}, [Violation.TEXML_INVALID], False),
        (b"<Response><Say>hi</Say></Response>", {}, [Violation.TEXML_NO_STREAM], False),
        (
            b'<Response><Start><Stream url="wss://h/x"/></Start></Response>',
            {},
            [Violation.TEXML_NO_STREAM],
            False,
        ),
        (
            b"<Response><Connect><Room/></Connect></Response>",
            {},
            [Violation.TEXML_NO_STREAM],
            False,
        ),
        (
            b'<Response><Connect><Stream url="wss://h/a" bidirectionalMode="rtp"/><Stream url="wss://h/b"/></Connect></Response>',
            {},
            [Violation.TEXML_MULTIPLE_STREAMS],
            True,
        ),
        (texml(""), {}, [Violation.BIDIRECTIONAL_MODE], True),  # default: mp3
        (texml('bidirectionalMode="mp3"'), {}, [Violation.BIDIRECTIONAL_MODE], True),
        (texml('bidirectionalMode="RTP"'), {}, [Violation.BIDIRECTIONAL_MODE], True),
        (texml('bidirectionalMode="rtp" bidirectionalCodec="OPUS"'), {}, [Violation.CODEC], True),
        (texml('bidirectionalMode="rtp" bidirectionalCodec="pcmu"'), {}, [Violation.CODEC], True),
        (texml('bidirectionalMode="rtp" codec="AMR-WB"'), {}, [Violation.CODEC], True),
        (  # TeXML documents no L16 (Call Control does)
            texml('bidirectionalMode="rtp" bidirectionalCodec="L16"'),
            {},
            [Violation.CODEC],
            True,
        ),
        (texml('bidirectionalMode="rtp" codec="L16"'), {}, [Violation.CODEC], True),
        (
            texml('bidirectionalMode="rtp" bidirectionalSamplingRate="16000"'),
            {},
            [Violation.SAMPLING_RATE],
            True,
        ),
        (
            texml('bidirectionalMode="rtp" bidirectionalSamplingRate="fast"'),
            {},
            [Violation.SAMPLING_RATE],
            True,
        ),
        (
            texml('bidirectionalMode="rtp" track="outbound_track"'),
            {},
            [Violation.STREAM_TRACK],
            True,
        ),
        (
            texml('bidirectionalMode="rtp"', '<Parameter name="a"/>'),
            {},
            [Violation.PARAMETER_INVALID],
            True,
        ),
        (
            texml().replace(b"wss://gw.example.com", b"https://gw.example.com"),
            {},
            [Violation.STREAM_URL_SCHEME],
            False,
        ),
        (
            texml().replace(b"wss://gw.example.com", b"ws://gw.example.com"),
            {"require_wss": True},
            [Violation.STREAM_URL_SCHEME],
            True,
        ),
        (
            texml().replace(b"wss://gw.example.com/", b"/"),
            {},
            [Violation.STREAM_URL_SCHEME],
            False,
        ),
        (texml().replace(b"?t=1", b"#frag"), {}, [Violation.STREAM_URL_MALFORMED], True),
        (texml().replace(b"gw.example.com", b""), {}, [Violation.STREAM_URL_MALFORMED], False),
        (
            b'<Response><Connect><Stream bidirectionalMode="rtp"/></Connect></Response>',
            {},
            [Violation.STREAM_URL_MALFORMED],
            False,
        ),
    ],
)
def test_texml_violations(
    body: bytes, options: dict[str, Any], expected: list[str], usable: bool
) -> None:
    setup = check(body, **options)
    assert kinds(setup) == expected
    assert (setup.url is not None) == usable


def test_texml_warnings() -> None:
    setup = check(
        b'<Response><Say>hi</Say><Connect><Stream url="ws://127.0.0.1:9/s" foo="1" '
        b'bidirectionalMode="rtp" track="both_tracks"><Parameter name="a" value="1"/>'
        b'<Parameter name="a" value="2"/><Junk/></Stream></Connect><Hangup/></Response>'
    )
    assert setup.violations == []
    assert setup.parameters == {"a": "2"}
    text = "\n".join(setup.warnings)
    for expected in (
        "before <Connect>",
        "after <Connect>",
        "foo",
        "both_tracks",
        "twice",
        "<Junk>",
        "ws://",
    ):
        assert expected in text
    assert len(setup.warnings) == 7


def test_a_codec_telnyx_cannot_transcode_to_streams_the_calls_codec() -> None:
    """Telnyx docs: "When set to 'default' or when transcoding is not possible, the codec from
    the call will be used. Currently, transcoding is only supported between PCMU and PCMA
    codecs." What the gateway sends is read as the bidirectional codec all the same (Telnyx
    transcodes it into the call)."""
    attrs = 'codec="G722" bidirectionalMode="rtp" bidirectionalCodec="G722"'
    wide = check(texml(attrs + ' bidirectionalSamplingRate="16000"'))
    assert wide.violations == []
    assert (wide.inbound, wide.outbound) == (FORMATS["PCMU"], FORMATS["G722"])
    assert wide.warnings == [
        "codec=G722 on a PCMU call: Telnyx transcodes only between PCMU and PCMA, so it streams "
        "the call's PCMU (the gateway must still answer in G722)"
    ]
    on_pcma_call = check(texml(attrs), call_codec="PCMA")
    assert (on_pcma_call.inbound, on_pcma_call.outbound) == (FORMATS["PCMA"], FORMATS["G722"])
    on_g722_call = check(texml(attrs), call_codec="G722")
    assert (on_g722_call.inbound, on_g722_call.warnings) == (FORMATS["G722"], [])
    transcoded = check(texml('codec="PCMA" bidirectionalMode="rtp"'))
    assert (transcoded.inbound, transcoded.warnings) == (FORMATS["PCMA"], [])
    on_wideband_call = check(texml('codec="default" bidirectionalMode="rtp"'), call_codec="L16")
    assert on_wideband_call.inbound == FORMATS["L16"]
    assert on_wideband_call.warnings == []


def test_call_control_fields_negotiate_like_texml() -> None:
    body = {
        "stream_url": "wss://h/s",
        "stream_codec": "PCMA",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "L16",
        "stream_bidirectional_sampling_rate": 16000,
    }
    setup = StreamSetup()
    webhook.negotiate(body, CC_FIELDS, call_codec="PCMA", out=setup)
    assert (setup.inbound, setup.outbound, setup.violations) == (
        FORMATS["PCMA"],
        FORMATS["L16"],
        [],
    )
    l16 = StreamSetup()  # Call Control documents L16; it is not transcoded into the stream
    webhook.negotiate(body | {"stream_codec": "L16"}, CC_FIELDS, call_codec="PCMU", out=l16)
    assert (l16.inbound, l16.outbound, l16.violations) == (FORMATS["PCMU"], FORMATS["L16"], [])
    assert "streams the call's PCMU" in l16.warnings[0]
    mp3 = StreamSetup()
    webhook.negotiate({"stream_url": "wss://h/s"}, CC_FIELDS, call_codec="PCMU", out=mp3)
    assert kinds(mp3) == [Violation.BIDIRECTIONAL_MODE]
    assert "stream_bidirectional_mode is missing (default mp3)" in mp3.violations[0]
    assert set(TEXML_FIELDS) == set(CC_FIELDS)


def test_stream_url_checks() -> None:
    assert webhook.check_stream_url("wss://h/s?x=1", require_wss=True, field_name="u") == (
        "wss://h/s?x=1",
        [],
        [],
    )
    url, violations, warnings = webhook.check_stream_url(None, require_wss=False, field_name="u")
    assert url is None
    assert violations[0].startswith(Violation.STREAM_URL_MALFORMED)
    url, violations, warnings = webhook.check_stream_url(
        " ws://h/s ", require_wss=False, field_name="u"
    )
    assert (url, violations) == ("ws://h/s", [])
    assert "ws://" in warnings[0]
