"""The same behaviour on every carrier path: Twilio, Telnyx TeXML per codec, Telnyx Call Control.

Audio is measured per codec, both ways, with an FFT: frequency, level and duration kept, and
what lies outside the band (aliases of the model's 24 kHz audio, images of the caller's) at
least 60 dB down. Wideband codecs (G.722, L16) must really carry wideband audio: a 6 kHz tone
crosses them both ways, where G.711 stops at 4 kHz.
"""

from __future__ import annotations

import asyncio

import pytest

from callsim.callers.audio import Silence, Tone
from callsim.callers.result import CallResult
from callsim.live.script import Step, ToolCallSpec
from callsim.live.voices import voice_pitch_hz
from gateway.audio.analysis import dominant_frequency, rms_dbfs, tone_dbfs
from tests.audio_checks import audible_s, steady_part
from tests.conftest import StructuredLogs
from tests.harness import ALL_CARRIERS, CARRIER_KINDS, Carrier, agents, running

LEVEL = -12.0
GREETING = agents(agent_triage={"greeting": "Greet the caller."})


def _tolerance_db(carrier: Carrier) -> float:
    return 1.0 if carrier.codec == "G722" else 0.6  # G.722 is ADPCM: a little less exact


def _heard(result: CallResult) -> tuple[bytes, int]:
    return result.heard_pcm(), result.heard_rate


def _assert_tone_heard(result: CallResult, carrier: Carrier, hz: float) -> None:
    """The caller heard the agent's 1 s tone at ``hz``, at its level, at the carrier's rate."""
    pcm, rate = _heard(result)
    assert rate == carrier.rate
    assert audible_s(pcm, rate) == pytest.approx(1.0, abs=0.05)
    steady = steady_part(pcm, rate)
    assert dominant_frequency(steady, rate) == pytest.approx(hz, abs=3)
    assert tone_dbfs(steady, rate, hz) == pytest.approx(LEVEL, abs=_tolerance_db(carrier))


@pytest.mark.parametrize("carrier", ALL_CARRIERS, ids=str)
async def test_model_speech_reaches_the_caller(carrier: Carrier) -> None:
    hz = 6000 if carrier.rate == 16000 else 1000
    steps = [Step(on="text", say="tone", seconds=1.0, tone_hz=hz, level_dbfs=LEVEL)]
    async with running(steps=steps, graph=GREETING, carrier=carrier) as h:
        result = await h.call([Silence(2.4)], linger_s=0.2)
    _assert_tone_heard(result, carrier, hz)


@pytest.mark.parametrize("carrier", ALL_CARRIERS, ids=str)
async def test_model_audio_beyond_the_carriers_band_does_not_alias(carrier: Carrier) -> None:
    # 24 kHz → 8 kHz folds 6 kHz onto 2 kHz; 24 kHz → 16 kHz folds 9 kHz onto 7 kHz.
    tone_hz, alias_hz = (9000, 7000) if carrier.rate == 16000 else (6000, 2000)
    steps = [Step(on="text", say="alias", seconds=1.0, tone_hz=tone_hz, level_dbfs=LEVEL)]
    async with running(steps=steps, graph=GREETING, carrier=carrier) as h:
        result = await h.call([Silence(2.2)], linger_s=0.2)
    pcm, rate = _heard(result)
    assert tone_dbfs(pcm, rate, alias_hz) < LEVEL - 60
    assert h.sim.connections[0].sent_times("audio")  # the tone was really sent


@pytest.mark.parametrize("carrier", ALL_CARRIERS, ids=str)
async def test_caller_speech_reaches_the_model(carrier: Carrier) -> None:
    hz = 6000 if carrier.rate == 16000 else 1000
    async with running(carrier=carrier) as h:
        await h.call([Silence(0.4), Tone(hz, 1.0, LEVEL), Silence(0.4)], linger_s=0.2)
        received = bytes(h.sim.connections[0].audio_in)
    assert h.sim.connections[0].realtime_mime_types == ["audio/pcm;rate=16000"]
    assert audible_s(received, 16000) == pytest.approx(1.0, abs=0.05)
    steady = steady_part(received, 16000)
    assert dominant_frequency(steady, 16000) == pytest.approx(hz, abs=3)
    assert tone_dbfs(steady, 16000, hz) == pytest.approx(LEVEL, abs=_tolerance_db(carrier))
    if carrier.rate == 8000:  # upsampled 8 → 16 kHz: the image of 1 kHz sits at 7 kHz
        assert tone_dbfs(steady, 16000, 7000) < LEVEL - 60


@pytest.mark.parametrize("carrier", CARRIER_KINDS, ids=str)
async def test_barge_in_clears_playback_on_every_carrier(carrier: Carrier) -> None:
    steps = [Step(on="text", say="a long answer", seconds=6.0)]
    async with running(steps=steps, graph=GREETING, carrier=carrier) as h:
        result = await h.call([Silence(1.5), Tone(300, 0.8), Silence(1.0)], linger_s=0.2)
        conn = h.sim.connections[0]
    (interrupted_at,) = conn.sent_times("interrupted")
    assert result.clear_times
    assert 0 <= result.clear_times[0] - interrupted_at < 0.020
    pcm, rate = _heard(result)
    start = int((result.call_time(result.clear_times[0]) + 0.02) * rate) * 2
    assert rms_dbfs(pcm[start : start + rate]) < -45  # nothing of the old answer after it


def _voices(pcm: bytes, rate: int, voices: list[str]) -> list[str]:
    pitches = {v: voice_pitch_hz(v) for v in voices}
    window = rate // 10 * 2
    out: list[str] = []
    for i in range(0, len(pcm) - window + 1, window):
        chunk = pcm[i : i + window]
        if rms_dbfs(chunk) < -40:
            continue
        hz = dominant_frequency(chunk, rate)
        voice = min(pitches, key=lambda v: abs(pitches[v] - hz))
        if abs(pitches[voice] - hz) < 10 and (not out or out[-1] != voice):
            out.append(voice)
    return out


@pytest.mark.parametrize("carrier", CARRIER_KINDS, ids=str)
async def test_handoff_on_every_carrier(carrier: Carrier) -> None:
    steps = [
        Step(on="text", when="Role: Triage", say="Hello.", seconds=0.8),
        Step(on="caller", when="Role: Triage", hear="advice please", say="Transferring.",
             seconds=0.6, tool_call=ToolCallSpec("handoff_conversation", {
                 "target": "agent-advisor", "reason": "advice", "summary": "wants advice"})),
        Step(on="text", when="Role: Portfolio", say="Advisor here.", seconds=0.8),
    ]  # fmt: skip
    async with running(steps=steps, graph=GREETING, carrier=carrier) as h:
        result = await h.call([Silence(1.6), Tone(300, 0.5), Silence(3.0)], linger_s=0.2)
        conns = h.sim.connections
    assert len(conns) == 2 and conns[1].resumed and conns[1].voice == "Charon"
    pcm, rate = _heard(result)
    assert _voices(pcm, rate, ["Aoede", "Charon"]) == ["Aoede", "Charon"]


@pytest.mark.parametrize("carrier", CARRIER_KINDS, ids=str)
async def test_caller_hang_up_closes_the_live_session(carrier: Carrier) -> None:
    async with running(carrier=carrier) as h:
        result = await h.call([Silence(0.8)], linger_s=0.1, hangup="stop")
        conn = h.sim.connections[0]
        await h.sim.wait_for(lambda: not conn.is_open, timeout=2)
    assert result.closed_by == "caller"
    assert conn.closed_by == "client"
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"


@pytest.mark.parametrize(
    "carrier", [Carrier("telnyx", "PCMU"), Carrier("telnyx", "L16", "call-control")], ids=str
)
async def test_out_of_order_and_duplicated_frames_are_restored(carrier: Carrier) -> None:
    async with running(carrier=carrier) as h:
        result = await h.call(
            [Silence(0.3), Tone(1000, 1.0, LEVEL), Silence(0.3)],
            linger_s=0.2,
            reorder_window=3,
            duplicate_every=7,
            seed=5,
        )
        received = bytes(h.sim.connections[0].audio_in)
    sent = sum(1 for _, m in result.sent if m.get("event") == "media")
    distinct = sent - sent // 8  # every 7th frame was sent twice
    assert len(received) == pytest.approx(distinct * 640, abs=640 * 4)
    steady = steady_part(received, 16000)
    # A misordered frame would smear the tone: its level and purity prove the order.
    assert tone_dbfs(steady, 16000, 1000) == pytest.approx(LEVEL, abs=0.6)
    residual = rms_dbfs(steady) - tone_dbfs(steady, 16000, 1000)
    assert residual < 0.5


async def test_a_call_control_call_is_answered_streamed_and_hung_up_by_the_gateway() -> None:
    carrier = Carrier("telnyx", "PCMU", "call-control")
    async with running(carrier=carrier) as h:
        call = asyncio.create_task(h.call([Silence(4.0)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=5)
        await asyncio.sleep(0.3)
        h.sim.fail_next_connects(10, code=1011, reason="backend down")
        await h.sim.close(1011, "backend gone")  # Gemini gone for good: the gateway ends the call
        result = await asyncio.wait_for(call, 8)
    actions = result.api_actions()
    assert actions[:2] == ["answer", "streaming_start"]
    assert "speak" in actions  # the fallback apology through Call Control


#: Telnyx streams the caller in the call's own codec where it cannot transcode to the one asked
#: for (it transcodes only PCMU <-> PCMA), and reads the gateway's audio as the codec asked for
#: (carriers/telnyx.py has the sources): (carrier, codec the caller is streamed in).
CALL_CODEC_DIFFERS = [
    (Carrier("telnyx", "G722", call_codec="PCMU"), "PCMU"),
    (Carrier("telnyx", "PCMU", call_codec="PCMA"), "PCMU"),  # transcoded: PCMU both ways
    (Carrier("telnyx", "L16", "call-control", call_codec="PCMU"), "PCMU"),
    (Carrier("telnyx", "G722", "call-control", call_codec="PCMA"), "PCMA"),
]


@pytest.mark.parametrize(("carrier", "streamed"), CALL_CODEC_DIFFERS, ids=str)
async def test_the_agent_is_heard_when_the_calls_codec_differs_from_the_one_asked_for(
    carrier: Carrier, streamed: str, structured_logs: StructuredLogs
) -> None:
    # The simulated Telnyx decodes what the gateway sends as the codec asked for: audio encoded
    # for the codec the caller is streamed in would be noise (or wrongly sized frames) there.
    hz = 6000 if carrier.rate == 16000 else 1000
    steps = [Step(on="text", say="tone", seconds=1.0, tone_hz=hz, level_dbfs=LEVEL)]
    async with running(steps=steps, graph=GREETING, carrier=carrier) as h:
        result = await h.call([Silence(2.4)], linger_s=0.2)
    assert (result.codec, result.bidirectional_codec) == (streamed, carrier.codec)
    _assert_tone_heard(result, carrier, hz)
    differ = structured_logs.events("telnyx.formats_differ")
    if streamed == carrier.codec:
        assert differ == []
    else:
        [logged] = differ
        assert logged["inbound"].startswith(f"{streamed}/8000")
        assert logged["outbound"].startswith(f"{carrier.codec}/16000")


@pytest.mark.parametrize(("carrier", "streamed"), CALL_CODEC_DIFFERS, ids=str)
async def test_the_caller_is_heard_in_the_calls_codec(carrier: Carrier, streamed: str) -> None:
    async with running(carrier=carrier) as h:
        result = await h.call([Silence(0.4), Tone(1000, 1.0, LEVEL), Silence(0.4)], linger_s=0.2)
        received = bytes(h.sim.connections[0].audio_in)
    assert result.codec == streamed
    assert audible_s(received, 16000) == pytest.approx(1.0, abs=0.05)
    steady = steady_part(received, 16000)
    assert dominant_frequency(steady, 16000) == pytest.approx(1000, abs=3)
    assert tone_dbfs(steady, 16000, 1000) == pytest.approx(LEVEL, abs=0.6)
    assert tone_dbfs(steady, 16000, 7000) < LEVEL - 60  # upsampled 8 → 16 kHz, cleanly
