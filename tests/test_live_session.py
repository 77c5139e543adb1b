"""LiveSession, the machine's driver, through the real SDK against the Live simulator.

What only the driver can get wrong: a send on a connection the server just closed, answers to
tool calls of a connection that was replaced, and events of an old connection reaching the
bridge. Each test works a session directly, as the bridge does, without a phone call around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from callsim.callers.audio import Tone
from callsim.live.model import prompt_text_tokens
from callsim.live.records import ConnectionRecord
from callsim.live.script import Script, Step, ToolCallSpec
from callsim.live.server import LiveSimulator
from callsim.tls import generate_tls
from gateway.agents import Agent
from gateway.live.client import make_client
from gateway.live.session import LiveSession
from gateway.model.events import (
    AudioOut,
    HandleUpdated,
    LiveEvent,
    Reconnected,
    ToolCall,
    TurnComplete,
    UsageReported,
)
from gateway.model.persona import AgentPersona
from gateway.model.turns import Turn
from gateway.settings import Settings
from tests.harness import agents
from tests.servers import next_of

TLS = generate_tls()
FRAME = bytes(640)


class _Conversation:
    def __init__(self, greeting: str = "") -> None:
        self._greeting = greeting

    def greeting(self) -> list[Turn]:
        return [Turn("user", self._greeting)] if self._greeting else []

    def reseed(self, *, until_handle: bool) -> tuple[list[Turn], bool]:
        return [], False

    def recap(self, *, cut_off: bool) -> tuple[list[Turn], bool]:
        return [], False


def _persona() -> AgentPersona:
    graph = agents()
    agent: Agent = graph.agent(graph.first_stage.agent_id)
    return AgentPersona(agent, tuple(graph.targets(graph.first_stage)))


@asynccontextmanager
async def _session(
    steps: list[Step] | None = None, *, greeting: str = "", **sim_options: float
) -> AsyncIterator[tuple[LiveSimulator, LiveSession]]:
    script = Script(steps or [])
    async with LiveSimulator(tls=TLS, think_ms=5, speed=20.0, script=script, **sim_options) as sim:
        settings = Settings(_env_file=None, gemini_api_key="test-key", gemini_base_url=sim.base_url)
        client = make_client(settings, ssl_context=sim.tls.client_context())
        session = LiveSession(client, "gemini-test", _Conversation(greeting))
        try:
            await session.open(_persona())
            yield sim, session
        finally:
            await session.close()


async def test_sends_to_a_connection_the_server_closed_are_kept_for_the_next_one() -> None:
    async with _session() as (sim, session):
        await sim.wait_for_connections(1)
        await sim.close(1011, "internal error")
        await sim.wait_for(lambda: sim.connections[0].closed_at is not None)
        # The consumer has not noticed yet: these sends hit a closed socket and must not raise.
        for _ in range(10):
            await session.send_audio(FRAME)
        await session.send_text("[The caller pressed the 5 key on their phone keypad.]")
        event = await next_of(session, Reconnected)
        assert isinstance(event, Reconnected) and event.reason == "dropped"
        await sim.wait_for(lambda: len(sim.connections) == 2 and sim.connections[1].setup_completed)
        await sim.wait_for(lambda: bool(sim.connections[1].client_contents))
    texts = [
        p["text"]
        for m in sim.connections[1].client_contents
        for t in m["turns"]
        for p in t["parts"]
    ]
    assert any("5 key" in t for t in texts)
    assert len(sim.connections[1].audio_in) >= 10 * len(FRAME)


async def test_a_write_that_fails_before_the_close_is_read_resumes_with_a_replay() -> None:
    """The server closes, and a caller frame's write fails before the consumer reads the
    close (likely in a real call: the caller's audio is written every 20 ms). That is a drop
    like any other: the resumed connection gets the audio sent since the handle again, and
    the greeting, delivered long ago, is not sent twice (the caller would hear it again)."""
    # 20 ms of a 400 Hz tone at 16 kHz: voice, to the gateway and to the simulator's VAD.
    voiced = Tone(400, 0.02).pcm(16_000)
    steps = [Step(on="text", say="hello", seconds=0.05)]
    async with _session(steps, greeting="Greet the caller.") as (sim, session):
        await next_of(session, HandleUpdated)  # the greeting's turn is over, its handle read
        await asyncio.sleep(0.2)  # and played (speech over it would be a barge-in)
        for _ in range(25):  # half a second of a sentence, still going on at the drop
            await session.send_audio(voiced)  # sent, journalled since the handle
        await sim.wait_for(lambda: len(sim.connections[0].audio_in) >= 25 * len(voiced))
        await sim.close(1011, "internal error")
        await sim.wait_for(lambda: sim.connections[0].closed_at is not None)
        await asyncio.sleep(0.05)  # the socket has seen the close: the next write fails
        for _ in range(5):
            await session.send_audio(voiced)
        event = await next_of(session, Reconnected)
        assert isinstance(event, Reconnected) and event.reason == "dropped" and event.resumed
        await sim.wait_for(lambda: len(sim.connections[1].audio_in) >= 30 * len(voiced))
        first, second = sim.connections
    greetings = [c for c in second.client_contents if "Greet the caller." in str(c)]
    assert greetings == []  # said once, on the first connection
    assert [c for c in first.client_contents if "Greet the caller." in str(c)]
    assert [h for h, _ in first.handles_issued] == ["sim-1-1"]  # none since the sentence began
    assert bytes(second.audio_in[: 30 * len(voiced)]) == voiced * 30  # replayed, then the rest


async def test_a_tool_call_of_a_replaced_connection_is_never_answered_on_the_new_one() -> None:
    steps = [
        Step(on="text", say="One moment.", seconds=0.2,
             tool_call=ToolCallSpec("lookup", {"q": "x"}), then_say="Done.", then_seconds=0.2),
    ]  # fmt: skip
    async with _session(steps) as (sim, session):
        await session.send_text("hello")
        call = await next_of(session, ToolCall)
        assert isinstance(call, ToolCall)
        await sim.close(1011, "internal error")
        await next_of(session, Reconnected)
        await session.send_tool_response(call.call_id, call.name, {"ok": True})
        await asyncio.sleep(0.2)
    assert len(sim.connections) == 2
    assert all(not c.tool_responses for c in sim.connections)


async def test_the_second_call_of_a_tool_call_message_is_dropped_after_a_handoff() -> None:
    calls = {
        "toolCall": {
            "functionCalls": [
                {
                    "id": f"call-{n}",
                    "name": "handoff_conversation",
                    "args": {"target": "agent-advisor", "reason": "r", "summary": "s"},
                }
                for n in (1, 2)
            ]
        }
    }
    async with _session() as (sim, session):
        await sim.wait_for_connections(1)
        await sim.inject(calls)
        first = await next_of(session, ToolCall)
        assert isinstance(first, ToolCall) and first.call_id == "call-1"
        await session.send_tool_response(first.call_id, first.name, {"result": "transferred"})
        await session.hand_off(_persona(), lambda resumed: [])
        # Whatever the old connection still had queued (call-2) never reaches the bridge.
        try:
            event: LiveEvent | None = await asyncio.wait_for(session.next_event(), 0.5)
        except TimeoutError:
            event = None
    assert not isinstance(event, ToolCall)
    assert [r["id"] for r in sim.connections[0].tool_responses] == ["call-1"]


async def test_a_keypad_entry_sent_during_a_handoff_reaches_the_new_agent_after_the_takeover() -> (
    None
):
    def texts(conn: ConnectionRecord) -> list[str]:
        turns = [t for m in conn.client_contents for t in m["turns"]]
        return [p["text"] for t in turns for p in t["parts"]] + conn.realtime_texts

    entry = "The caller pressed 5 # on the phone keypad."
    async with _session(setup_delay_ms=400) as (sim, session):
        await sim.wait_for_connections(1)
        takeover = [Turn("user", "[Call transfer] note")]
        handoff = asyncio.create_task(session.hand_off(_persona(), lambda resumed: takeover))
        await sim.wait_for(lambda: len(sim.connections) == 2)  # dialled, still setting up
        await session.send_text(entry)  # the caller typed meanwhile
        await handoff
        await sim.wait_for(lambda: len(texts(sim.connections[1])) == 2)
        first, second = sim.connections
    assert entry not in texts(first)
    assert texts(second) == ["[Call transfer] note", entry]


async def test_each_turn_reports_its_own_usage_as_gemini_counts_it() -> None:
    """``usageMetadata`` is per turn, not a running total: the second answer's output is its
    own audio alone, while its input (the whole context the model processed) has grown."""
    steps = [  # taken in order, one per text turn
        Step(on="text", say="Hi there.", seconds=0.5),
        Step(on="text", say="Hello again, how can I help today?", seconds=1.0),
    ]
    async with _session(steps) as (sim, session):
        await session.send_text("hello")
        first = await next_of(session, UsageReported)
        at_first = _prompt_text_tokens(sim)
        await session.send_text("again")
        second = await next_of(session, UsageReported)
        at_second = _prompt_text_tokens(sim)
    assert isinstance(first, UsageReported) and isinstance(second, UsageReported)
    # The simulator's numbers, as it sent them: 32 tokens a second of audio out; the prompt
    # is the instruction, the tools and the conversation as text (no caller audio was sent).
    assert (first.input_tokens, first.output_tokens) == (at_first, 16)
    assert (second.input_tokens, second.output_tokens) == (at_second, 32)
    assert first.total_tokens == first.input_tokens + first.output_tokens
    assert second.total_tokens == second.input_tokens + second.output_tokens
    assert second.input_tokens > first.input_tokens > 100  # instruction and tools included


async def test_the_connection_offers_no_compression() -> None:
    # websockets offers permessage-deflate by default; a zlib pass per audio frame is not paid.
    async with _session() as (sim, _):
        await sim.wait_for_connections(1)
    (record,) = sim.connections
    assert record.path.endswith("BidiGenerateContent")  # the SDK's own dial, options and all
    assert record.extensions_offered == ""


async def test_usage_riding_on_a_frame_of_model_audio_is_not_lost() -> None:
    """The real service may put ``usageMetadata`` on the frame of other content; one with
    audio must not be taken by the audio fast path, which would drop the usage."""
    audio = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAAAAA=="}}
    frame = {
        "serverContent": {"modelTurn": {"parts": [audio]}, "turnComplete": True},
        "usageMetadata": {"promptTokenCount": 420, "responseTokenCount": 24,
                          "totalTokenCount": 444},
    }  # fmt: skip
    async with _session() as (sim, session):
        await sim.wait_for_connections(1)
        await sim.inject(frame)
        events: list[LiveEvent] = []
        async with asyncio.timeout(5):
            while not events or not isinstance(events[-1], UsageReported):
                events.append(await session.next_event())
    assert [type(e) for e in events] == [AudioOut, TurnComplete, UsageReported]
    assert events[-1] == UsageReported(420, 24, 444)


def _prompt_text_tokens(sim: LiveSimulator) -> int:
    (record,) = sim.connections
    texts = sim.sessions[record.session_id or 0].texts()
    return prompt_text_tokens(record.system_instruction, record.function_declarations, texts)
