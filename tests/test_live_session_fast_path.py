"""LiveSession with and without the audio fast paths: the same conversation, event for event.

The fast paths (gateway/live/fast_path.py) replace the SDK's handling of audio messages; this
runs one scripted turn through the real SDK against the Live simulator both ways and requires
identical events (kinds, order, audio bytes, transcripts), and identical audio at the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import structlog.testing
from google.genai import types

import gateway.live.session as session_module
from callsim.live.script import Script, Step
from callsim.live.server import LiveSimulator
from callsim.tls import generate_tls
from gateway.agents import Agent
from gateway.live import fast_path
from gateway.live.client import make_client
from gateway.live.session import LiveSession
from gateway.model.events import AgentTranscript, AudioOut, LiveEvent, TurnComplete
from gateway.model.persona import AgentPersona
from gateway.settings import Settings
from tests.harness import agents

TLS = generate_tls()


class _Greeting:
    """Opens with nothing and never needs to reseed (no fault is injected here)."""

    def greeting(self) -> list[types.Content]:
        return []

    def reseed(self) -> list[types.Content]:
        return []

    def recap(self, *, cut_off: bool) -> tuple[list[types.Content], bool]:
        return [], False


def _persona() -> AgentPersona:
    graph = agents()
    agent: Agent = graph.agent(graph.first_stage.agent_id)
    return AgentPersona(agent)


async def _one_turn(fast: bool) -> tuple[list[LiveEvent], bytes, bytes]:
    script = Script([Step(on="text", say="Hello there, how can I help?", seconds=0.5)])
    caller_audio = (np.sin(np.arange(3200) * 0.3) * 8000).astype("<i2").tobytes()
    async with LiveSimulator(tls=TLS, think_ms=5, speed=20.0, script=script) as sim:
        settings = Settings(gemini_api_key="test-key", gemini_base_url=sim.base_url)
        client = make_client(settings, ssl_context=sim.tls.client_context())
        session = LiveSession(client, "gemini-test", _Greeting(), audio_fast_path=fast)
        try:
            await session.open(_persona())
            for i in range(0, len(caller_audio), 640):
                await session.send_audio(caller_audio[i : i + 640])
            await session.send_text("hi")
            events: list[LiveEvent] = []
            while not isinstance(events[-1:] and events[-1], TurnComplete):
                events.append(await session.next_event())
        finally:
            await session.close()
        heard = bytes(sim.connections[0].audio_in)
    audio = b"".join(e.pcm for e in events if isinstance(e, AudioOut))
    return events, audio, heard


def _shape(events: list[LiveEvent]) -> list[str]:
    """Event kinds in order, consecutive audio chunks folded (chunking is not a contract)."""
    out: list[str] = []
    for event in events:
        kind = type(event).__name__
        if not (kind == "AudioOut" and out and out[-1] == kind):
            out.append(kind)
    return out


async def test_fast_and_sdk_paths_give_the_same_conversation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recognised: list[int] = []

    def counting(raw: bytes | str) -> bytes | None:
        pcm = fast_path.model_audio(raw)
        recognised.append(pcm is not None)
        return pcm

    monkeypatch.setattr(session_module, "model_audio", counting)
    fast_events, fast_audio, fast_heard = await _one_turn(fast=True)
    assert sum(recognised) >= 10, "the fast path did not take the audio messages"
    taken = len(recognised)
    sdk_events, sdk_audio, sdk_heard = await _one_turn(fast=False)
    assert len(recognised) == taken, "the SDK path must not go through the fast path"
    assert len(fast_audio) > 16_000  # a real answer came back
    assert fast_audio == sdk_audio
    assert fast_heard == sdk_heard and len(fast_heard) == 6400
    assert _shape(fast_events) == _shape(sdk_events)
    said = "".join(e.text for e in fast_events if isinstance(e, AgentTranscript))
    assert said == "".join(e.text for e in sdk_events if isinstance(e, AgentTranscript))
    assert said.strip() == "Hello there, how can I help?"


async def test_an_sdk_the_fast_paths_do_not_match_gets_the_sdk_path_and_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run-time check fails (here: the builder no longer equals the SDK's output): every
    call still works, through the SDK's own path, and the reason is logged once."""
    monkeypatch.setattr(fast_path, "_verdict", None)
    monkeypatch.setattr(fast_path, "realtime_audio_message", lambda pcm: '{"realtime_input": {}}')
    recognised: list[bool] = []
    monkeypatch.setattr(session_module, "model_audio", lambda raw: recognised.append(True) or None)
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            _events, audio, heard = await _one_turn(fast=True)
            assert len(audio) > 16_000 and len(heard) == 6400
    assert not recognised  # the tap was never installed
    warnings = [e for e in logs if e["event"] == "live.fast_path_disabled"]
    assert len(warnings) == 1 and "differently" in warnings[0]["reason"]
