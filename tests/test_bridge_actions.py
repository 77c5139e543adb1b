"""Agents that act, in the bridge alone: end_call, transfer_call, HTTP tools, keypad entries
and the quiet-line watch, over the fake carrier socket and model session of test_bridge.

The carrier actions are the hooks a route would give (recorded here); what each carrier's API
receives is tested end to end in test_e2e_actions.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import gateway.call.actions as actions_module
from gateway.agents import parse_agents
from gateway.audio import g711
from gateway.call.hooks import CallActionError
from gateway.call.http_tools import ToolOutcome
from gateway.call.tools import END_CALL_ACCEPTED, TRANSFER_DONE
from gateway.carriers.base import StreamStarted
from gateway.model.events import (
    AudioOut,
    Interrupted,
    Reconnected,
    ToolCall,
    ToolCallCancelled,
    TurnComplete,
)
from tests.servers import until
from tests.test_bridge import MULAW_FRAME_BYTES, begin, mark, media, stop, tone

AGENTS_YAML = """
tools:
  - name: lookup_order
    description: Look up an order.
    parameters: {type: object, properties: {order_id: {type: string}}, required: [order_id]}
    url: https://orders.example.com/lookup
agents:
  - id: agent-support
    role: Support agent
    system_prompt: "Help {{caller_number}} on {{carrier}}. {{nobody}} {\\"json\\": 1}"
    greeting: "Greet {{caller_number}}."
    tools: [end_call, transfer_call, lookup_order]
    transfers: {billing: "+15551234567", desk: "sip:desk@pbx.example.com"}
  - id: agent-sales
    role: Sales agent
    system_prompt: Sell.
    tools: [end_call]
pipeline:
  - {phase: support, agent_id: agent-support, next: sales}
  - {phase: sales, agent_id: agent-sales}
routes:
  - {number: "+15550009999", phase: sales}
"""
GRAPH = parse_agents(AGENTS_YAML)


class Recorder:
    """The carrier-action hooks, recording their calls and the socket's state at that time."""

    def __init__(self, *, transfer_error: str | None = None) -> None:
        self.ended: list[str] = []
        self.transfers: list[str] = []
        self._transfer_error = transfer_error

    async def end_call(self, started: StreamStarted) -> None:
        self.ended.append(started.call_id)

    async def transfer(self, started: StreamStarted, destination: str) -> None:
        if self._transfer_error is not None:
            raise CallActionError(self._transfer_error)
        self.transfers.append(destination)

    def hooks(self) -> dict[str, Any]:
        return {"end_call": self.end_call, "transfer": self.transfer}


class FakeRunner:
    """An HTTP tool runner that answers when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str, str]] = []
        self.release = asyncio.Event()
        self.cancelled = 0

    async def run(
        self, tool: Any, arguments: Mapping[str, Any], *, call_id: str, agent_id: str
    ) -> ToolOutcome:
        self.calls.append((tool.name, dict(arguments), call_id, agent_id))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ToolOutcome({"status": "shipped"}, ok=True, ms=3.0, status=200)


def marks_sent(call: Any) -> list[str]:
    return [m["mark"]["name"] for m in call.socket.events("mark")]


async def test_end_call_lets_the_goodbye_play_then_ends_the_call_at_the_carrier() -> None:
    actions = Recorder()
    call = begin(graph=GRAPH, hooks=actions.hooks())
    await call.connected()
    call.session.push(AudioOut(tone(100)), ToolCall("c1", "end_call", {"reason": "all done"}))
    await call.session.until(lambda: call.session.tool_responses)
    assert call.session.tool_responses == [("c1", "end_call", END_CALL_ACCEPTED)]
    call.session.push(AudioOut(tone(100)), TurnComplete())  # the goodbye, after the answer
    await call.socket.until(lambda: any(n.startswith("played-") for n in marks_sent(call)))
    await asyncio.sleep(0.05)
    assert not call.task.done()  # the goodbye has not been heard yet
    for name in marks_sent(call):
        call.socket.feed(mark(name))
    assert await call.ended() == "agent_ended"
    assert actions.ended == [call.bridge._started.call_id]  # type: ignore[union-attr]
    assert call.hang_ups == []  # the end_call hook ended it
    assert call.fallbacks == []  # and no apology
    assert call.event("call.end_requested")["reason"] == "all done"


async def test_end_call_gives_up_waiting_for_an_echo_after_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(actions_module, "FAREWELL_MAX_S", 0.2)
    actions = Recorder()
    call = begin(graph=GRAPH, hooks=actions.hooks())
    await call.connected()
    call.session.push(ToolCall("c1", "end_call", {"reason": "bye"}), AudioOut(tone(60)))
    call.session.push(TurnComplete())  # and the carrier never echoes the mark
    assert await call.ended() == "agent_ended"
    assert actions.ended


async def test_a_tool_the_agent_does_not_have_is_an_error_answer() -> None:
    call = begin(graph=GRAPH)
    await call.connected()
    call.session.push(ToolCall("c1", "transfer_call", {"destination": "nowhere", "reason": "x"}))
    await call.session.until(lambda: call.session.tool_responses)
    ((_, _, response),) = call.session.tool_responses
    assert "billing, desk" in response["error"]
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_transfer_waits_for_the_notice_then_leaves_the_call() -> None:
    actions = Recorder()
    call = begin(graph=GRAPH, hooks=actions.hooks())
    await call.connected()
    call.session.push(
        AudioOut(tone(100)), ToolCall("t1", "transfer_call", {"destination": "desk", "reason": "r"})
    )
    await call.socket.until(lambda: any(n.startswith("played-") for n in marks_sent(call)))
    await asyncio.sleep(0.05)
    assert actions.transfers == [] and call.session.tool_responses == []  # notice still playing
    for name in marks_sent(call):
        call.socket.feed(mark(name))
    assert await call.ended() == "transferred"
    assert actions.transfers == ["sip:desk@pbx.example.com"]
    assert call.session.tool_responses == [("t1", "transfer_call", TRANSFER_DONE)]
    assert call.hang_ups == [] and call.fallbacks == []
    assert call.event("call.transferred")["to"] == "desk"


async def test_a_failed_transfer_is_told_to_the_model_and_the_call_goes_on() -> None:
    actions = Recorder(transfer_error="the line is busy")
    call = begin(graph=GRAPH, hooks=actions.hooks())
    await call.connected()
    call.session.push(ToolCall("t1", "transfer_call", {"destination": "billing", "reason": "r"}))
    await call.socket.until(lambda: marks_sent(call))
    call.socket.feed(mark(marks_sent(call)[-1]))
    await call.session.until(lambda: call.session.tool_responses)
    ((_, _, response),) = call.session.tool_responses
    assert "the line is busy" in response["error"]
    call.socket.feed(media())  # the caller is still connected to the agent
    await call.session.until(lambda: call.session.audio_sent)
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_an_http_tool_runs_while_caller_audio_keeps_flowing() -> None:
    runner = FakeRunner()
    call = begin(graph=GRAPH, tool_runner=runner)
    await call.connected()
    call.session.push(ToolCall("h1", "lookup_order", {"order_id": "A17"}))
    await until(lambda: runner.calls)
    assert runner.calls == [("lookup_order", {"order_id": "A17"}, call.bridge.events.call_id,
                             "agent-support")]  # fmt: skip
    call.socket.feed(*(media(seq=2 + i) for i in range(10)))
    await call.session.until(lambda: len(call.session.audio_sent) == 10)  # not stalled by the tool
    assert call.session.tool_responses == []
    runner.release.set()
    await call.session.until(lambda: call.session.tool_responses)
    assert call.session.tool_responses == [("h1", "lookup_order", {"status": "shipped"})]
    done = call.event("tool.completed")
    assert (done["tool"], done["ok"]) == ("lookup_order", True)
    assert done["arguments"] == {"order_id": "A17"}
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_a_running_tool_is_cancelled_by_a_reconnect_and_by_the_end_of_the_call() -> None:
    runner = FakeRunner()
    call = begin(graph=GRAPH, tool_runner=runner)
    await call.connected()
    call.session.push(ToolCall("h1", "lookup_order", {"order_id": "1"}))
    await until(lambda: runner.calls)
    call.session.push(Reconnected("drop", resumed=True, elapsed_ms=5.0))
    await call.observed.until(lambda: "tool.cancelled" in call.names())
    assert runner.cancelled == 1
    call.session.push(ToolCall("h2", "lookup_order", {"order_id": "2"}))
    await until(lambda: len(runner.calls) == 2)
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert runner.cancelled == 2
    assert call.session.tool_responses == []  # no late answers


async def test_a_route_picks_the_first_agent_and_variables_fill_its_prompt() -> None:
    call = begin(graph=GRAPH)
    await call.connected()
    persona = call.session.opened[0]
    assert persona.agent.id == "agent-support"  # +15550001111 called no routed number
    assert persona.variables["caller_number"] == "+15550001111"
    assert persona.variables["carrier"] == "twilio"
    assert [t.name for t in persona.http_tools] == ["lookup_order"]
    assert call.session.conversation is not None
    (greeting,) = call.session.conversation.greeting()
    assert greeting.text == "Greet +15550001111."
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_a_quiet_line_is_checked_on_then_ended_after_a_goodbye() -> None:
    actions = Recorder()
    call = begin(graph=GRAPH, hooks=actions.hooks(), idle_prompt_s=0.3, idle_hangup_s=0.3)
    await call.connected()
    await call.session.until(lambda: call.session.texts)
    assert "still there" in call.session.texts[0]
    assert "call.idle_check_in" in call.names()
    await call.session.until(lambda: len(call.session.texts) == 2)
    assert "goodbye" in call.session.texts[1]
    call.session.push(AudioOut(tone(60)), TurnComplete())
    await call.socket.until(lambda: any(n.startswith("played-") for n in marks_sent(call)))
    for name in marks_sent(call):
        call.socket.feed(mark(name))
    assert await call.ended() == "idle_ended"
    assert actions.ended


async def test_a_caller_who_speaks_is_not_checked_on_until_the_line_goes_quiet() -> None:
    call = begin(graph=GRAPH, idle_prompt_s=0.3, idle_hangup_s=5.0)
    await call.connected()
    t = np.arange(MULAW_FRAME_BYTES) / 8000
    voice = g711.ulaw_encode((8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes())
    for seq in range(2, 2 + 60):  # 1.2 s of voice, at the pace of a phone
        call.socket.feed(media(voice, seq))
        await asyncio.sleep(0.02)
    assert call.session.texts == []  # the watch looked twice meanwhile, and heard the caller
    await call.session.until(lambda: call.session.texts)  # quiet now: checked on
    assert "still there" in call.session.texts[0]
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_a_caller_who_hangs_up_during_the_transfer_notice_is_not_transferred() -> None:
    actions = Recorder()
    call = begin(graph=GRAPH, hooks=actions.hooks())
    await call.connected()
    call.session.push(
        AudioOut(tone(500)), ToolCall("t1", "transfer_call", {"destination": "desk", "reason": "r"})
    )
    await call.socket.until(lambda: marks_sent(call))
    call.socket.feed(stop())  # gone before the notice was heard: no echo will come
    assert await call.ended() == "caller_hung_up"  # at once, not after the 10 s cap
    assert actions.transfers == []
    assert call.hang_ups == []


async def test_a_handoff_or_a_cancellation_stops_the_tools_it_concerns() -> None:
    runner = FakeRunner()
    call = begin(graph=GRAPH, tool_runner=runner)
    await call.connected()
    call.session.push(
        ToolCall("h1", "lookup_order", {"order_id": "1"}),
        ToolCall("h2", "lookup_order", {"order_id": "2"}),
    )
    await until(lambda: len(runner.calls) == 2)
    call.session.push(ToolCallCancelled(("h1",)))  # Gemini no longer wants h1's answer
    await until(lambda: runner.cancelled == 1)
    call.session.push(
        ToolCall("x", "handoff_conversation", {"target": "agent-sales", "reason": "r",
                                               "summary": "s"})
    )  # fmt: skip
    await until(lambda: runner.cancelled == 2)
    assert call.session.actions[-1] == ("hand_off", "agent-sales")
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert [name for _, name, _ in call.session.tool_responses] == ["handoff_conversation"]


async def test_barge_in_during_the_goodbye_does_not_hold_the_end() -> None:
    actions = Recorder()
    call = begin(graph=GRAPH, hooks=actions.hooks())
    await call.connected()
    call.session.push(ToolCall("c1", "end_call", {"reason": "done"}), AudioOut(tone(2000)))
    call.session.push(TurnComplete())
    await until(lambda: call.bridge._mark_waiters)  # waiting for 2 s of goodbye to play
    call.session.push(Interrupted())  # the caller talks over it: its mark is never played
    assert await call.ended() == "agent_ended"
    assert actions.ended


def test_start_up_names_the_keys_agent_actions_need() -> None:
    from gateway.settings import Settings
    from gateway.startup import call_action_gaps

    bare = Settings(_env_file=None)
    gaps = call_action_gaps(bare, GRAPH)
    assert [gap.split(":")[0] for gap in gaps] == ["Twilio", "Telnyx"]
    assert "end_call and transfer_call need TWILIO_AUTH_TOKEN" in gaps[0]
    keyed = Settings(_env_file=None, twilio_auth_token="t" * 32, telnyx_api_key="KEY")
    assert call_action_gaps(keyed, GRAPH) == []
    text = AGENTS_YAML.replace("[end_call, transfer_call, lookup_order]", "[lookup_order]")
    plain = parse_agents(text.replace("[end_call]", "[]"))
    assert call_action_gaps(bare, plain) == []


async def test_barge_in_still_clears_playback_while_a_tool_runs() -> None:
    runner = FakeRunner()
    call = begin(graph=GRAPH, tool_runner=runner)
    await call.connected()
    call.session.push(AudioOut(tone(1000)), ToolCall("h1", "lookup_order", {"order_id": "1"}))
    await until(lambda: runner.calls)
    call.session.push(Interrupted())  # the caller talks over "let me check"
    await call.socket.until(lambda: call.socket.events("clear"))
    runner.release.set()
    await call.session.until(lambda: call.session.tool_responses)  # and the tool still answers
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
