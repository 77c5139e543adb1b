"""Audio through the whole gateway, both ways, measured with an FFT.

Caller → model: μ-law 8 kHz tones from the caller simulator arrive at the Live simulator as
PCM16 16 kHz; model → caller: 24 kHz tones from the simulator reach the caller as μ-law 8 kHz.
Frequency, level and duration must survive; aliases and images must be ≥ 60 dB down.
"""

from __future__ import annotations

import pytest

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.audio.analysis import dominant_frequency, rms_dbfs, tone_dbfs
from tests.audio_checks import audible_s, steady_part
from tests.harness import running

LEVEL = -12.0


async def test_model_speech_reaches_the_caller_with_pitch_level_and_duration() -> None:
    steps = [Step(on="text", say="tone", seconds=1.0, tone_hz=1000, level_dbfs=LEVEL)]
    graph_greets = {"agent_triage": {"greeting": "Say hello."}}
    from tests.harness import agents

    async with running(steps=steps, graph=agents(**graph_greets)) as h:
        result = await h.call([Silence(2.4)], linger_s=0.2)
    assert result.violations == []
    heard = result.heard_pcm()
    assert audible_s(heard, 8000) == pytest.approx(1.0, abs=0.04)
    steady = steady_part(heard, 8000)
    assert dominant_frequency(steady, 8000) == pytest.approx(1000, abs=3)
    assert tone_dbfs(steady, 8000, 1000) == pytest.approx(LEVEL, abs=0.6)
    # Every outbound message carried whole 20 ms frames.
    assert result.odd_media_sizes == []


@pytest.mark.parametrize(("tone_hz", "alias_hz"), [(6000, 2000), (4500, 3500), (9000, 1000)])
async def test_model_audio_above_the_phone_band_does_not_alias(tone_hz: int, alias_hz: int) -> None:
    steps = [
        Step(on="text", say="reference", seconds=0.8, tone_hz=1000, level_dbfs=LEVEL),
        Step(on="caller", say="alias", seconds=1.0, tone_hz=tone_hz, level_dbfs=LEVEL),
    ]
    from tests.harness import agents

    async with running(steps=steps, graph=agents(agent_triage={"greeting": "Hi."})) as h:
        result = await h.call([Silence(2.0), Tone(300, 0.4), Silence(2.6)], linger_s=0.2)
    heard = result.heard_pcm()
    # The reference tone proves audio flows; the out-of-band tone must leave nothing audible.
    assert tone_dbfs(steady_part(heard[: 2 * 8000 * 2], 8000), 8000, 1000) == pytest.approx(
        LEVEL, abs=0.6
    )
    after = heard[int(2.6 * 8000) * 2 :]
    assert tone_dbfs(after, 8000, alias_hz) < LEVEL - 60
    assert rms_dbfs(after) < LEVEL - 55


async def test_caller_speech_reaches_the_model_with_pitch_level_and_duration() -> None:
    async with running() as h:
        await h.call([Silence(0.5), Tone(1000, 1.0, LEVEL), Silence(0.5)], linger_s=0.2)
        received = bytes(h.sim.connections[0].audio_in)
    assert h.sim.connections[0].realtime_mime_types == ["audio/pcm;rate=16000"]
    assert audible_s(received, 16000) == pytest.approx(1.0, abs=0.04)
    steady = steady_part(received, 16000)
    assert dominant_frequency(steady, 16000) == pytest.approx(1000, abs=3)
    assert tone_dbfs(steady, 16000, 1000) == pytest.approx(LEVEL, abs=0.6)
    assert tone_dbfs(steady, 16000, 7000) < LEVEL - 60  # image of 1 kHz around 4 kHz


async def test_caller_speech_near_the_band_edge_has_no_image() -> None:
    async with running() as h:
        await h.call([Silence(0.3), Tone(3000, 1.0, LEVEL), Silence(0.3)], linger_s=0.2)
        received = bytes(h.sim.connections[0].audio_in)
    steady = steady_part(received, 16000)
    assert tone_dbfs(steady, 16000, 3000) == pytest.approx(LEVEL, abs=0.6)
    assert tone_dbfs(steady, 16000, 5000) < LEVEL - 60
