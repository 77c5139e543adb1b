"""The conversation survives connection changes without losing what the caller said or did.

Each test runs a real call (simulated Twilio caller → real gateway → real google-genai SDK →
Live simulator) and injects a connection change at a chosen moment: a goAway, a drop in the
middle of the caller's sentence, a goAway followed by a handoff, a keypress during a reconnect.
"""

from __future__ import annotations

import asyncio
import re
import time

from callsim.callers.audio import Silence, Tone
from callsim.live.records import ConnectionRecord
from callsim.live.script import Step, ToolCallSpec
from tests.conftest import StructuredLogs
from tests.harness import Harness, agents, running

GREETING = agents(agent_triage={"greeting": "Greet the caller."})
TRIAGE = "Role: Triage receptionist"
ADVISOR = "Role: Portfolio advisor"


async def _greeted(h: Harness) -> None:
    """The greeting turn is over and its handle issued."""
    await h.sim.wait_for(
        lambda: bool(h.sim.connections) and bool(h.sim.connections[0].sent_times("turnComplete")),
        timeout=5,
    )
    session = h.sim.sessions[h.sim.connections[0].session_id or 0]
    await h.sim.wait_for(lambda: bool(session.handles), timeout=2)


def _utterances(h: Harness, connection: ConnectionRecord) -> list[float]:
    """Durations (s) of the caller utterances the simulated model heard on ``connection``."""
    session = h.sim.sessions[connection.session_id or 0]
    heard = []
    for entry in session.history:
        if entry.kind == "caller" and entry.connection_index == connection.index:
            match = re.search(r"\(([\d.]+) s\)", entry.text)
            if match:
                heard.append(float(match.group(1)))
    return heard


async def test_go_away_with_a_current_handle_and_an_idle_model_moves_within_a_second() -> None:
    steps = [Step(on="text", say="hello", seconds=0.4)]
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(h.call([Silence(4.0)], linger_s=0.1))
        await _greeted(h)
        await asyncio.sleep(0.3)  # the greeting has played; the line is silent
        sent_at = time.monotonic()
        await h.sim.go_away(time_left="50s")
        conns = await h.sim.wait_for_connections(2, timeout=3)
        moved_after = conns[1].opened_at - sent_at
        await call
    assert moved_after < 1.0
    assert conns[1].resumed and conns[0].closed_by == "client"
    (event,) = h.named("live.reconnected")
    assert event["reason"] == "goaway" and event["resumed"] is True


async def test_a_drop_mid_sentence_delivers_the_whole_sentence_to_the_resumed_connection(
    structured_logs: StructuredLogs,
) -> None:
    steps = [Step(on="text", say="hello", seconds=0.4)]
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(
            h.call([Silence(1.5), Tone(300, 1.6), Silence(2.5)], linger_s=0.1)
        )
        await _greeted(h)
        # 0.8 s into the caller's 1.6 s sentence, the connection drops.
        await h.sim.wait_for(lambda: h.sim.connections[0].audio_in_seconds >= 2.3, timeout=5)
        await h.sim.close(1011, "internal error")
        await call
        conns = h.sim.connections
    assert len(conns) == 2 and conns[1].resumed
    assert _utterances(h, conns[0]) == []  # the old connection never finished hearing it
    (heard,) = _utterances(h, conns[1])
    assert heard >= 1.5  # the whole sentence, not the 0.8 s left after the drop
    (replayed,) = structured_logs.events("live.replayed")
    assert replayed["messages"] >= 40  # at least the 0.8 s already sent


async def test_go_away_then_handoff_leaves_the_new_agents_connection_alone() -> None:
    steps = [
        Step(on="caller", when=TRIAGE, hear="advice please", say="Transferring you now.",
             seconds=1.0, tool_call=ToolCallSpec("handoff_conversation", {
                 "target": "agent-advisor", "reason": "advice", "summary": "wants advice"})),
        Step(on="text", when=ADVISOR, say="Advisor here, how can I help?", seconds=0.6),
    ]  # fmt: skip
    async with running(steps=steps) as h:
        call = asyncio.create_task(h.call([Silence(0.4), Tone(300, 0.5), Silence(6.0)]))
        await h.sim.wait_for(
            lambda: bool(h.sim.connections) and bool(h.sim.connections[0].sent_times("audio")),
            timeout=5,
        )
        # Mid-answer: the move waits for the turn, and the turn ends in a handoff.
        await h.sim.go_away(time_left="3s")
        goaway_at = time.monotonic()
        await h.sim.wait_for(lambda: len(h.sim.connections) >= 2, timeout=5)
        # Past the old connection's deadline (3 s minus the margin), and then some.
        await asyncio.sleep(max(0.0, goaway_at + 3.5 - time.monotonic()))
        still = [c.closed_at for c in h.sim.connections]
        await call
        conns = h.sim.connections
    assert len(still) == 2 and still[1] is None  # the advisor's connection was left alone
    assert len(conns) == 2
    assert conns[1].voice == "Charon"
    assert h.named("live.reconnected") == []
    assert h.named("handoff.completed")[0]["to_agent"] == "agent-advisor"


async def test_a_key_pressed_during_a_reconnect_reaches_the_model_after_it() -> None:
    async with running(sim_options={"setup_delay_ms": 800}) as h:
        keys = [(1.6, "5"), (1.65, "#")]  # an entry complete while the new connection sets up
        call = asyncio.create_task(h.call([Silence(4.0)], linger_s=0.1, dtmf=keys))
        await h.sim.wait_for(
            lambda: bool(h.sim.connections) and h.sim.connections[0].audio_in_seconds >= 1.3,
            timeout=5,
        )
        await h.sim.close(1011, "internal error")  # the new connection takes 0.8 s to set up
        await call
        conns = h.sim.connections
    assert len(conns) == 2

    def texts(c: ConnectionRecord) -> str:
        parts = [
            p.get("text", "") for m in c.client_contents for t in m["turns"] for p in t["parts"]
        ]
        return " ".join(parts + c.realtime_texts)

    assert "pressed" not in texts(conns[0])
    assert "The caller pressed 5 #" in texts(conns[1])
    (reconnected,) = h.named("live.reconnected")
    assert reconnected["reason"] == "dropped"


async def test_a_drop_mid_answer_is_recapped_so_the_answer_is_not_restarted() -> None:
    steps = [
        Step(on="text", say="hello", seconds=0.3),
        Step(on="caller", when=TRIAGE, hear="What are your hours?",
             say="We are open from nine to five on weekdays and ten to two on Saturdays.",
             seconds=2.0),
        Step(on="text", when=TRIAGE, say="and ten to two on Saturdays.", seconds=0.6),
    ]  # fmt: skip
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(h.call([Silence(1.0), Tone(300, 0.6), Silence(5.0)]))
        await _greeted(h)
        await h.sim.wait_for(lambda: len(h.sim.connections[0].sent_times("audio")) > 30, 6)
        await h.sim.close(1011, "internal error")  # about 0.8 s into the 2 s answer
        await call
        conns = h.sim.connections
    assert len(conns) == 2 and conns[1].resumed
    (recap,) = [p["text"] for m in conns[1].client_contents for t in m["turns"] for p in t["parts"]]
    assert 'The caller said: "What are your hours?"' in recap
    assert 'You said: "We are open' in recap and "(cut off here)" in recap
    assert "Continue from where you stopped" in recap
    assert conns[1].client_contents[0]["turnComplete"] is True
    # Nothing of the caller's question was replayed as audio: the model did not hear it twice.
    assert _utterances(h, conns[1]) == []
