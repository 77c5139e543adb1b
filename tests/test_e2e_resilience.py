"""Model-side faults, injected through the Live simulator's hooks, survived or ended politely.

For each fault: what the caller hears, that the conversation continues with the right agent
and handle, and how much caller audio was lost.
"""

from __future__ import annotations

import asyncio

import pytest

from callsim.callers.audio import Silence, Tone
from callsim.callers.result import CallResult
from callsim.live.script import Step, ToolCallSpec
from callsim.twilio.api import TwilioApiSimulator
from tests.conftest import StructuredLogs
from tests.harness import Harness, agents, running, serving

GREETING = agents(agent_triage={"greeting": "Greet the caller."})
TRIAGE = "Role: Triage receptionist"
ADVISOR = "Role: Portfolio advisor"
FRAME_PCM16K = 640  # bytes of PCM16 16 kHz per 20 ms frame


def _lost_ms(h: Harness, result: CallResult) -> float:
    """Caller audio sent but never received by any Live connection, in ms."""
    sent = sum(1 for _, m in result.sent if m.get("event") == "media")
    received = sum(len(c.audio_in) for c in h.sim.connections)
    return (sent * FRAME_PCM16K - received) / FRAME_PCM16K * 20


async def _wait_turn_complete(h: Harness, index: int, count: int = 1) -> None:
    await h.sim.wait_for(
        lambda: (
            len(h.sim.connections) > index
            and len(h.sim.connections[index].sent_times("turnComplete")) >= count
        ),
        timeout=5,
    )
    await asyncio.sleep(0.1)  # the handle follows turnComplete


async def test_go_away_mid_turn_moves_to_a_new_connection_without_losing_the_caller() -> None:
    steps = [Step(on="text", say="a long greeting", seconds=3.0)]
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(h.call([Silence(6.0)], linger_s=0.2))
        await h.sim.wait_for(lambda: bool(h.sim.connections) and bool(
            h.sim.connections[0].sent_times("audio")), timeout=3)  # fmt: skip
        await h.sim.go_away(time_left="20s")  # mid-turn: the move waits for the turn to end
        result = await call
        conns = h.sim.connections
        session = h.sim.sessions[conns[0].session_id or 0]
    assert len(conns) == 2
    assert conns[1].resumed and conns[1].handle_requested == session.handles[0]
    assert conns[1].voice == conns[0].voice == "Aoede"
    assert conns[1].system_instruction == conns[0].system_instruction
    assert conns[0].closed_by == "client"
    # The greeting was not cut: it ended before the move (3 s of audio heard, not less).
    assert conns[0].sent_times("turnComplete")[0] <= (conns[0].closed_at or 0)
    (event,) = h.named("live.reconnected")
    assert event["reason"] == "goaway" and event["resumed"] is True
    assert _lost_ms(h, result) <= 150
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "caller_hung_up"


async def test_go_away_with_a_silent_server_moves_before_the_deadline() -> None:
    async with running() as h:
        call = asyncio.create_task(h.call([Silence(4.0)], linger_s=0.2))
        await h.sim.wait_for_connections(1, timeout=3)
        await asyncio.sleep(0.3)
        await h.sim.go_away(time_left="3s", close_after=3.0)
        result = await call
        conns = h.sim.connections
    assert len(conns) == 2
    assert conns[0].closed_by == "client"  # the gateway moved before the server cut it
    assert conns[1].opened_at - conns[0].opened_at < 3.0
    assert _lost_ms(h, result) <= 150


async def test_a_1011_mid_response_is_resumed_and_the_conversation_continues() -> None:
    steps = [
        Step(on="text", say="hello there", seconds=1.0),
        Step(on="caller", when=TRIAGE, hear="What are your hours?", say="Nine to five.",
             seconds=0.8),
    ]  # fmt: skip
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(
            h.call([Silence(3.0), Tone(300, 0.6), Silence(2.5)], linger_s=0.2)
        )
        await _wait_turn_complete(h, 0)
        # Now cut the connection in the middle of the next response (after the caller asks).
        await h.sim.wait_for(lambda: len(h.sim.connections[0].sent_times("audio")) > 30, 6)
        await h.sim.close(1011, "internal error")
        result = await call
        conns = h.sim.connections
        session = h.sim.sessions[conns[0].session_id or 0]
    assert len(conns) == 2 and conns[1].resumed
    (event,) = h.named("live.reconnected")
    assert event["reason"] == "dropped" and event["ms"] < 2000
    assert "1011" in event["detail"]
    assert _lost_ms(h, result) <= 150
    assert len(session.connection_indexes) == 2  # one conversation across both connections


async def test_a_drop_during_a_handoff_is_retried() -> None:
    steps = [
        Step(on="caller", when=TRIAGE, hear="advice please", say="Transferring.", seconds=0.4,
             tool_call=ToolCallSpec("handoff_conversation", {"target": "agent-advisor",
                                    "reason": "advice", "summary": "wants advice"})),
        Step(on="text", when=ADVISOR, say="Advisor here.", seconds=0.6),
    ]  # fmt: skip
    async with running(steps=steps) as h:
        call = asyncio.create_task(h.call([Silence(0.4), Tone(300, 0.5), Silence(3.0)]))
        await h.sim.wait_for(lambda: bool(h.sim.connections) and bool(
            h.sim.connections[0].sent_times("", kind="toolCall")), timeout=5)  # fmt: skip
        h.sim.fail_next_connects(1, code=1011, reason="backend overloaded")
        await call
        conns = h.sim.connections
    assert len(conns) == 3
    assert conns[1].injected_failure and not conns[2].injected_failure
    assert conns[2].voice == "Charon" and conns[2].setup_completed
    (done,) = h.named("handoff.completed")
    assert done["to_agent"] == "agent-advisor"


async def test_a_rejected_handle_becomes_a_fresh_session_seeded_from_the_transcript() -> None:
    steps = [
        Step(on="text", say="hello", seconds=0.6),
        Step(on="caller", when=TRIAGE, hear="I'd like to open an account.", say="Sure.",
             seconds=0.5),
    ]  # fmt: skip
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(
            h.call([Silence(1.5), Tone(300, 0.5), Silence(3.0)], linger_s=0.2)
        )
        await _wait_turn_complete(h, 0, count=2)
        h.sim.forget_handles()
        await h.sim.close(1011, "internal error")
        await call
        conns = h.sim.connections
    fresh = conns[-1]
    assert any(c.handle_requested for c in conns[1:])  # the resume was tried first…
    assert not fresh.resumed and fresh.handle_requested is None  # …then a fresh session
    seeded = " ".join(
        p["text"] for c in fresh.client_contents for t in c["turns"] for p in t["parts"]
    )
    assert "I'd like to open an account." in seeded
    (event,) = h.named("live.reconnected")
    assert event["resumed"] is False


async def test_a_permanent_failure_ends_the_call_with_the_active_agents_fallback() -> None:
    fake = TwilioApiSimulator(auth_token="twilio-auth-token-1234")
    graph = agents(agent_triage={"fallback": {"say": "Our assistant is unavailable, sorry."}})
    async with (
        serving(fake.app) as twilio_api,
        running(
            graph=graph,
            twilio_account_sid="AC" + "0" * 32,
            twilio_auth_token="twilio-auth-token-1234",
            twilio_api_base=twilio_api,
        ) as h,
    ):
        call = asyncio.create_task(
            h.call([Silence(4.0)], linger_s=0.1, auth_token="twilio-auth-token-1234")
        )
        await h.sim.wait_for_connections(1, timeout=3)
        await asyncio.sleep(0.2)
        h.sim.fail_next_connects(10, code=1011, reason="down")
        await h.sim.close(1011, "backend gone")
        result = await asyncio.wait_for(call, 10)
    assert result.closed_by == "gateway"
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "model_ended"
    (update,) = fake.requests
    assert update.path.endswith(f"/Calls/{result.call_sid}.json")
    assert update.auth == "Basic AC" + "0" * 32
    assert update.body["Twiml"] == (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        "<Say>Our assistant is unavailable, sorry.</Say><Hangup/></Response>"
    )


@pytest.mark.parametrize("code", [1007, 1008])
async def test_a_refused_first_setup_is_permanent(code: int) -> None:
    """A bad key, model or config: the first setup of the call is refused, nothing is retried."""
    async with running() as h:
        h.sim.fail_next_connects(5, code=code, reason="refused")
        result = await asyncio.wait_for(h.call([Silence(2.0)], linger_s=0.1), 5)
    assert result.closed_by == "gateway"
    assert len(h.sim.connections) == 1  # no retry loop against a bad key
    assert h.named("call.ended")[0]["reason"] == "model_unavailable"


@pytest.mark.parametrize("code", [1007, 1008])
async def test_a_mid_call_policy_close_is_resumed_and_the_call_continues(code: int) -> None:
    async with running() as h:
        call = asyncio.create_task(h.call([Silence(3.0)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=3)
        await asyncio.sleep(0.2)
        await h.sim.close(code, "The operation was aborted")
        result = await asyncio.wait_for(call, 6)
        conns = h.sim.connections
    assert result.closed_by == "caller"  # the call went on to its natural end
    assert len(conns) == 2 and conns[1].setup_completed
    (event,) = h.named("live.reconnected")
    assert event["reason"] == "dropped" and str(code) in event["detail"]
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"


async def test_repeated_policy_closes_resume_then_reseed_then_end_with_the_fallback() -> None:
    steps = [Step(on="text", say="hello", seconds=0.3)]
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(h.call([Silence(6.0)], linger_s=0.1))
        await _wait_turn_complete(h, 0)  # the greeting is over and a handle was issued
        for n in (1, 2, 3):
            await h.sim.wait_for(
                lambda n=n: len([c for c in h.sim.connections if c.setup_completed]) >= n, 5
            )
            await asyncio.sleep(0.3)
            await h.sim.close(1008, "The operation was aborted")
        result = await asyncio.wait_for(call, 8)
        conns = h.sim.connections
    assert len(conns) == 3
    assert conns[1].resumed  # first: one resume attempt
    assert not conns[2].resumed and conns[2].handle_requested is None  # then a fresh session
    assert result.closed_by == "gateway"  # then the end, politely
    assert h.named("call.ended")[0]["reason"] == "model_ended"


async def test_a_drop_right_as_the_model_calls_the_handoff_tool_is_survived() -> None:
    steps = [
        Step(on="caller", when=TRIAGE, hear="advice please", say="One moment.", seconds=0.4,
             tool_call=ToolCallSpec("handoff_conversation", {"target": "agent-advisor",
                                    "reason": "advice", "summary": "wants advice"})),
        Step(on="text", when=ADVISOR, say="Advisor here.", seconds=0.6),
    ]  # fmt: skip
    async with running(steps=steps) as h:
        call = asyncio.create_task(h.call([Silence(0.4), Tone(300, 0.5), Silence(3.0)]))
        await h.sim.wait_for(lambda: bool(h.sim.connections) and bool(
            h.sim.connections[0].sent_times("", kind="toolCall")), timeout=5)  # fmt: skip
        await h.sim.close(1011, "backend fault", which="all")
        result = await call
        conns = h.sim.connections
    assert result.closed_by == "caller"  # the call went on to its natural end
    assert conns[-1].voice == "Charon" and conns[-1].setup_completed  # with the new agent
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"


async def test_a_1008_right_after_setup_while_the_greeting_is_sent_is_survived(
    structured_logs: StructuredLogs,
) -> None:
    steps = [Step(on="text", say="hello", seconds=0.3)]
    async with running(steps=steps, graph=GREETING) as h:
        h.sim.fail_next_connects(1, code=1008, reason="The operation was aborted", after_setup=True)
        result = await asyncio.wait_for(h.call([Silence(2.5)], linger_s=0.1), 8)
        conns = h.sim.connections
    assert result.closed_by == "caller"  # no traceback, no fallback: the call went on
    assert len(conns) == 2 and conns[0].injected_failure and conns[0].close_code == 1008
    greeted = [p["text"] for m in conns[1].client_contents for t in m["turns"] for p in t["parts"]]
    assert greeted == ["Greet the caller."]  # the greeting was given on the new connection
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"
