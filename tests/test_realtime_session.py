"""RealtimeSession against the Realtime simulator through the real openai SDK, no call around it.

What these pin down is the session's own bookkeeping, which the end-to-end calls only show
indirectly: answers wait for the response in progress, held caller audio reaches the next
connection, a cancelled open leaves no connection or task behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from callsim.live.script import Script, Step, ToolCallSpec
from callsim.realtime.server import RealtimeSimulator
from callsim.tls import generate_tls
from gateway.audio.transcode import PCMU_8K
from gateway.model.events import Reconnected, ToolCall, TurnComplete
from gateway.model.persona import AgentPersona
from gateway.model.session import ModelConnectError
from gateway.model.turns import Turn
from gateway.model.websocket import websocket_options
from gateway.realtime.client import make_openai_client
from gateway.realtime.session import RealtimeSession
from gateway.settings import Settings
from tests.harness import agents
from tests.servers import next_of

TLS = generate_tls()
FRAME = b"\xff" * 160  # 20 ms of μ-law silence


class _Conversation:
    def __init__(self, greeting: str = "") -> None:
        self._greeting = greeting

    def greeting(self) -> list[Turn]:
        return [Turn("user", self._greeting)] if self._greeting else []

    def reseed(self, *, until_handle: bool) -> tuple[list[Turn], bool]:
        return [Turn("model", "Hello."), Turn("user", "carry on")], True

    def recap(self, *, cut_off: bool) -> tuple[list[Turn], bool]:
        return [], False


def _persona() -> AgentPersona:
    graph = agents(provider="openai")
    stage = graph.first_stage
    return AgentPersona(graph.agent(stage.agent_id), tuple(graph.targets(stage)))


@asynccontextmanager
async def _simulator(steps: list[Step] | None = None) -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(
        tls=TLS, think_ms=5, speed=20.0, script=Script(steps or [])
    ) as sim:
        yield sim


def _session(sim: RealtimeSimulator, greeting: str = "") -> RealtimeSession:
    settings = Settings(_env_file=None, openai_api_key="test-key", openai_base_url=sim.base_url)
    return RealtimeSession(
        make_openai_client(settings),
        "gpt-realtime-2.1",
        _Conversation(greeting),
        PCMU_8K,
        websocket_options=websocket_options(settings, ssl_context=sim.tls.client_context()),
    )


async def test_a_text_turn_during_an_answer_waits_for_its_end() -> None:
    """A response.create while a response is active is refused by the service."""
    steps = [Step(on="text", say="a long greeting", seconds=1.0), Step(on="text", say="ok")]
    async with _simulator(steps) as sim:
        session = _session(sim, greeting="Greet the caller.")
        try:
            await session.open(_persona())
            conn = sim.connections[0]
            await sim.wait_for(lambda: conn.responses)
            await session.send_text("The caller pressed 5 on the phone keypad.")
            await next_of(session, TurnComplete)
            await next_of(session, TurnComplete)
        finally:
            await session.close()
    assert [r.status for r in conn.responses] == ["completed", "completed"]
    assert conn.errors_sent == []


async def test_the_answer_to_a_call_waits_for_every_call_of_its_response() -> None:
    steps = [
        Step(on="text", say="One moment.", tool_call=ToolCallSpec("lookup", {"id": "7"})),
    ]
    async with _simulator(steps) as sim:
        session = _session(sim, greeting="Greet.")
        try:
            await session.open(_persona())
            call = await next_of(session, ToolCall)
            assert isinstance(call, ToolCall) and call.name == "lookup"
            conn = sim.connections[0]
            responses = len(conn.responses)
            await session.send_tool_response(call.call_id, call.name, {"ok": True}, respond=False)
            await asyncio.sleep(0.2)
            assert len(conn.responses) == responses  # told not to answer: no response.create
            # An answer for a call this connection never made is dropped.
            await session.send_tool_response("call_unknown", "lookup", {"ok": True})
            await asyncio.sleep(0.1)
        finally:
            await session.close()
    outputs = [i for i in conn.items if i.type == "function_call_output"]
    assert [o.call_id for o in outputs] == [call.call_id]


async def test_caller_audio_and_keys_of_a_reconnect_reach_the_new_session() -> None:
    async with _simulator() as sim:
        session = _session(sim)
        try:
            await session.open(_persona())
            for _ in range(5):
                await session.send_audio(FRAME)
            await sim.close(1011, "internal error")
            await sim.wait_for(lambda: sim.connections[0].closed_at is not None)
            for _ in range(10):  # the session has not noticed yet: held, not lost
                await session.send_audio(b"\x7f" * 160)
            await session.send_text("The caller pressed 5 on the phone keypad.")
            event = await next_of(session, Reconnected)
            assert isinstance(event, Reconnected) and event.reason == "dropped"
            await sim.wait_for(lambda: len(sim.connections[1].audio_in) >= 1600)
        finally:
            await session.close()
    old, new = sim.connections
    assert bytes(old.audio_in) == FRAME * 5
    assert bytes(new.audio_in) == b"\x7f" * 1600
    assert session.audio_dropped_ms == 0
    # The new session was told the conversation, then asked to carry on.
    assert [(i.role, i.text) for i in new.items if i.source == "client"] == [
        ("assistant", "Hello."),
        ("user", "carry on"),
        ("user", "The caller pressed 5 on the phone keypad."),
    ]


async def test_a_cancelled_open_leaves_no_connection_and_no_task() -> None:
    async with _simulator() as sim:
        before = asyncio.all_tasks()
        session = _session(sim)
        opening = asyncio.create_task(session.open(_persona()))
        await sim.wait_for(lambda: sim.connections)
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        await session.close()
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()


async def test_a_refused_upgrade_is_permanent_and_a_busy_one_is_retried() -> None:
    async with _simulator() as sim:
        sim.fail_next_connects(1, status=503)
        session = _session(sim)
        try:
            kept, _ = await session.open(_persona())
            assert not kept
            assert len(sim.connections) == 1
        finally:
            await session.close()
        sim.fail_next_connects(3, status=403)
        session = _session(sim)
        try:
            with pytest.raises(ModelConnectError, match="403") as refused:
                await session.open(_persona())
        finally:
            await session.close()
        assert refused.value.permanent
    assert [status for status, _ in sim.refused] == [503, 403]  # the 403 was not retried
