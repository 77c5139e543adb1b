"""LiveSession with and without the audio fast paths: the same conversation, event for event.

The fast paths (gateway/live/fast_path.py) replace the SDK's handling of audio messages; this
runs one scripted turn through the real SDK against the Live simulator both ways and requires
identical events (kinds, order, audio bytes, transcripts), and identical audio at the model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

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


async def _one_turn(
    fast: bool, lane: Callable[[AudioOut], None] | None = None
) -> tuple[list[LiveEvent], bytes, bytes]:
    """One turn; with ``lane``, offered as the audio lane, whose events join the consumer's
    in the order it sees them (``lane`` is called first, and may raise)."""
    script = Script([Step(on="text", say="Hello there, how can I help?", seconds=0.5)])
    caller_audio = (np.sin(np.arange(3200) * 0.3) * 8000).astype("<i2").tobytes()
    async with LiveSimulator(tls=TLS, think_ms=5, speed=20.0, script=script) as sim:
        settings = Settings(gemini_api_key="test-key", gemini_base_url=sim.base_url)
        client = make_client(settings, ssl_context=sim.tls.client_context())
        session = LiveSession(client, "gemini-test", _Greeting(), audio_fast_path=fast)
        try:
            events: list[LiveEvent] = []
            if lane is not None:

                def take(event: AudioOut) -> None:
                    lane(event)
                    events.append(event)

                session.offer_audio_lane(take)
            await session.open(_persona())
            for i in range(0, len(caller_audio), 640):
                await session.send_audio(caller_audio[i : i + 640])
            await session.send_text("hi")
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


async def test_audio_taken_by_the_lane_keeps_the_conversation_and_its_order() -> None:
    """Model audio handed over from the socket's read (offer_audio_lane): the same events
    in the same order as through the SDK, and the lane did take the audio."""
    taken: list[AudioOut] = []
    lane_events, lane_audio, lane_heard = await _one_turn(fast=True, lane=taken.append)
    sdk_events, sdk_audio, sdk_heard = await _one_turn(fast=False)
    assert len(taken) >= 5, "the lane took no audio"
    assert lane_audio == sdk_audio and len(lane_audio) > 16_000
    assert lane_heard == sdk_heard
    assert _shape(lane_events) == _shape(sdk_events)


async def test_a_lane_handler_that_raises_is_withdrawn_and_nothing_is_lost() -> None:
    calls: list[AudioOut] = []

    def broken(event: AudioOut) -> None:
        calls.append(event)
        raise RuntimeError("a bug in the consumer")

    with structlog.testing.capture_logs() as logs:
        events, audio, _heard = await _one_turn(fast=True, lane=broken)
    _sdk_events, sdk_audio, _ = await _one_turn(fast=False)
    assert len(calls) == 1  # tried once, then withdrawn
    assert audio == sdk_audio  # the message it failed on came through next_event
    assert _shape(events) == _shape(_sdk_events)
    assert [e["event"] for e in logs].count("live.audio_lane_failed") == 1


async def test_the_lane_opens_only_while_the_consumer_waits_with_nothing_ahead() -> None:
    """The lane's conditions, one at a time, on a real session whose machine has a current
    connection (no socket needed: _lane_open is what the tap asks before it parses)."""
    settings = Settings(gemini_api_key="test-key", gemini_base_url="https://127.0.0.1:9")
    session = LiveSession(make_client(settings), "gemini-test", _Greeting())
    generation = session.machine.start().generation
    session.machine.opened(resumed=False, now=0.0)
    assert not session._lane_open(generation)  # no lane offered
    session.offer_audio_lane(lambda event: None)
    assert not session._lane_open(generation)  # nobody waits in next_event
    consumer = asyncio.create_task(session.next_event())
    await asyncio.sleep(0)
    assert session._lane_open(generation)
    assert not session._lane_open(generation + 1)  # not the current connection
    session._events.put_nowait((generation, AgentTranscript("first")))
    # Queued, the consumer not yet run: audio now must queue behind the transcript.
    assert not session._lane_open(generation)
    assert await consumer == AgentTranscript("first")
    assert not session._lane_open(generation)
    session.offer_audio_lane(None)
    consumer = asyncio.create_task(session.next_event())
    await asyncio.sleep(0)
    assert not session._lane_open(generation)  # withdrawn
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    assert not session._consumer_waiting
