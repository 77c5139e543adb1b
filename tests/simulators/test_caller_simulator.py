"""The Twilio caller simulator: pure protocol pieces, caller audio, and whole calls.

Whole calls run against the scripted fake Twilio gateway (``tests.fake_gateways.twilio``) in its
own thread and event loop, so that after each call the test's loop must hold no task but the
test itself: anything the caller left running would show up there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import socket
import struct
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from callsim.callers.audio import (
    Silence,
    Tone,
    Wav,
    parse_spec,
    pcm16_to_ulaw,
    render,
    ulaw_to_pcm16,
)
from callsim.callers.result import CallEvent, CallResult, ProtocolViolationError
from callsim.callers.state import CallerState
from callsim.callers.twilio import TwilioCaller
from callsim.twilio import peer, webhook
from callsim.twilio.peer import Violation
from callsim.wav import WavFormatError, read_wav, write_wav
from tests.fake_gateways import place_call
from tests.fake_gateways.twilio import (
    PARAMS,
    STREAM_PATH,
    Behaviour,
    TwilioGateway,
    TwilioServerCall,
    default_twiml,
)
from tests.servers import until

SID = "MZ" + "0" * 32
PATTERN = bytes((i * 7) % 255 for i in range(4000))  # 0.5 s of μ-law with no 0xFF (silence)
SILENT = b"\xff"


# === pure pieces: callsim.twilio ===============================================================


def test_signature_matches_twilio_documentation_example() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert webhook.twilio_signature("12345", url, params) == "L/OH5YylLD5NRKLltdqwSvS0BnU="


def test_sids_look_like_twilio_sids() -> None:
    sid = peer.new_sid("CA")
    assert len(sid) == 34
    assert sid.startswith("CA")
    int(sid[2:], 16)
    assert peer.new_sid("CA") != sid


def test_messages_twilio_sends_are_exact() -> None:
    assert peer.encode(peer.connected_message()) == (
        '{"event":"connected","protocol":"Call","version":"1.0.0"}'
    )
    media = peer.media_message(seq=7, stream_sid=SID, chunk=6, timestamp_ms=100, payload=b"\x01")
    assert media == {
        "event": "media",
        "sequenceNumber": "7",
        "media": {"track": "inbound", "chunk": "6", "timestamp": "100", "payload": "AQ=="},
        "streamSid": SID,
    }
    assert peer.dtmf_message(seq=3, stream_sid=SID, digit="#") == {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "3",
        "dtmf": {"track": "inbound_track", "digit": "#"},
    }
    assert peer.mark_message(seq=9, stream_sid=SID, name="m") == {
        "event": "mark",
        "sequenceNumber": "9",
        "streamSid": SID,
        "mark": {"name": "m"},
    }
    assert peer.stop_message(seq=10, stream_sid=SID, account_sid="AC1", call_sid="CA1") == {
        "event": "stop",
        "sequenceNumber": "10",
        "stop": {"accountSid": "AC1", "callSid": "CA1"},
        "streamSid": SID,
    }


def twiml(
    url: str = "wss://twilio_gw.example.com/twilio/media", params: str = "", extra: str = ""
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url="{url}" {extra}>{params}</Stream></Connect></Response>'
    ).encode()


def check(
    body: bytes,
    *,
    status: int = 200,
    content_type: str | None = "text/xml; charset=utf-8",
    require_wss: bool = False,
) -> webhook.TwimlStream:
    return webhook.check_twiml(
        status=status,
        content_type=content_type,
        body=body,
        webhook_url="https://twilio_gw.example.com/twilio/voice",
        require_wss=require_wss,
    )


def kinds(violations: list[str]) -> list[str]:
    return [peer.violation_kind(v) for v in violations]


def test_twiml_valid_stream_with_parameters() -> None:
    out = check(twiml(params='<Parameter name="a" value="1"/><Parameter name="b" value=""/>'))
    assert (out.url, out.parameters, out.violations, out.warnings) == (
        "wss://twilio_gw.example.com/twilio/media",
        {"a": "1", "b": ""},
        [],
        [],
    )
    assert check(twiml(), content_type="application/xml").violations == []


@pytest.mark.parametrize(
    ("body", "options", "expected_kinds", "usable"),
    [
        (twiml(), {"status": 500}, [Violation.WEBHOOK_STATUS], False),
        (twiml(), {"status": 204}, [Violation.WEBHOOK_STATUS], False),
        (twiml(), {"content_type": "text/html"}, [Violation.WEBHOOK_CONTENT_TYPE], True),
        (twiml(), {"content_type": None}, [Violation.WEBHOOK_CONTENT_TYPE], True),
        (b"<Response><Connect>", {}, [Violation.TWIML_INVALID], False),
        (b"<Reply/>", {}, [Violation.TWIML_INVALID], False),
        (b"<Response><Say>hi</Say></Response>", {}, [Violation.TWIML_NO_STREAM], False),
        (
            b'<Response><Start><Stream url="wss://h/x"/></Start></Response>',
            {},
            [Violation.TWIML_NO_STREAM],
            False,
        ),
        (
            b"<Response><Connect><Room>r</Room></Connect></Response>",
            {},
            [Violation.TWIML_NO_STREAM],
            False,
        ),
        (
            b'<Response><Connect><Stream url="wss://h/a"/><Stream url="wss://h/b"/></Connect></Response>',
            {},
            [Violation.TWIML_MULTIPLE_STREAMS],
            True,
        ),
        (twiml(extra='track="both_tracks"'), {}, [Violation.TWIML_TRACK], True),
        (twiml(params='<Parameter name="a"/>'), {}, [Violation.PARAMETER_INVALID], True),
        (
            twiml(params=f'<Parameter name="n" value="{"x" * 499}"/>'),
            {},
            [Violation.PARAMETER_TOO_LONG],
            True,
        ),
        (twiml("wss://h/x?token=1"), {}, [Violation.STREAM_URL_QUERY], True),
        (twiml("wss://h/x#frag"), {}, [Violation.STREAM_URL_MALFORMED], True),
        (twiml("https://h/x"), {}, [Violation.STREAM_URL_SCHEME], False),
        (twiml("ws://h/x"), {"require_wss": True}, [Violation.STREAM_URL_SCHEME], True),
        (twiml("wss:///x"), {}, [Violation.STREAM_URL_MALFORMED], False),
        (
            b"<Response><Connect><Stream/></Connect></Response>",
            {},
            [Violation.STREAM_URL_MALFORMED],
            False,
        ),
    ],
)
def test_twiml_violations(
    body: bytes, options: dict[str, Any], expected_kinds: list[str], usable: bool
) -> None:
    out = check(body, **options)
    assert kinds(out.violations) == expected_kinds
    assert (out.url is not None) == usable


def test_twiml_parameter_limit_is_under_500_chars() -> None:
    at_limit = check(twiml(params=f'<Parameter name="n" value="{"x" * 498}"/>'))
    assert at_limit.violations == []
    over = check(twiml(params=f'<Parameter name="n" value="{"x" * 499}"/>'))
    assert kinds(over.violations) == [Violation.PARAMETER_TOO_LONG]


def test_twiml_warnings_and_relative_url() -> None:
    out = check(
        b'<Response><Say>Hello</Say><Connect><Stream url="/twilio/media" foo="1">'
        b'<Parameter name="a" value="1"/><Parameter name="a" value="2"/><Junk/>'
        b"</Stream></Connect></Response>"
    )
    assert out.violations == []
    assert out.url == "wss://twilio_gw.example.com/twilio/media"
    assert out.parameters == {"a": "2"}
    assert len(out.warnings) == 5  # Say not simulated, relative URL, foo=, duplicate a, <Junk>
    plain = check(twiml("ws://127.0.0.1:8000/twilio/media"))
    assert plain.violations == []
    assert plain.url == "ws://127.0.0.1:8000/twilio/media"
    assert "31922" in plain.warnings[0]


def media_json(payload: object = "AQ==", **top: object) -> str:
    msg: dict[str, object] = {"event": "media", "streamSid": SID, "media": {"payload": payload}}
    msg.update(top)
    return json.dumps(msg)


def test_valid_gateway_frames() -> None:
    media = peer.parse_gateway_frame(media_json(base64.b64encode(b"\x01\x02").decode()), SID)
    assert (media.event, media.payload, media.violations) == ("media", b"\x01\x02", [])
    mark = peer.parse_gateway_frame(
        json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": ""}}), SID
    )
    assert (mark.event, mark.mark_name, mark.violations) == ("mark", "", [])
    clear = peer.parse_gateway_frame(json.dumps({"event": "clear", "streamSid": SID}), SID)
    assert (clear.event, clear.violations) == ("clear", [])


WAV_HEADER = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"\x00\x01", [Violation.BINARY_FRAME]),
        ("not json", [Violation.INVALID_JSON]),
        ('{"event": NaN}', [Violation.INVALID_JSON]),
        ("[1, 2]", [Violation.NOT_AN_OBJECT]),
        (json.dumps({"streamSid": SID}), [Violation.MISSING_FIELD]),
        (json.dumps({"event": "start", "streamSid": SID}), [Violation.UNKNOWN_EVENT]),
        (json.dumps({"event": 5, "streamSid": SID}), [Violation.UNKNOWN_EVENT]),
        (media_json(sequenceNumber="3"), [Violation.EXTRA_FIELD]),
        (
            json.dumps(
                {
                    "event": "media",
                    "streamSid": SID,
                    "media": {"payload": "AQ==", "track": "outbound"},
                }
            ),
            [Violation.EXTRA_FIELD],
        ),
        (json.dumps({"event": "media", "streamSid": SID}), [Violation.MISSING_FIELD]),
        (json.dumps({"event": "media", "media": {"payload": "AQ=="}}), [Violation.MISSING_FIELD]),
        (json.dumps({"event": "media", "streamSid": SID, "media": {}}), [Violation.MISSING_FIELD]),
        (media_json(streamSid="MZ" + "1" * 32), [Violation.WRONG_STREAM_SID]),
        (media_json(streamSid=None), [Violation.WRONG_STREAM_SID]),
        (
            json.dumps({"event": "media", "streamSid": SID, "media": "AQ=="}),
            [Violation.BAD_FIELD_TYPE],
        ),
        (media_json(17), [Violation.BAD_FIELD_TYPE]),
        (media_json("@@@@"), [Violation.BAD_PAYLOAD]),
        (media_json("AQ"), [Violation.BAD_PAYLOAD]),  # missing padding
        (media_json("AQ==\n"), [Violation.BAD_PAYLOAD]),
        (media_json("-_8="), [Violation.BAD_PAYLOAD]),  # URL-safe alphabet
        (media_json(""), [Violation.BAD_PAYLOAD]),
        (media_json(base64.b64encode(WAV_HEADER).decode()), [Violation.PAYLOAD_FILE_HEADER]),
        (json.dumps({"event": "mark", "streamSid": SID}), [Violation.MISSING_FIELD]),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {}}), [Violation.MISSING_FIELD]),
        (
            json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": 3}}),
            [Violation.BAD_FIELD_TYPE],
        ),
        (
            json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "a", "x": 1}}),
            [Violation.EXTRA_FIELD],
        ),
        (json.dumps({"event": "clear", "streamSid": SID, "media": {}}), [Violation.EXTRA_FIELD]),
        (json.dumps({"event": "clear"}), [Violation.MISSING_FIELD]),
        (
            f'{{"event": "clear", "streamSid": "{SID}", "streamSid": "{SID}"}}',
            [Violation.DUPLICATE_KEY],
        ),
        (
            json.dumps({"event": "media", "streamSid": "x", "media": {"payload": ""}, "a": 1}),
            [Violation.EXTRA_FIELD, Violation.WRONG_STREAM_SID, Violation.BAD_PAYLOAD],
        ),
    ],
)
def test_gateway_frame_violations(frame: str | bytes, expected: list[str]) -> None:
    parsed = peer.parse_gateway_frame(frame, SID)
    assert kinds(parsed.violations) == expected
    assert parsed.event is None  # Twilio ignores an invalid message


# === caller audio and WAV files ================================================================


def test_parse_spec_and_render(tmp_path: Path) -> None:
    path = tmp_path / "in:file.wav"
    write_wav(path, b"\x00\x10" * 800, 16000)  # 50 ms at 16 kHz
    segments = parse_spec(f"silence:1.5, tone:440:1.0:-6 ,tone:1000:0.25,wav:{path}")
    assert segments == [Silence(1.5), Tone(440, 1.0, -6), Tone(1000, 0.25), Wav(path)]
    audio = render(segments)
    assert len(audio) == 12000 + 8000 + 2000 + 400
    assert audio[:12000] == SILENT * 12000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("silence:1,", "empty item"),
        ("beep:1", "unknown segment"),
        ("silence", "silence:SECONDS"),
        ("silence:x", "must be a number"),
        ("silence:-1", ">= 0"),
        ("silence:nan", ">= 0"),
        ("tone:440", "tone:HZ:SECONDS"),
        ("tone:5000:1", "frequency"),
        ("tone:440:1:3", "dBFS"),
        ("wav:", "wav:PATH"),
    ],
)
def test_parse_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_tone_level_frequency_and_fades() -> None:
    pcm = np.frombuffer(ulaw_to_pcm16(Tone(1000, 0.5, -6).render()), dtype="<i2").astype(float)
    assert len(pcm) == 4000
    mid = pcm[400:3600]
    peak_dbfs = 20 * math.log10(np.max(np.abs(mid)) / 32767)
    assert -6.5 < peak_dbfs < -5.5
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    assert abs(np.argmax(spectrum) * 8000 / len(mid) - 1000) < 5
    assert abs(pcm[0]) < 100
    assert abs(pcm[-1]) < 100
    assert np.max(np.abs(pcm[:20])) < np.max(np.abs(pcm[40:60]))


def test_read_wav_resamples_and_downmixes(tmp_path: Path) -> None:
    rate = 16000
    t = np.arange(rate) / rate
    left = (8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
    stereo = np.stack([left, left], axis=1).astype("<i2")
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(stereo.tobytes())
    pcm = np.frombuffer(read_wav(path, 8000), dtype="<i2").astype(float)
    assert len(pcm) == 8000
    expected = 8000 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000)
    assert np.max(np.abs(pcm[200:-200] - expected[200:-200])) < 40
    assert read_wav(path, 16000) == left.tobytes()  # same rate: no resampling, exact


def test_read_wav_rejects_what_it_cannot_play(tmp_path: Path) -> None:
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 100)
    with pytest.raises(WavFormatError, match="8-bit"):
        read_wav(eight_bit, 8000)
    float_wav = tmp_path / "float.wav"
    data = struct.pack("<4f", 0, 0.5, -0.5, 0)
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 16) + data
    float_wav.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    with pytest.raises(WavFormatError, match="unsupported"):
        read_wav(float_wav, 8000)
    not_wav = tmp_path / "text.wav"
    not_wav.write_text("hello")
    with pytest.raises(WavFormatError):
        read_wav(not_wav, 8000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(WavFormatError):
        read_wav(empty, 8000)


def test_ulaw_helpers_roundtrip() -> None:
    assert pcm16_to_ulaw(b"\x00\x00") == SILENT
    assert ulaw_to_pcm16(SILENT) == b"\x00\x00"


# === whole calls against the fake Twilio gateway (tests.fake_gateways.twilio) =================


def loud_indices(heard: bytes) -> np.ndarray:
    """Indices of heard bytes that are not μ-law silence."""
    return np.flatnonzero(np.frombuffer(heard, dtype=np.uint8) != 0xFF)


# --- one whole call, looked at part by part ------------------------------------------------------

AUDIO = Tone(440, 0.51).render()  # 4080 bytes: the last chunk is padded with silence
N_MEDIA = 26 + 20  # ceil(4080 / 160) + 0.4 s linger


@dataclass(frozen=True)
class SignedCall:
    result: CallResult
    call: TwilioServerCall


@pytest.fixture(scope="module")
def signed_call(twilio_gateway: TwilioGateway) -> SignedCall:
    """One call with two DTMF digits to a gateway that checks signatures, placed once: each
    test below checks one part of what Twilio sends on it."""
    twilio_gateway.reset(Behaviour(auth_token="secret-token"))
    result, call = asyncio.run(
        place_call(
            twilio_gateway,
            audio=AUDIO,
            linger_s=0.4,
            dtmf=[(0.2, "5"), (0.3, "#")],
            auth_token="secret-token",
        )
    )
    assert call is not None
    return SignedCall(result, call)


def test_a_clean_call_has_no_violations_and_warns_of_plain_ws(signed_call: SignedCall) -> None:
    result = signed_call.result
    assert result.violations == [], result.violations
    [warning] = result.warnings
    assert warning.endswith("scheme is ws://; Twilio only connects to wss:// (31922)")


def test_the_webhook_is_twilios_form_signed_and_so_is_the_upgrade(
    signed_call: SignedCall,
) -> None:
    result, call = signed_call.result, signed_call.call
    assert call.signatures_ok == [True, True]
    form = call.form
    assert form["CallSid"] == result.call_sid
    assert form["AccountSid"] == result.account_sid
    assert {k: form[k] for k in ("CallStatus", "Direction", "ApiVersion", "From", "Caller")} == {
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        "From": "+14155550123",
        "Caller": "+14155550123",
    }
    assert form["To"] == form["Called"] == "+18005550100"
    assert call.webhook_headers["content-type"] == "application/x-www-form-urlencoded"


def test_the_stream_opens_with_connected_then_start(signed_call: SignedCall) -> None:
    result, call = signed_call.result, signed_call.call
    events = call.events()
    assert events[0] == "connected"
    assert events[1] == "start"
    connected, start = call.messages[0][1], call.messages[1][1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    sid = result.stream_sid
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": result.account_sid,
            "streamSid": sid,
            "callSid": result.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": PARAMS,
        },
        "streamSid": sid,
    }
    assert sid.startswith("MZ")
    assert len(sid) == 34


def test_sequence_numbers_count_every_message_after_connected(signed_call: SignedCall) -> None:
    call = signed_call.call
    events = call.events()
    assert len(events) == 2 + N_MEDIA + 2 + 1  # connected, start, media, dtmf, stop
    assert [m["sequenceNumber"] for _, m in call.messages[1:]] == [
        str(i) for i in range(1, len(events))
    ]


def test_media_carries_the_audio_in_160_byte_chunks(signed_call: SignedCall) -> None:
    call = signed_call.call
    assert call.events().count("media") == N_MEDIA
    media = call.of("media")
    assert [set(m) for m in media] == [{"event", "sequenceNumber", "media", "streamSid"}] * N_MEDIA
    assert [m["media"]["chunk"] for m in media] == [str(k) for k in range(1, N_MEDIA + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * k) for k in range(N_MEDIA)]
    assert {m["media"]["track"] for m in media} == {"inbound"}
    assert {m["streamSid"] for m in media} == {signed_call.result.stream_sid}
    payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
    assert {len(p) for p in payloads} == {160}
    assert b"".join(payloads) == AUDIO + SILENT * (N_MEDIA * 160 - len(AUDIO))


def test_dtmf_goes_out_in_twilios_shape_when_due(signed_call: SignedCall) -> None:
    call = signed_call.call
    events = call.events()
    assert events.count("dtmf") == 2
    dtmf = call.of("dtmf")
    assert [d["dtmf"] for d in dtmf] == [
        {"track": "inbound_track", "digit": "5"},
        {"track": "inbound_track", "digit": "#"},
    ]
    assert set(dtmf[0]) == {"event", "streamSid", "sequenceNumber", "dtmf"}
    # DTMF at 0.2 s goes out right before media chunk 10, also due at 0.2 s.
    assert events.index("dtmf") == 2 + 9


def test_the_caller_hanging_up_sends_stop_and_closes_with_1000(signed_call: SignedCall) -> None:
    result, call = signed_call.result, signed_call.call
    events = call.events()
    assert events[-1] == "stop"
    assert call.of("stop") == [
        {
            "event": "stop",
            "sequenceNumber": str(len(events) - 1),
            "stop": {"accountSid": result.account_sid, "callSid": result.call_sid},
            "streamSid": result.stream_sid,
        }
    ]
    assert result.closed_by == "caller"
    assert result.close_code == 1000
    assert call.disconnect_code == 1000


def test_media_is_paced_in_real_time(signed_call: SignedCall) -> None:
    """On an absolute schedule: chunk k arrives ~k*20 ms after `start`."""
    result, call = signed_call.result, signed_call.call
    arrivals = np.array([t for t, m in call.messages if m["event"] == "media"]) - call.start_time
    schedule = 0.020 * np.arange(1, N_MEDIA + 1)
    # Bounds leave room for a loaded CI machine; typical lateness is well under 2 ms.
    assert np.median(np.abs(arrivals - schedule)) < 0.005
    assert np.max(np.abs(arrivals - schedule)) < 0.040
    assert result.send_timing.samples == N_MEDIA
    assert result.send_timing.max_ms < 40
    assert result.ended_at is not None
    assert result.started_at is not None
    assert abs(result.ended_at - result.started_at - N_MEDIA * 0.020) < 0.04


# --- whole calls, one behaviour each -------------------------------------------------------------


async def test_heard_audio_is_on_the_call_timeline(twilio_gw: TwilioGateway) -> None:
    async def speak_at_one_second(call: TwilioServerCall) -> None:
        await call.at(1.0)
        await call.media(PATTERN)
        await call.mark("end-of-pattern")

    twilio_gw.behaviour.scenario = speak_at_one_second
    result, call = await place_call(twilio_gw, linger_s=1.8)
    assert call is not None
    assert result.violations == []
    position = result.heard.find(PATTERN)
    assert position % 160 == 0
    assert result.first_media_time is not None
    arrived = result.call_time(result.first_media_time)
    assert 1.0 <= arrived < 1.1  # the test gateway's own timing
    # Heard from the first 20 ms tick after it arrived.
    assert arrived <= position / 8000 <= arrived + 0.02
    loud = loud_indices(result.heard)
    assert loud[0] == position
    assert loud[-1] == position + len(PATTERN) - 1
    assert result.heard_onset_s() == pytest.approx(position / 8000)
    assert abs(len(result.heard) / 8000 - 1.8) <= 0.04
    assert result.media_bytes_received == 4000
    assert result.odd_media_sizes == []

    # The mark is echoed once its audio has played, not before.
    [echo] = result.mark_echoes
    assert (echo.name, echo.cleared) == ("end-of-pattern", False)
    played_until = (position + len(PATTERN)) / 8000
    assert played_until <= result.call_time(echo.time) <= played_until + 0.08
    [mark] = call.of("mark")
    assert mark == {
        "event": "mark",
        "sequenceNumber": mark["sequenceNumber"],
        "streamSid": result.stream_sid,
        "mark": {"name": "end-of-pattern"},
    }
    assert [m["sequenceNumber"] for _, m in call.messages[1:]] == [
        str(i) for i in range(1, len(call.messages))
    ]
    assert result.unplayed_bytes == 0
    assert result.unechoed_marks == []


async def test_clear_drops_buffered_audio_and_echoes_pending_marks(
    twilio_gw: TwilioGateway,
) -> None:
    async def talk_then_barge_in(call: TwilioServerCall) -> None:
        await call.at(0.2)
        for i in range(100):  # 2 s of audio, faster than real time, a mark every 0.3 s
            await call.media(bytes([i % 255]) * 160)
            if i % 15 == 14:
                await call.mark(f"m{i // 15}")
        await call.at(0.7)
        await call.clear()
        await call.at(0.9)
        await call.mark("after-clear")

    twilio_gw.behaviour.scenario = talk_then_barge_in
    events: list[CallEvent] = []
    result, call = await place_call(twilio_gw, linger_s=1.2, on_event=events.append)
    assert call is not None
    assert result.violations == []
    [clear_time] = result.clear_times
    t_clear = result.call_time(clear_time)
    assert result.first_media_time is not None
    arrived = result.call_time(result.first_media_time)
    loud = loud_indices(result.heard) / 8000
    assert arrived <= loud[0] <= arrived + 0.02
    assert loud[-1] < t_clear + 0.02  # at most the 20 ms frame already playing
    assert len(loud) == pytest.approx((t_clear - loud[0]) * 8000, abs=160)

    echoes = [(e.name, e.cleared) for e in result.mark_echoes]
    assert echoes == [
        ("m0", False),  # played at ~0.5 s
        ("m1", True),
        ("m2", True),
        ("m3", True),
        ("m4", True),
        ("m5", True),
        ("after-clear", False),  # nothing buffered: echoed on the next tick
    ]
    assert all(0 <= e.time - clear_time < 0.05 for e in result.mark_echoes[1:6])
    [mark_arrival] = [t for t, m in result.received if m.get("mark") == {"name": "after-clear"}]
    assert 0 < result.mark_echoes[6].time - mark_arrival < 0.02 + 0.05
    assert [m["mark"]["name"] for m in call.of("mark")] == [name for name, _ in echoes]
    kinds_seen = [e.kind for e in events]
    assert kinds_seen.count("clear_received") == 1
    assert kinds_seen.count("mark_echoed") == 7
    assert kinds_seen[0] == "stream_open"
    assert kinds_seen[-1] == "closed"
    assert result.unplayed_bytes == 0


async def test_media_sent_back_is_heard_a_frame_or_two_later(twilio_gw: TwilioGateway) -> None:
    twilio_gw.behaviour.echo = True
    audio = render([Silence(0.1), Tone(700, 0.3)])
    result, call = await place_call(twilio_gw, audio=audio, linger_s=0.2)
    assert call is not None
    assert result.violations == []
    onset = result.heard_onset_s()
    assert onset is not None
    assert 0.1 + 0.02 <= onset <= 0.1 + 0.15
    # The echo of the last chunk or two may cross the caller's hang-up.
    assert 0 <= len(call.of("media")) * 160 - result.media_bytes_received <= 320


OTHER_SID = "MZ" + "f" * 32


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (b"\x00\x01\x02", Violation.BINARY_FRAME),
        (
            {"event": "media", "streamSid": "{sid}", "media": {"payload": "/w==", "track": "x"}},
            Violation.EXTRA_FIELD,
        ),
        (
            {"event": "media", "streamSid": OTHER_SID, "media": {"payload": "/w=="}},
            Violation.WRONG_STREAM_SID,
        ),
        ({"event": "mark", "streamSid": "{sid}"}, Violation.MISSING_FIELD),
        (
            {"event": "media", "streamSid": "{sid}", "media": {"payload": "***"}},
            Violation.BAD_PAYLOAD,
        ),
        ("{not json", Violation.INVALID_JSON),
        ({"event": "stop", "streamSid": "{sid}"}, Violation.UNKNOWN_EVENT),
    ],
)
async def test_misbehaving_gateway_is_caught(
    twilio_gw: TwilioGateway, bad: object, kind: str
) -> None:
    async def misbehave(call: TwilioServerCall) -> None:
        await call.at(0.05)
        assert call.ws is not None
        if isinstance(bad, bytes):
            await call.ws.send_bytes(bad)
        elif isinstance(bad, str):
            await call.ws.send_text(bad)
        else:
            await call.ws.send_text(json.dumps(bad).replace("{sid}", call.stream_sid))
        await call.mark("still-working")  # the call goes on after an invalid message
        await call.at(0.3)
        await call.ws.close(code=1000, reason="done")

    twilio_gw.behaviour.scenario = misbehave
    result, _ = await place_call(twilio_gw, linger_s=2.0)
    assert result.violation_kinds() == [kind]
    assert result.media_bytes_received == 0
    assert loud_indices(result.heard).size == 0
    assert [e.name for e in result.mark_echoes] == ["still-working"]
    with pytest.raises(ProtocolViolationError, match=kind):
        result.raise_for_violations()


async def test_gateway_closing_the_socket_ends_the_call(twilio_gw: TwilioGateway) -> None:
    async def hang_up_early(call: TwilioServerCall) -> None:
        await call.media(PATTERN + PATTERN)  # 1 s
        await call.mark("goodbye")
        await call.at(0.1)
        assert call.ws is not None
        await call.ws.close(code=1000, reason="call transferred")

    twilio_gw.behaviour.scenario = hang_up_early
    events: list[CallEvent] = []
    result, call = await place_call(
        twilio_gw, audio=Tone(300, 3.0).render(), on_event=events.append
    )
    assert call is not None
    assert result.violations == []
    assert (result.closed_by, result.close_code, result.close_reason) == (
        "gateway",
        1000,
        "call transferred",
    )
    assert result.started_at is not None
    assert result.ended_at is not None
    assert 0.1 <= result.ended_at - result.started_at < 0.5
    assert "stop" not in call.events()  # Twilio does not send stop when the server hangs up
    # The goodbye was cut off: 1 s of audio was sent, ~0.1 s played, the mark never echoed.
    assert result.unechoed_marks == ["goodbye"]
    assert result.mark_echoes == []
    assert result.unplayed_bytes + len(loud_indices(result.heard)) == 8000
    assert result.unplayed_bytes > 4000
    assert [e.kind for e in events][-1] == "closed"
    assert events[-1].detail == "gateway"


# uvicorn reports a connection lost without a close frame as 1005.
@pytest.mark.parametrize(("mode", "code"), [("stop", 1000), ("close", 1000), ("drop", 1005)])
async def test_hangup_modes(twilio_gw: TwilioGateway, mode: str, code: int) -> None:
    result, call = await place_call(
        twilio_gw, audio=Silence(0.1).render(), linger_s=0.1, hangup=mode
    )
    assert call is not None
    assert result.violations == []
    assert result.closed_by == "caller"
    assert ("stop" in call.events()) == (mode == "stop")
    assert call.disconnect_code == code
    assert call.events().count("media") == 10


async def test_hangup_on_request_from_an_event(twilio_gw: TwilioGateway) -> None:
    async def say_hello(call: TwilioServerCall) -> None:
        await call.mark("hello")

    twilio_gw.behaviour.scenario = say_hello
    queue: asyncio.Queue[CallEvent] = asyncio.Queue()
    caller = TwilioCaller(twilio_gw.url, linger_s=10.0, on_event=queue.put_nowait)

    async def hang_up_after_echo() -> None:
        while (await queue.get()).kind != "mark_echoed":
            pass
        caller.hangup()

    watcher = asyncio.create_task(hang_up_after_echo())
    result = await caller.run()
    await watcher
    assert result.closed_by == "caller"
    assert result.violations == []
    assert result.started_at is not None
    assert result.ended_at is not None
    assert result.ended_at - result.started_at < 0.5


async def test_event_callback_errors_are_raised_after_cleanup(twilio_gw: TwilioGateway) -> None:
    def broken(event: CallEvent) -> None:
        if event.kind == "started":
            raise RuntimeError("bug in test callback")

    with pytest.raises(RuntimeError, match="bug in test callback"):
        await TwilioCaller(twilio_gw.url, linger_s=0.1, on_event=broken).run()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_twiml_problems_are_recorded_and_the_call_goes_on(twilio_gw: TwilioGateway) -> None:
    twilio_gw.behaviour.twiml = default_twiml().replace("{url}", "{url}?token=abc")
    twilio_gw.behaviour.content_type = "text/plain"
    result, call = await place_call(twilio_gw, linger_s=0.1)
    assert call is not None
    assert result.violation_kinds() == [Violation.WEBHOOK_CONTENT_TYPE, Violation.STREAM_URL_QUERY]
    assert result.stream_url is not None
    assert result.stream_url.endswith("?token=abc")
    assert call.events()[:2] == ["connected", "start"]


async def test_require_wss(twilio_gw: TwilioGateway) -> None:
    result, _ = await place_call(twilio_gw, linger_s=0.05, require_wss=True)
    assert result.violation_kinds() == [Violation.STREAM_URL_SCHEME]
    assert result.closed_by == "caller"  # still connected and completed the call


async def test_stream_url_override_for_a_gateway_behind_a_proxy(twilio_gw: TwilioGateway) -> None:
    twilio_gw.behaviour.stream_url = "wss://twilio_gw.example.com/twilio/media"
    twilio_gw.behaviour.auth_token = "tok"
    local = f"ws://127.0.0.1:{twilio_gw.port}{STREAM_PATH}"
    result, call = await place_call(twilio_gw, linger_s=0.05, stream_url=local, auth_token="tok")
    assert call is not None
    assert result.violations == []
    assert result.warnings == []
    assert result.twiml_stream_url == "wss://twilio_gw.example.com/twilio/media"
    assert result.stream_url == local
    assert call.signatures_ok == [True, True]  # the upgrade is signed over the TwiML URL


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (Behaviour(status=500), Violation.WEBHOOK_STATUS),
        (Behaviour(twiml="<Response><Say>hi</Say></Response>"), Violation.TWIML_NO_STREAM),
        (Behaviour(reject_ws=True), Violation.STREAM_CONNECT_FAILED),
    ],
)
async def test_calls_that_never_stream(
    twilio_gw: TwilioGateway, behaviour: Behaviour, kind: str
) -> None:
    twilio_gw.behaviour = behaviour
    result, _ = await place_call(twilio_gw)
    assert result.violation_kinds() == [kind]
    assert result.closed_by is None
    assert result.started_at is None
    assert result.heard == b""


async def test_unreachable_gateway() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = await TwilioCaller(f"http://127.0.0.1:{port}").run()
    assert result.violation_kinds() == [Violation.WEBHOOK_FAILED]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_odd_sized_media_is_exposed_not_flagged(twilio_gw: TwilioGateway) -> None:
    async def odd_sizes(call: TwilioServerCall) -> None:
        await call.media(PATTERN[:100])
        await call.media(PATTERN[:320])
        await call.media(PATTERN[:161])

    twilio_gw.behaviour.scenario = odd_sizes
    result, _ = await place_call(twilio_gw, linger_s=0.2)
    assert result.violations == []
    assert result.odd_media_sizes == [100, 161]
    assert result.media_messages_received == 3
    assert result.media_bytes_received == 581


async def test_more_than_ten_minutes_buffered_is_discarded(twilio_gw: TwilioGateway) -> None:
    async def flood(call: TwilioServerCall) -> None:
        await call.media(b"\x10" * (8000 * 601))
        await call.media(b"\x20" * 160)
        assert call.ws is not None
        await call.ws.close()

    twilio_gw.behaviour.scenario = flood
    result, _ = await place_call(twilio_gw, linger_s=3.0)
    assert result.violation_kinds() == [Violation.BUFFER_OVERFLOW]
    assert result.media_bytes_received == 8000 * 601 + 160
    assert result.unplayed_bytes <= 8000 * 600


def test_constructor_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="DTMF digit"):
        TwilioCaller("http://x", dtmf=[(0.0, "55")])
    with pytest.raises(ValueError, match="outside the call"):
        TwilioCaller("http://x", linger_s=1.0, dtmf=[(1.5, "5")])
    with pytest.raises(ValueError, match="linger_s"):
        TwilioCaller("http://x", linger_s=-1)
    with pytest.raises(ValueError, match="hangup"):
        TwilioCaller("http://x", hangup="vanish")  # type: ignore[arg-type]


async def test_result_helpers_and_wav_output(twilio_gw: TwilioGateway, tmp_path: Path) -> None:
    async def speak(call: TwilioServerCall) -> None:
        await call.media(Tone(500, 0.2).render())

    twilio_gw.behaviour.scenario = speak
    caller = TwilioCaller(twilio_gw.url, linger_s=0.3)
    result = await caller.run()
    with pytest.raises(RuntimeError, match="one call"):
        await caller.run()
    path = tmp_path / "heard.wav"
    result.write_wav(path)
    assert read_wav(path, 8000) == result.heard_pcm()
    assert len(result.heard_between(0.0, 0.1)) == 800
    assert "no protocol violations" in result.summary()


async def test_broken_websocket_framing_is_caught(twilio_gw: TwilioGateway) -> None:
    async def bad_utf8(ws: ServerConnection) -> None:
        await ws.recv()  # connected
        ws.transport.write(b"\x81\x02\xff\xfe")  # a text frame that is not UTF-8
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    async with serve(bad_utf8, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        result = await TwilioCaller(
            twilio_gw.url, linger_s=1.0, stream_url=f"ws://127.0.0.1:{port}"
        ).run()
    assert result.violation_kinds() == [Violation.WEBSOCKET_PROTOCOL]
    assert "1007" in result.violations[0]
    assert result.closed_by == "gateway"
    assert asyncio.all_tasks() == {asyncio.current_task()}


def test_caller_state_without_sockets() -> None:
    """The sans-I/O core: frames and ticks in, heard audio, echoes and records out."""
    result = CallResult(webhook_url="", call_sid="CA", account_sid="AC", stream_sid=SID)
    events: list[CallEvent] = []
    state = CallerState(result, events.append)
    result.started_at = 100.0

    def send(message: dict[str, Any], now: float) -> None:
        state.on_frame(json.dumps(message), now)

    media = {"event": "media", "streamSid": SID, "media": {"payload": ""}}
    media["media"] = {"payload": base64.b64encode(b"\x01" * 320).decode()}
    send(media, 100.001)  # first plays the tick due at 100.000 (silence: nothing had arrived)
    send({"event": "mark", "streamSid": SID, "mark": {"name": "a"}}, 100.002)
    send(media, 100.003)
    send({"event": "mark", "streamSid": SID, "mark": {"name": "b"}}, 100.004)
    assert state.next_tick_at() == pytest.approx(100.02)
    state.advance(100.045)  # ticks at 100.02 and 100.04 play the 320 bytes before "a"
    assert state.next_echo() is None  # ...which is heard in full only once tick 100.06 starts
    state.advance(100.06)
    assert state.next_echo() == ("a", False)
    send({"event": "clear", "streamSid": SID}, 100.07)
    assert state.next_echo() == ("b", True)
    assert state.next_echo() is None
    state.on_frame(b"\x00", 100.1)
    assert result.violation_kinds() == [Violation.BINARY_FRAME]
    assert state.end("gateway", 100.2)
    assert not state.end("caller", 100.3)
    state.finish()
    assert len(result.heard) == 11 * 160  # ticks at 0, 20, ..., 200 ms
    assert result.heard == SILENT * 160 + b"\x01" * 480 + SILENT * (11 * 160 - 640)
    assert result.closed_by == "gateway"
    assert result.media_bytes_received == 640
    assert [e.kind for e in events] == [
        "media_received",
        "mark_received",
        "media_received",
        "mark_received",
        "clear_received",
        "violation",
    ]


async def test_cancelling_a_call_closes_everything(twilio_gw: TwilioGateway) -> None:
    caller = TwilioCaller(twilio_gw.url, linger_s=5.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(caller.run(), 0.3)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    call = twilio_gw.calls[-1]
    await until(call.done.is_set, within_s=3.0)
    assert call.disconnect_code is not None  # the socket was torn down, not leaked
    assert caller.result.closed_by == "caller"
