"""The Telnyx caller simulator on whole calls: TeXML and Call Control, every codec, misbehaviour.

Calls run against the scripted fake Telnyx gateway (``tests.fake_gateways.telnyx``, in its own
thread and event loop) and the fake Call Control API (also in its own thread), so after each call
the test's loop must hold no task but the test itself: anything the caller left running would show.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from callsim.callers.audio import Silence, Tone
from callsim.callers.result import CallEvent, CallResult
from callsim.callers.telnyx import TelnyxCaller
from callsim.telnyx.api import TelnyxApiSimulator
from callsim.telnyx.peer import FORMATS, Violation
from callsim.wav import read_wav
from gateway.audio import analysis, g711, g722
from tests.fake_gateways import place_call
from tests.fake_gateways.telnyx import (
    B64_ANSWERED,
    B64_STREAMING,
    PARAMS,
    RATES,
    Behaviour,
    TelnyxGateway,
    TelnyxServerCall,
)
from tests.servers import until

KEY = Ed25519PrivateKey.generate()


def encode(codec: str, pcm: bytes) -> bytes:
    """The codecs written out with gateway.audio directly (not the simulator's helpers)."""
    if codec == "PCMU":
        return g711.ulaw_encode(pcm)
    if codec == "PCMA":
        return g711.alaw_encode(pcm)
    if codec == "L16":
        return np.frombuffer(pcm, dtype="<i2").astype(">i2").tobytes()
    return g722.G722Encoder().encode(pcm)


def decode(codec: str, payload: bytes) -> bytes:
    if codec == "PCMU":
        return g711.ulaw_decode(payload)
    if codec == "PCMA":
        return g711.alaw_decode(payload)
    if codec == "L16":
        return np.frombuffer(payload, dtype=">i2").astype("<i2").tobytes()
    return g722.G722Decoder().decode(payload)


def kinds(result: CallResult) -> list[str]:
    return result.violation_kinds()


# === TeXML calls ================================================================================


# --- one TeXML call per codec, looked at part by part --------------------------------------------

N_MEDIA = 18 + 20  # ceil(0.35 s / 20 ms) + 0.4 s linger


def _say_and_hear_hz(codec: str) -> tuple[float, float]:
    """The caller's tone and the gateway's: above 4 kHz on a wideband codec (really wideband)."""
    return (5000.0, 6000.0) if RATES[codec] == 16000 else (1000.0, 700.0)


def _gateway_tone(codec: str) -> bytes:
    """What the gateway says: 200 ms, whole 20 ms frames."""
    return analysis.sine_pcm16(_say_and_hear_hz(codec)[1], 0.2, RATES[codec], dbfs=-12.0)


@dataclass(frozen=True)
class TexmlCall:
    """A signed TeXML call in one codec: the caller says a tone, the gateway answers one."""

    codec: str
    result: CallResult
    call: TelnyxServerCall
    events: list[CallEvent]

    @property
    def rate(self) -> int:
        return RATES[self.codec]


@pytest.fixture(scope="module", params=["PCMU", "PCMA", "G722"])  # TeXML's (L16: Call Control)
def texml_call(
    request: pytest.FixtureRequest,
    telnyx_gateway: TelnyxGateway,
    telnyx_api: TelnyxApiSimulator,
) -> TexmlCall:
    """One call per codec, placed once: each test below checks one part of it."""
    codec: str = request.param

    async def speak(call: TelnyxServerCall) -> None:
        await call.at(0.3)
        await call.media(encode(codec, _gateway_tone(codec)))
        await call.mark("tone-end")

    telnyx_gateway.reset(
        Behaviour(
            api_base=telnyx_api.base_url,
            api_key=telnyx_api.api_key,
            codec=codec,
            public_key=KEY.public_key(),
            scenario=speak,
        )
    )
    say_hz = _say_and_hear_hz(codec)[0]
    speech = [Silence(0.05), Tone(say_hz, 0.3, -10.0)]  # 17.5 frames: the last one padded
    events: list[CallEvent] = []
    result, call = asyncio.run(
        place_call(
            telnyx_gateway,
            speech=speech,
            linger_s=0.4,
            dtmf=[(0.1, "5"), (0.2, "#")],
            signing_key=KEY,
            on_event=events.append,
            call_codec=codec,  # a leg in the codec asked for: nothing to transcode
        )
    )
    assert call is not None
    return TexmlCall(codec, result, call, events)


def test_texml_webhook_is_telnyxs_form_signed(texml_call: TexmlCall) -> None:
    result, call, codec = texml_call.result, texml_call.call, texml_call.codec
    assert result.violations == [], result.violations
    assert call.signatures_ok == [True]
    form = call.webhooks[0][1]
    assert form["CallSid"] == form["CallSidLegacy"] == result.call_control_id
    assert result.call_control_id.startswith("v3:")
    assert (form["AccountSid"], form["CallStatus"], form["Direction"]) == (
        result.account_sid,
        "ringing",
        "inbound",
    )
    assert (form["From"], form["To"]) == ("+13122010094", "+13122123456")
    assert (result.carrier, result.mode, result.codec, result.bidirectional_codec) == (
        "telnyx",
        "texml",
        codec,
        codec,
    )
    assert (result.heard_rate, result.heard_encoding) == (texml_call.rate, "pcm16")


def test_texml_stream_opens_with_connected_then_start(texml_call: TexmlCall) -> None:
    result, call, codec = texml_call.result, texml_call.call, texml_call.codec
    events_seen = call.events()
    assert events_seen[:2] == ["connected", "start"]
    assert [m["sequence_number"] for _, m in call.messages[1:]] == [
        str(i) for i in range(1, len(events_seen))
    ]
    assert call.messages[0][1] == {"event": "connected", "version": "1.0.0"}
    assert call.of("start") == [
        {
            "event": "start",
            "sequence_number": "1",
            "start": {
                "user_id": result.account_sid,
                "call_control_id": result.call_control_id,
                "call_session_id": result.call_session_id,
                "from": "+13122010094",
                "to": "+13122123456",
                "client_state": None,
                "media_format": {
                    "encoding": codec,
                    # G.722: its RTP clock
                    "sample_rate": 8000 if codec == "G722" else texml_call.rate,
                    "channels": 1,
                },
                "custom_parameters": PARAMS,
            },
            "stream_id": result.stream_id,
        }
    ]


def test_texml_media_carries_the_speech_in_whole_frames_of_the_codec(
    texml_call: TexmlCall,
) -> None:
    call, codec, rate = texml_call.call, texml_call.codec, texml_call.rate
    fmt = FORMATS[codec]
    assert call.events().count("media") == N_MEDIA
    media = call.of("media")
    assert [set(m) for m in media] == [{"event", "sequence_number", "media", "stream_id"}] * N_MEDIA
    assert [m["media"]["chunk"] for m in media] == [str(k) for k in range(1, N_MEDIA + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * k) for k in range(N_MEDIA)]
    assert {m["media"]["track"] for m in media} == {"inbound"}
    assert {m["stream_id"] for m in media} == {texml_call.result.stream_id}
    payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
    assert {len(p) for p in payloads} == {fmt.frame_bytes}  # 160, 160, 640, 160
    say_hz = _say_and_hear_hz(codec)[0]
    spoken = Silence(0.05).pcm(rate) + Tone(say_hz, 0.3, -10.0).pcm(rate)
    expected = encode(codec, spoken.ljust(N_MEDIA * 2 * fmt.samples_per_frame, b"\0"))
    assert b"".join(payloads) == expected


def test_texml_dtmf_goes_out_in_telnyxs_shape_when_due(texml_call: TexmlCall) -> None:
    call = texml_call.call
    events_seen = call.events()
    assert events_seen.count("dtmf") == 2
    dtmf = call.of("dtmf")
    assert [d["dtmf"] for d in dtmf] == [{"digit": "5"}, {"digit": "#"}]
    assert set(dtmf[0]) == {"event", "stream_id", "occurred_at", "sequence_number", "dtmf"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", dtmf[0]["occurred_at"])
    assert events_seen.index("dtmf") == 2 + 4  # at 0.1 s, right before chunk 5 (due at 0.1 s)


def test_texml_caller_hanging_up_sends_stop_and_closes_with_1000(texml_call: TexmlCall) -> None:
    result, call = texml_call.result, texml_call.call
    events_seen = call.events()
    assert events_seen[-1] == "stop"
    assert call.of("stop") == [
        {
            "event": "stop",
            "sequence_number": str(len(events_seen) - 1),
            "stop": {"user_id": result.account_sid, "call_control_id": result.call_control_id},
            "stream_id": result.stream_id,
        }
    ]
    assert (result.closed_by, result.close_code, call.disconnect_code) == ("caller", 1000, 1000)


def test_texml_media_is_paced_in_real_time(texml_call: TexmlCall) -> None:
    """On an absolute schedule: chunk k arrives ~k·20 ms after `start`, and a chunk delayed by
    a busy machine does not delay the ones after it (a relative schedule would drift)."""
    call = texml_call.call
    arrivals = np.array([t for t, m in call.messages if m["event"] == "media"]) - call.start_time
    schedule = 0.020 * np.arange(1, N_MEDIA + 1)
    # Where the caller's schedule starts against the moment the gateway read `start`: a few ms
    # either way on a loaded machine (5.5 ms was seen in a full parallel run, and -5.4 ms when
    # the fake gateway read `start` late), the same for every chunk.
    offset = np.median(arrivals - schedule)
    assert -0.020 < offset < 0.020
    lateness = np.abs(arrivals - schedule - offset)
    assert np.median(lateness) < 0.005
    assert np.percentile(lateness, 80) < 0.040  # a stall on a loaded machine may hit a few
    assert np.median(lateness[-len(lateness) // 4 :]) < 0.005  # caught up: no drift
    assert texml_call.result.send_timing.samples == N_MEDIA


def _onset(result: CallResult) -> float:
    onset = result.heard_onset_s(min_level=300)
    assert onset is not None
    return onset


def test_texml_gateway_audio_is_heard_decoded_from_the_tick_after_it_arrived(
    texml_call: TexmlCall,
) -> None:
    result, rate, codec = texml_call.result, texml_call.rate, texml_call.codec
    hear_hz = _say_and_hear_hz(codec)[1]
    assert result.first_media_time is not None
    arrived = result.call_time(result.first_media_time)
    onset = _onset(result)
    assert arrived <= onset <= arrived + 0.02 + 0.002  # G.722's QMF adds ~0.7 ms
    heard = result.heard_between(onset + 0.03, onset + 0.17)
    assert analysis.tone_dbfs(heard, rate, hear_hz) == pytest.approx(-12.0, abs=0.6)
    assert analysis.dominant_frequency(heard, rate) == pytest.approx(hear_hz, abs=15)
    assert result.media_bytes_received == len(encode(codec, _gateway_tone(codec)))
    assert result.heard_s == pytest.approx(0.75, abs=0.04)


def test_texml_mark_is_echoed_once_its_audio_has_played(texml_call: TexmlCall) -> None:
    result, call = texml_call.result, texml_call.call
    [echo] = result.mark_echoes
    assert (echo.name, echo.cleared) == ("tone-end", False)
    played = result.call_time(echo.time) - _onset(result)
    assert 0.2 - 0.002 <= played <= 0.2 + 0.06  # (onset is ~0.7 ms late through G.722)
    assert call.of("mark") == [
        {
            "event": "mark",
            "stream_id": result.stream_id,
            "sequence_number": call.of("mark")[0]["sequence_number"],
            "mark": {"name": "tone-end"},
        }
    ]


def test_texml_call_events_report_the_webhook_then_the_stream(texml_call: TexmlCall) -> None:
    events = texml_call.events
    assert [e.kind for e in events][:2] == ["webhook", "stream_open"]
    assert [e.detail for e in events if e.kind == "webhook"] == ["texml 200"]


# --- TeXML calls, one behaviour each -------------------------------------------------------------


async def test_clear_drops_buffered_audio_and_echoes_pending_marks(
    telnyx_gw: TelnyxGateway,
) -> None:
    async def talk_then_barge_in(call: TelnyxServerCall) -> None:
        await call.at(0.1)
        for i in range(50):  # 1 s of audio, faster than real time, a mark every 0.2 s
            await call.media(bytes([0x10 + i % 64]) * 160)
            if i % 10 == 9:
                await call.mark(f"m{i // 10}")
        await call.at(0.4)
        await call.clear()
        await call.at(0.55)
        await call.mark("after-clear")

    telnyx_gw.behaviour.scenario = talk_then_barge_in
    result, call = await place_call(telnyx_gw, linger_s=0.7)
    assert call is not None
    assert result.violations == []
    [clear_time] = result.clear_times
    t_clear = result.call_time(clear_time)
    pcm = np.frombuffer(result.heard_pcm(), dtype="<i2")
    loud = np.flatnonzero(pcm != 0) / 8000
    assert loud[-1] < t_clear + 0.02  # at most the 20 ms frame already playing
    echoes = [(e.name, e.cleared) for e in result.mark_echoes]
    assert echoes == [
        ("m0", False),  # played at ~0.32 s
        ("m1", True),
        ("m2", True),
        ("m3", True),
        ("m4", True),
        ("after-clear", False),  # nothing buffered: echoed on the next tick
    ]
    assert [m["mark"]["name"] for m in call.of("mark")] == [name for name, _ in echoes]
    assert {frozenset(m) for m in call.of("mark")} == {
        frozenset({"event", "stream_id", "sequence_number", "mark"})
    }
    assert result.unplayed_bytes == 0


async def test_reordered_and_duplicated_media_reaches_the_gateway(telnyx_gw: TelnyxGateway) -> None:
    result, call = await place_call(
        telnyx_gw,
        speech=[Tone(440, 0.4)],
        linger_s=0.2,
        reorder_window=4,
        duplicate_every=7,
        seed=3,
        parameters_key=None,
    )
    assert call is not None
    assert result.violations == []
    assert "custom_parameters" not in call.of("start")[0]["start"]
    media = call.of("media")
    chunks = [int(m["media"]["chunk"]) for m in media]
    n = 30
    assert sorted(set(chunks)) == list(range(1, n + 1))  # every chunk delivered
    assert len(chunks) == n + n // 7  # plus every 7th message again
    assert chunks != sorted(chunks)  # really out of order
    for m in media:  # numbered at capture, before shuffling: seq 1 is `start`
        assert int(m["sequence_number"]) == int(m["media"]["chunk"]) + 1
    raw = [json.dumps(m, sort_keys=True) for m in media]
    duplicates = [a for a, b in itertools.pairwise(raw) if a == b]
    assert len(duplicates) == n // 7  # exact copies, sent right after the original
    sent = [(result.call_time(t), m) for t, m in result.sent if m["event"] == "media"]
    assert [m for _, m in sent] == media  # the wire order the gateway saw
    for at, m in sent:  # a block leaves once its last chunk is captured, never before
        chunk = int(m["media"]["chunk"])
        assert at >= 0.020 * min(((chunk - 1) // 4 + 1) * 4, n)


async def test_reordered_g722_put_back_in_order_is_the_in_order_encoding(
    telnyx_gw: TelnyxGateway,
) -> None:
    telnyx_gw.behaviour.codec = "G722"
    result, call = await place_call(
        telnyx_gw,
        speech=[Tone(300, 0.2)],
        linger_s=0.0,
        reorder_window=3,
        duplicate_every=2,
        seed=1,
        call_codec="G722",
    )
    assert call is not None
    assert result.violations == []
    by_chunk = {int(m["media"]["chunk"]): m["media"]["payload"] for m in call.of("media")}
    pcm = Tone(300, 0.2).pcm(16000)
    assert b"".join(base64.b64decode(by_chunk[k]) for k in sorted(by_chunk)) == encode("G722", pcm)


@pytest.mark.parametrize("sent", ["G722", "PCMU"])
async def test_the_gateway_is_heard_only_in_the_bidirectional_codec(
    telnyx_gw: TelnyxGateway, sent: str
) -> None:
    """G722 asked of a PCMU call: Telnyx cannot transcode the caller to G722, so it streams
    PCMU (and says so in ``start``), but it reads the gateway's audio as G722. A gateway that
    answers in the streamed codec sends frames of the right size that decode to noise."""
    rate = RATES[sent]
    tone = analysis.sine_pcm16(700.0, 0.4, rate, dbfs=-12.0)

    async def speak(call: TelnyxServerCall) -> None:
        await call.at(0.1)
        await call.media(encode(sent, tone))

    telnyx_gw.behaviour.codec, telnyx_gw.behaviour.scenario = "G722", speak
    result, call = await place_call(
        telnyx_gw, speech=[Silence(0.2)], linger_s=0.7, call_codec="PCMU"
    )
    assert call is not None
    assert result.violations == []  # 160-byte frames either way: only the audio tells
    media_format = call.of("start")[0]["start"]["media_format"]
    assert media_format == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert (result.codec, result.bidirectional_codec, result.heard_rate) == ("PCMU", "G722", 16000)
    assert "streams the call's PCMU" in " ".join(result.warnings)
    onset = result.heard_onset_s(min_level=300)
    assert onset is not None
    heard = result.heard_between(onset + 0.05, onset + 0.35)
    level = analysis.tone_dbfs(heard, 16000, 700.0)
    impurity = analysis.rms_dbfs(heard) - level  # 0 dB for a pure tone
    if sent == "G722":
        assert level == pytest.approx(-12.0, abs=0.6)
        assert impurity < 0.5
    else:
        assert impurity > 20  # noise, with almost nothing of the tone in it


OUT = base64.b64encode(b"\x2a" * 160).decode()


@pytest.mark.parametrize(
    ("bad", "kind", "code"),
    [
        (b"\x00\x01\x02", Violation.BINARY_FRAME, 100003),
        (
            {"event": "media", "stream_id": "{sid}", "media": {"payload": OUT}},
            Violation.STREAM_ID_IN_OUTBOUND,
            100003,
        ),
        ({"event": "clear", "stream_id": "{sid}"}, Violation.STREAM_ID_IN_OUTBOUND, 100003),
        (
            {"event": "media", "media": {"payload": base64.b64encode(b"\x2a" * 80).decode()}},
            Violation.MEDIA_TOO_SHORT,
            100003,
        ),
        ({"event": "media", "media": {"payload": "***"}}, Violation.BAD_PAYLOAD, 100004),
        (
            {"event": "mark", "mark": {"name": "x"}, "sequence_number": "1"},
            Violation.EXTRA_FIELD,
            100003,
        ),
        ({"event": "stop"}, Violation.UNKNOWN_EVENT, 100003),
        ("{not json", Violation.INVALID_JSON, 100003),
    ],
)
async def test_misbehaving_gateway_is_caught_and_answered_with_error(
    telnyx_gw: TelnyxGateway, bad: object, kind: str, code: int
) -> None:
    async def misbehave(call: TelnyxServerCall) -> None:
        await call.at(0.05)
        assert call.ws is not None
        if isinstance(bad, bytes):
            await call.ws.send_bytes(bad)
        elif isinstance(bad, str):
            await call.ws.send_text(bad)
        else:
            await call.ws.send_text(json.dumps(bad).replace("{sid}", call.stream_id))
        await call.mark("still-working")  # the call goes on after an invalid message
        await call.at(0.25)
        await call.ws.close(code=1000, reason="done")

    telnyx_gw.behaviour.scenario = misbehave
    events: list[CallEvent] = []
    result, call = await place_call(telnyx_gw, linger_s=2.0, on_event=events.append)
    assert call is not None
    assert kinds(result) == [kind]
    assert result.media_bytes_received == 0
    assert not np.any(np.frombuffer(result.heard, dtype="<i2"))
    assert [e.name for e in result.mark_echoes] == ["still-working"]
    [error] = call.of("error")
    assert error["stream_id"] == result.stream_id
    assert error["payload"]["code"] == code
    assert set(error) == {"event", "payload", "stream_id"}
    assert call.events().index("error") < call.events().index("mark")  # answered at once
    assert [e.detail for e in events if e.kind == "error_sent"] == [str(code)]


async def test_partial_frames_are_flagged_but_played(telnyx_gw: TelnyxGateway) -> None:
    async def thirty_ms(call: TelnyxServerCall) -> None:
        await call.media(b"\x2a" * 240)

    telnyx_gw.behaviour.scenario = thirty_ms
    result, call = await place_call(telnyx_gw, linger_s=0.2)
    assert call is not None
    assert kinds(result) == [Violation.MEDIA_PARTIAL_FRAME]
    assert "error" not in call.events()
    assert result.odd_media_sizes == [240]
    assert np.count_nonzero(np.frombuffer(result.heard, dtype="<i2")) == 240


async def test_mp3_mode_is_a_violation_and_the_call_goes_on(telnyx_gw: TelnyxGateway) -> None:
    telnyx_gw.behaviour.mode = None
    telnyx_gw.behaviour.echo = True
    result, call = await place_call(telnyx_gw, speech=[Tone(500, 0.1)], linger_s=0.1)
    assert call is not None
    assert kinds(result) == [Violation.BIDIRECTIONAL_MODE]
    assert "default mp3" in result.violations[0]
    assert result.closed_by == "caller"


@pytest.mark.parametrize("signature", ["tampered", "stale", "missing"])
async def test_a_gateway_refusing_a_bad_signature_gets_no_call(
    telnyx_gw: TelnyxGateway, signature: Literal["tampered", "stale", "missing"]
) -> None:
    telnyx_gw.behaviour.public_key = KEY.public_key()
    result, call = await place_call(telnyx_gw, signing_key=KEY, signature=signature)
    assert call is not None
    assert (result.webhook_status, call.signatures_ok) == (403, [False])
    assert result.violations == []
    assert (result.started_at, result.closed_by, result.stream_url) == (None, None, None)
    assert [(w.event, w.status, w.signature) for w in result.webhooks] == [
        ("texml", 403, signature)
    ]


async def test_a_gateway_accepting_a_bad_signature_is_warned_about(
    telnyx_gw: TelnyxGateway,
) -> None:
    result, _ = await place_call(telnyx_gw, signing_key=KEY, signature="tampered", linger_s=0.05)
    assert result.webhook_status == 200
    assert result.violations == []
    assert any("tampered signature" in w for w in result.warnings)


async def test_a_valid_signature_refused_is_a_violation(telnyx_gw: TelnyxGateway) -> None:
    telnyx_gw.behaviour.public_key = Ed25519PrivateKey.generate().public_key()  # another account's
    result, _ = await place_call(telnyx_gw, signing_key=KEY)
    assert kinds(result) == [Violation.WEBHOOK_STATUS]
    assert result.started_at is None


@pytest.mark.parametrize(("mode", "code"), [("stop", 1000), ("close", 1000), ("drop", 1005)])
async def test_hangup_modes(telnyx_gw: TelnyxGateway, mode: str, code: int) -> None:
    result, call = await place_call(telnyx_gw, linger_s=0.1, hangup=mode)
    assert call is not None
    assert (result.violations, result.closed_by) == ([], "caller")
    assert ("stop" in call.events()) == (mode == "stop")
    assert call.disconnect_code == code


async def test_texml_call_hung_up_through_the_api(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    async def hang_up(call: TelnyxServerCall) -> None:
        await call.at(0.15)
        assert await call.api("hangup") == 200

    telnyx_gw.behaviour.scenario = hang_up
    result, call = await place_call(telnyx_gw, linger_s=3.0, api=telnyx_api)
    assert call is not None
    assert result.violations == []
    assert result.api_actions() == ["hangup"]
    assert (result.closed_by, result.close_code, call.disconnect_code) == ("gateway", 1000, 1000)
    assert call.events()[-1] == "stop"  # Telnyx: stop, then it closes the socket
    assert result.ended_at is not None
    assert result.started_at is not None
    assert result.ended_at - result.started_at >= 0.15
    hung_up_at = result.api_requests[0].time
    assert 0 <= result.ended_at - hung_up_at < 0.02 + 0.03  # within a tick of the command


async def test_unreachable_gateway() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = await TelnyxCaller(f"http://127.0.0.1:{port}").run()
    assert kinds(result) == [Violation.WEBHOOK_FAILED]
    assert [(w.event, w.status) for w in result.webhooks] == [("texml", None)]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_stream_that_cannot_be_opened(telnyx_gw: TelnyxGateway) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"ws://127.0.0.1:{s.getsockname()[1]}/telnyx/stream"
        result = await TelnyxCaller(telnyx_gw.url, stream_url=closed).run()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert kinds(result) == [Violation.STREAM_CONNECT_FAILED]
    assert (result.started_at, result.closed_by, result.stream_url) == (None, None, closed)


async def test_broken_websocket_framing_is_caught(telnyx_gw: TelnyxGateway) -> None:
    async def bad_utf8(ws: ServerConnection) -> None:
        await ws.recv()  # connected
        ws.transport.write(b"\x81\x02\xff\xfe")  # a text frame that is not UTF-8
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    async with serve(bad_utf8, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        caller = TelnyxCaller(telnyx_gw.url, linger_s=1.0, stream_url=f"ws://127.0.0.1:{port}")
        result = await caller.run()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert kinds(result) == [Violation.WEBSOCKET_PROTOCOL]
    assert "1007" in result.violations[0]
    assert result.closed_by == "gateway"


# === Call Control ===============================================================================


def cc(api: TelnyxApiSimulator, **options: Any) -> dict[str, Any]:
    return {"mode": "call-control", "api": api, "signing_key": KEY} | options


async def test_call_control_dance_with_a_gateway_hangup(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    async def talk_and_hang_up(call: TelnyxServerCall) -> None:
        await call.at(0.1)
        await call.media(encode("L16", analysis.sine_pcm16(6000, 0.1, 16000, dbfs=-12.0)))
        await call.mark("bye")
        await call.at(0.4)
        assert await call.api("hangup") == 200

    b = telnyx_gw.behaviour
    b.codec, b.inbound, b.public_key = "L16", "PCMU", KEY.public_key()  # PCMU in, L16 back
    b.scenario, b.hangup_after_close = talk_and_hang_up, False
    events: list[CallEvent] = []
    result, call = await place_call(
        telnyx_gw, **cc(telnyx_api, speech=[Tone(440, 0.2)], linger_s=3.0, on_event=events.append)
    )
    assert call is not None
    assert result.violations == [], result.violations
    assert all(call.signatures_ok)
    assert len(call.signatures_ok) == 5
    assert [(w.event, w.status) for w in result.webhooks] == [
        ("call.initiated", 200),
        ("call.answered", 200),
        ("streaming.started", 200),
        ("streaming.stopped", 200),
        ("call.hangup", 200),
    ]
    initiated = call.webhook("call.initiated")
    assert initiated == {
        "call_control_id": result.call_control_id,
        "call_leg_id": initiated["call_leg_id"],
        "call_session_id": result.call_session_id,
        "connection_id": initiated["connection_id"],
        "from": "+13122010094",
        "to": "+13122123456",
        "direction": "incoming",
        "state": "parked",
        "client_state": None,
    }
    event = call.webhooks[0][1]
    assert set(event) == {"data", "meta"}
    assert set(event["data"]) == {"event_type", "id", "occurred_at", "record_type", "payload"}
    assert event["meta"] == {"attempt": 1, "delivered_to": result.webhook_url}
    assert call.webhook("call.answered")["client_state"] == B64_ANSWERED
    assert call.webhook("call.answered")["state"] == "answered"
    assert call.webhook("streaming.started")["stream_url"] == telnyx_gw.stream_url
    hangup = call.webhook("call.hangup")
    assert (hangup["hangup_source"], hangup["hangup_cause"]) == ("callee", "normal_clearing")
    assert hangup["client_state"] == B64_STREAMING
    assert result.api_actions() == ["answer", "streaming_start", "hangup"]
    assert [r.status for r in result.api_requests] == [200, 200, 200]
    start = call.of("start")[0]["start"]
    assert start["client_state"] == B64_STREAMING  # from streaming_start
    assert start["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert (result.codec, result.bidirectional_codec, result.heard_rate) == ("PCMU", "L16", 16000)
    assert {len(base64.b64decode(m["media"]["payload"])) for m in call.of("media")} == {160}
    # The gateway hung up: Telnyx sends stop and closes the socket itself.
    assert call.events()[-1] == "stop"
    assert (result.closed_by, call.disconnect_code) == ("gateway", 1000)
    assert result.ended_at is not None
    assert result.started_at is not None
    assert result.ended_at - result.started_at >= 0.4
    assert 0 <= result.ended_at - result.api_requests[-1].time < 0.02 + 0.03
    heard = result.heard_between(0.15, 0.2)
    assert analysis.tone_dbfs(heard, 16000, 6000) == pytest.approx(-12.0, abs=0.5)
    assert [e.name for e in result.mark_echoes] == ["bye"]
    kinds_seen = [e.kind for e in events]
    assert kinds_seen.count("api_command") == 3
    assert kinds_seen.count("webhook") == 5


async def test_caller_hangs_up_and_a_late_gateway_hangup_gets_90018(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, linger_s=0.15))
    assert call is not None
    assert result.violations == []
    assert result.closed_by == "caller"
    assert call.events()[-1] == "stop"
    assert result.api_actions() == ["answer", "streaming_start", "hangup"]
    assert result.api_requests[-1].status == 422
    assert call.api_answers[-1][2]["errors"][0]["code"] == "90018"
    assert call.webhook("call.hangup")["hangup_source"] == "caller"


@pytest.mark.parametrize("codec", ["G722", "L16"])
async def test_stream_requested_on_answer(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator, tmp_path: Path, codec: str
) -> None:
    telnyx_gw.behaviour.stream = "on_answer"
    telnyx_gw.behaviour.codec = codec
    telnyx_gw.behaviour.echo = True
    result, call = await place_call(
        telnyx_gw,
        **cc(
            telnyx_api,
            speech=[Tone(6500, 0.2)],
            linger_s=0.2,
            g722_start_rate=16000,
            call_codec=codec,
        ),
    )
    assert call is not None
    assert result.violations == []
    assert result.api_actions() == ["answer", "hangup"]
    assert call.webhook("call.answered")["stream_url"] == telnyx_gw.stream_url
    assert result.bidirectional_codec == codec
    media_format = call.of("start")[0]["start"]["media_format"]
    assert media_format == {"encoding": codec, "sample_rate": 16000, "channels": 1}
    assert analysis.dominant_frequency(result.heard_pcm(), 16000) == pytest.approx(6500, abs=20)
    path = tmp_path / "heard.wav"
    result.write_wav(path)
    assert read_wav(path, 16000) == result.heard_pcm()
    summary = result.summary()
    assert f"telnyx call-control: caller sends {codec}, gateway must send {codec}" in summary
    assert "no protocol violations" in summary


async def test_streaming_before_answer_is_refused(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    telnyx_gw.behaviour.stream = "before_answer"
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, linger_s=0.1))
    assert call is not None
    assert kinds(result) == [Violation.CALL_CONTROL_ORDER]
    assert result.api_actions() == ["streaming_start", "answer", "streaming_start", "hangup"]
    assert result.api_requests[0].status == 422
    assert result.closed_by == "caller"  # the second attempt streamed


async def test_a_gateway_that_never_answers(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    telnyx_gw.behaviour.answer = False
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, command_timeout_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.CALL_CONTROL_MISSING]
    assert "no answer within 0.2 s of call.initiated" in result.violations[0]
    assert result.started_at is None
    hangup = call.webhook("call.hangup")
    assert (hangup["hangup_source"], hangup["hangup_cause"]) == ("caller", "originator_cancel")


async def test_a_gateway_that_never_streams(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    telnyx_gw.behaviour.stream = "never"
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, command_timeout_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.CALL_CONTROL_MISSING]
    assert "no streaming_start within 0.2 s of call.answered" in result.violations[0]
    assert [w.event for w in result.webhooks] == ["call.initiated", "call.answered", "call.hangup"]


async def test_closing_the_stream_without_hanging_up_leaves_the_call_up(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    async def close(call: TelnyxServerCall) -> None:
        await call.at(0.1)
        assert call.ws is not None
        await call.ws.close()

    telnyx_gw.behaviour.scenario, telnyx_gw.behaviour.hangup_after_close = close, False
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, linger_s=2.0, hangup_grace_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.CALL_LEFT_UP]
    assert result.closed_by == "gateway"
    assert call.webhook("call.hangup")["hangup_source"] == "caller"


async def test_closing_the_stream_then_hanging_up_is_fine(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    async def close(call: TelnyxServerCall) -> None:
        await call.at(0.1)
        assert call.ws is not None
        await call.ws.close()

    telnyx_gw.behaviour.scenario = close  # the handler then POSTs hangup
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, linger_s=2.0))
    assert call is not None
    assert result.violations == []
    assert result.api_actions() == ["answer", "streaming_start", "hangup"]
    assert call.webhook("call.hangup")["hangup_source"] == "callee"


async def test_a_wrong_api_key_is_refused(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    telnyx_gw.behaviour.api_key = "KEYwrong"
    result, call = await place_call(telnyx_gw, **cc(telnyx_api, command_timeout_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.API_UNAUTHORIZED, Violation.CALL_CONTROL_MISSING]
    assert call.api_answers[0][1] == 401


async def test_cancelling_a_call_closes_everything(
    telnyx_gw: TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> None:
    started = asyncio.Event()

    def on_event(event: CallEvent) -> None:
        if event.kind == "started":
            started.set()

    caller = TelnyxCaller(telnyx_gw.url, **cc(telnyx_api, linger_s=5.0, on_event=on_event))
    run = asyncio.create_task(caller.run())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert asyncio.all_tasks() == {asyncio.current_task()}
    call = telnyx_gw.calls[-1]
    await until(call.done.is_set, within_s=3.0)
    assert call.disconnect_code is not None  # the socket was torn down, not leaked
    assert call.api_answers[-1][1] == 422  # the API knows the call is over (90018)


def test_constructor_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="mode"):
        TelnyxCaller("http://x", mode="sip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs api"):
        TelnyxCaller("http://x", mode="call-control")
    with pytest.raises(ValueError, match="signature"):
        TelnyxCaller("http://x", signature="forged")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_codec"):
        TelnyxCaller("http://x", call_codec="OPUS")
    with pytest.raises(ValueError, match="reorder_window"):
        TelnyxCaller("http://x", reorder_window=-1)
    with pytest.raises(ValueError, match="DTMF digit"):
        TelnyxCaller("http://x", dtmf=[(0.0, "E")])
    with pytest.raises(ValueError, match="tone frequency"):
        TelnyxCaller("http://x", speech=[Tone(9000, 0.1)])
    TelnyxCaller("http://x", speech=[Tone(5000, 0.1)], dtmf=[(0.0, "A")])


async def test_speech_that_cannot_exist_on_the_negotiated_codec(telnyx_gw: TelnyxGateway) -> None:
    caller = TelnyxCaller(telnyx_gw.url, speech=[Tone(5000, 0.1)])  # the gateway asks for PCMU
    with pytest.raises(ValueError, match=r"tone frequency must be in \(0, 4000\) Hz"):
        await caller.run()
    assert asyncio.all_tasks() == {asyncio.current_task()}
