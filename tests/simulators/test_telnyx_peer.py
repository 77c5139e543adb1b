"""Telnyx media-stream messages, strict frame validation, send plans and codecs (pure, no I/O)."""

from __future__ import annotations

import base64
import json
import random
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsim.callers.result import CallEvent, CallResult
from callsim.callers.state import CallerState, StreamRules
from callsim.telnyx import peer
from callsim.telnyx.peer import FORMATS, Violation
from gateway.audio import analysis, g711
from gateway.audio.transcode import AudioFormat

SID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CCID = "v3:abc"
PCMU = FORMATS["PCMU"]


def test_messages_telnyx_sends_are_exact() -> None:
    assert peer.connected_message() == {"event": "connected", "version": "1.0.0"}
    start = peer.start_message(
        stream_id=SID,
        user_id="u-1",
        call_control_id=CCID,
        call_session_id="s-1",
        from_number="+1",
        to_number="+2",
        client_state=None,
        encoding="PCMU",
        sample_rate=8000,
        custom_parameters={"a": "1"},
    )
    assert start == {
        "event": "start",
        "sequence_number": "1",
        "start": {
            "user_id": "u-1",
            "call_control_id": CCID,
            "call_session_id": "s-1",
            "from": "+1",
            "to": "+2",
            "client_state": None,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            "custom_parameters": {"a": "1"},
        },
        "stream_id": SID,
    }
    other_key = peer.start_message(
        stream_id=SID,
        user_id="u",
        call_control_id=CCID,
        call_session_id="s",
        from_number="+1",
        to_number="+2",
        client_state="c3Q=",
        encoding="L16",
        sample_rate=16000,
        custom_parameters={"a": "1"},
        parameters_key="customParameters",
    )
    assert other_key["start"]["customParameters"] == {"a": "1"}
    assert "custom_parameters" not in other_key["start"]
    no_params = peer.start_message(
        stream_id=SID,
        user_id="u",
        call_control_id=CCID,
        call_session_id="s",
        from_number="+1",
        to_number="+2",
        client_state=None,
        encoding="PCMU",
        sample_rate=8000,
    )
    assert set(no_params["start"]) == {
        "user_id",
        "call_control_id",
        "call_session_id",
        "from",
        "to",
        "client_state",
        "media_format",
    }
    assert peer.media_message(seq=4, stream_id=SID, chunk=2, timestamp_ms=20, payload=b"\x01") == {
        "event": "media",
        "sequence_number": "4",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "20", "payload": "AQ=="},
        "stream_id": SID,
    }
    assert peer.dtmf_message(seq=5, stream_id=SID, digit="1", occurred="T") == {
        "event": "dtmf",
        "stream_id": SID,
        "occurred_at": "T",
        "sequence_number": "5",
        "dtmf": {"digit": "1"},
    }
    assert peer.mark_message(seq=6, stream_id=SID, name="m") == {
        "event": "mark",
        "stream_id": SID,
        "sequence_number": "6",
        "mark": {"name": "m"},
    }
    assert peer.stop_message(seq=7, stream_id=SID, user_id="u", call_control_id=CCID) == {
        "event": "stop",
        "sequence_number": "7",
        "stop": {"user_id": "u", "call_control_id": CCID},
        "stream_id": SID,
    }
    assert peer.error_message(stream_id=SID, code=100003, title="malformed_frame", detail="d") == {
        "event": "error",
        "payload": {"code": 100003, "title": "malformed_frame", "detail": "d"},
        "stream_id": SID,
    }


def test_ids_and_times_look_like_telnyx() -> None:
    ccid = peer.new_call_control_id()
    assert ccid.startswith("v3:")
    assert len(ccid) > 40
    assert peer.new_call_control_id() != ccid
    assert re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", peer.new_uuid(upper=True))
    assert peer.occurred_at(1_700_000_000.5) == "2023-11-14T22:13:20.500000Z"


# --- frames the gateway sends -------------------------------------------------------------------


def media(payload: bytes | str, **top: object) -> str:
    text = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    return json.dumps({"event": "media", "media": {"payload": text}, **top})


FRAME = b"\x01" * 160
B64 = base64.b64encode(FRAME).decode()


def parse(frame: str | bytes, fmt: AudioFormat = PCMU) -> Any:
    return peer.parse_gateway_frame(frame, fmt=fmt, stream_id=SID)


def test_valid_gateway_frames() -> None:
    ok = parse(media(FRAME * 3))
    assert (ok.event, ok.payload, ok.violations, ok.reply) == ("media", FRAME * 3, [], None)
    mark = parse('{"event":"mark","mark":{"name":"m1"}}')
    assert (mark.event, mark.mark_name, mark.violations) == ("mark", "m1", [])
    clear = parse('{"event":"clear"}')
    assert (clear.event, clear.violations) == ("clear", [])
    wide = parse(media(b"\x00" * 640), FORMATS["L16"])
    assert (wide.event, wide.violations) == ("media", [])
    assert parse(media(b"\x00" * 640)).violations == []  # 80 ms of PCMU: whole frames
    longest = parse(media(b"\x01" * 160 * 1500))
    assert longest.violations == []


MALFORMED = 100003
INVALID_MEDIA = 100004


@pytest.mark.parametrize(
    ("frame", "fmt", "kinds", "code"),
    [
        (b"\x00\x01", PCMU, [Violation.BINARY_FRAME], MALFORMED),
        ("not json", PCMU, [Violation.INVALID_JSON], MALFORMED),
        ('{"event": "clear", "x": NaN}', PCMU, [Violation.INVALID_JSON], MALFORMED),
        ('{"event": "clear", "event": "clear"}', PCMU, [Violation.DUPLICATE_KEY], MALFORMED),
        ("[1]", PCMU, [Violation.NOT_AN_OBJECT], MALFORMED),
        ('{"media": {}}', PCMU, [Violation.MISSING_FIELD], MALFORMED),
        ('{"event": "stop"}', PCMU, [Violation.UNKNOWN_EVENT], MALFORMED),
        ('{"event": 3}', PCMU, [Violation.UNKNOWN_EVENT], MALFORMED),
        (media(FRAME, stream_id=SID), PCMU, [Violation.STREAM_ID_IN_OUTBOUND], MALFORMED),
        (media(FRAME, streamSid=SID), PCMU, [Violation.STREAM_ID_IN_OUTBOUND], MALFORMED),
        (
            f'{{"event":"clear","stream_id":"{SID}"}}',
            PCMU,
            [Violation.STREAM_ID_IN_OUTBOUND],
            MALFORMED,
        ),
        (media(FRAME, sequence_number="1"), PCMU, [Violation.EXTRA_FIELD], MALFORMED),
        (
            json.dumps({"event": "media", "media": {"payload": B64, "track": "outbound"}}),
            PCMU,
            [Violation.EXTRA_FIELD],
            MALFORMED,
        ),
        ('{"event":"media"}', PCMU, [Violation.MISSING_FIELD], MALFORMED),
        ('{"event":"media","media":{}}', PCMU, [Violation.MISSING_FIELD], MALFORMED),
        ('{"event":"media","media":"AQ=="}', PCMU, [Violation.BAD_FIELD_TYPE], MALFORMED),
        ('{"event":"media","media":{"payload":5}}', PCMU, [Violation.BAD_FIELD_TYPE], MALFORMED),
        (media("@@@@"), PCMU, [Violation.BAD_PAYLOAD], INVALID_MEDIA),
        (media("AQ"), PCMU, [Violation.BAD_PAYLOAD], INVALID_MEDIA),  # missing padding
        (media("-_8="), PCMU, [Violation.BAD_PAYLOAD], INVALID_MEDIA),  # URL-safe alphabet
        (media(""), PCMU, [Violation.MEDIA_TOO_SHORT], MALFORMED),
        (media(b"\x01" * 80), PCMU, [Violation.MEDIA_TOO_SHORT], MALFORMED),  # 10 ms
        (media(b"\x01" * 320), FORMATS["L16"], [Violation.MEDIA_TOO_SHORT], MALFORMED),  # 10 ms
        (media(b"\x01" * (160 * 1500 + 160)), PCMU, [Violation.MEDIA_TOO_LONG], MALFORMED),
        (
            media(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 200),
            PCMU,
            [Violation.PAYLOAD_FILE_HEADER],
            MALFORMED,
        ),
        (media(b"ID3\x04" + b"\x00" * 200), PCMU, [Violation.PAYLOAD_FILE_HEADER], MALFORMED),
        ('{"event":"mark"}', PCMU, [Violation.MISSING_FIELD], MALFORMED),
        ('{"event":"mark","mark":{"name":1}}', PCMU, [Violation.BAD_FIELD_TYPE], MALFORMED),
        ('{"event":"mark","mark":{"name":"a","x":1}}', PCMU, [Violation.EXTRA_FIELD], MALFORMED),
        ('{"event":"clear","media":{}}', PCMU, [Violation.EXTRA_FIELD], MALFORMED),
    ],
)
def test_frames_telnyx_rejects(
    frame: str | bytes, fmt: AudioFormat, kinds: list[str], code: int
) -> None:
    parsed = parse(frame, fmt)
    assert [v.partition(":")[0] for v in parsed.violations] == kinds
    assert parsed.event is None  # not acted on
    assert parsed.reply is not None
    assert parsed.reply["event"] == "error"
    assert parsed.reply["stream_id"] == SID
    assert parsed.reply["payload"]["code"] == code
    title = "malformed_frame" if code == MALFORMED else "invalid_media"
    assert parsed.reply["payload"]["title"] == title


def test_partial_frames_are_violations_but_play() -> None:
    for fmt, size in [(PCMU, 240), (FORMATS["L16"], 961), (FORMATS["G722"], 200)]:
        parsed = parse(media(b"\x02" * size), fmt)
        assert [v.partition(":")[0] for v in parsed.violations] == [Violation.MEDIA_PARTIAL_FRAME]
        assert (parsed.event, parsed.reply, len(parsed.payload)) == ("media", None, size)


# --- send plans ---------------------------------------------------------------------------------


def test_identity_plan_without_reordering() -> None:
    assert peer.media_send_plan(4) == [[1], [2], [3], [4]]
    assert peer.media_send_plan(3, window=1) == [[1], [2], [3]]
    assert peer.media_send_plan(0, window=5) == []
    with pytest.raises(ValueError, match=">= 0"):
        peer.media_send_plan(3, window=-1)


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=200),
    window=st.integers(min_value=0, max_value=12),
    every=st.integers(min_value=0, max_value=9),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_send_plan_delivers_everything_within_windows(
    total: int, window: int, every: int, seed: int
) -> None:
    plan = peer.media_send_plan(
        total, window=window, duplicate_every=every, rng=random.Random(seed)
    )
    assert len(plan) == total
    sent = [chunk for slot in plan for chunk in slot]
    # Every chunk delivered; duplicates are extra copies sent right after the original.
    originals = [c for i, c in enumerate(sent) if i == 0 or sent[i - 1] != c]
    assert sorted(originals) == list(range(1, total + 1))
    dupes = len(sent) - len(originals)
    assert dupes == (total // every if every else 0)
    if every:  # the every-th, 2·every-th, ... message (originals, in send order) is doubled
        doubled = [c for i, c in enumerate(sent[1:], 1) if sent[i - 1] == c]
        assert doubled == originals[every - 1 :: every]
    size = max(window, 1)
    for slot_index, slot in enumerate(plan, 1):
        for chunk in slot:
            assert chunk <= slot_index  # never sent before it was captured
            block_end = min(((chunk - 1) // size + 1) * size, total)
            assert slot_index == block_end  # sent when its block is complete
        # A slot holds exactly one block: a permutation of consecutive chunks.
        unique = sorted(set(slot))
        assert unique == list(range(unique[0], unique[-1] + 1)) if unique else True


def test_send_plan_really_permutes() -> None:
    plan = peer.media_send_plan(400, window=4, rng=random.Random(7))
    blocks = [slot for slot in plan if slot]
    assert len(blocks) == 100
    assert sum(block != sorted(block) for block in blocks) > 50


# --- codecs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722", "L16"])
def test_encoders_and_decoders_round_trip_a_tone(codec: str) -> None:
    fmt = FORMATS[codec]
    hz = 3000.0 if fmt.sample_rate == 8000 else 6000.0  # 6 kHz only exists at 16 kHz
    pcm = analysis.sine_pcm16(hz, 0.2, fmt.sample_rate, dbfs=-12.0)
    encoded = peer.encoder_for(fmt)(pcm)
    assert len(encoded) == 10 * fmt.frame_bytes
    decoded = peer.decoder_for(fmt)(encoded)
    assert len(decoded) == len(pcm)
    level = analysis.tone_dbfs(decoded[800:], fmt.sample_rate, hz)
    assert level == pytest.approx(-12.0, abs=0.5)


def test_l16_is_big_endian_on_the_wire() -> None:
    fmt = FORMATS["L16"]
    assert peer.encoder_for(fmt)(b"\x01\x02") == b"\x02\x01"
    assert peer.decoder_for(fmt)(b"\x02\x01\x07") == b"\x01\x02"  # half a sample dropped
    little = AudioFormat("L16", 16000, "little")
    assert peer.encoder_for(little)(b"\x01\x02") == b"\x01\x02"
    assert peer.decoder_for(little)(b"\x01\x02\x03") == b"\x01\x02"
    assert peer.decoder_for(PCMU)(b"\xff") == g711.ulaw_decode(b"\xff")


def test_caller_state_with_telnyx_rules_decodes_and_answers_errors() -> None:
    """The shared sans-I/O core under Telnyx rules: PCM16 timeline at 16 kHz, error replies."""
    fmt = FORMATS["L16"]
    result = CallResult(
        webhook_url="",
        call_sid=CCID,
        account_sid="u",
        stream_sid=SID,
        carrier="telnyx",
        heard_rate=16000,
        heard_encoding="pcm16",
    )
    events: list[CallEvent] = []
    state = CallerState(result, events.append)
    state.use_rules(
        StreamRules(
            parse=lambda f: peer.parse_gateway_frame(f, fmt=fmt, stream_id=SID),
            frame_bytes=fmt.frame_bytes,
            tick_bytes=640,
            silence=0,
            decode=peer.decoder_for(fmt),
        )
    )
    result.started_at = 100.0
    wire = np.arange(320, dtype=">i2").tobytes()  # 20 ms, big-endian ramp
    state.on_frame(media(wire), 100.001)
    state.on_frame('{"event":"mark","mark":{"name":"a"}}', 100.002)
    state.on_frame(media(wire, stream_id=SID), 100.003)  # rejected: Telnyx answers `error`
    reply = state.next_reply()
    assert reply is not None
    assert reply["payload"]["code"] == MALFORMED
    assert state.next_reply() is None
    state.advance(100.041)
    assert state.next_echo() == ("a", False)
    with pytest.raises(RuntimeError, match="before the stream starts"):
        state.use_rules(
            StreamRules(parse=lambda f: peer.parse_gateway_frame(f, fmt=fmt, stream_id=SID))
        )
    assert state.end("caller", 100.06)
    state.finish()
    heard = np.frombuffer(result.heard, dtype="<i2")
    assert len(heard) == 4 * 320  # ticks at 0, 20, 40, 60 ms
    assert heard[:320].tolist() == [0] * 320  # the tick at 0 played before the frame came
    assert heard[320:640].tolist() == list(range(320))  # decoded to little-endian PCM
    assert result.heard_pcm() == result.heard
    assert result.heard_s == pytest.approx(0.08)
    assert len(result.heard_between(0.02, 0.04)) == 640
    assert result.heard_onset_s(min_level=100) == pytest.approx((320 + 101) / 16000)
    assert result.violation_kinds() == [Violation.STREAM_ID_IN_OUTBOUND]
    assert [e.kind for e in events] == ["media_received", "mark_received", "violation"]
