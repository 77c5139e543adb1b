"""Handoff through the whole gateway: the heart of the product.

Each test scripts the simulated model (what each agent says, when it calls
``handoff_conversation``), places a real call, and then checks both ends: what the Live
simulator received on each connection (handle, voice, instruction, tools, prompts, audio) and
what the caller heard (each simulated voice has its own pitch).
"""

from __future__ import annotations

from typing import Any

import pytest

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step, ToolCallSpec
from callsim.live.voices import voice_pitch_hz
from gateway.audio.analysis import dominant_frequency, rms_dbfs
from tests.harness import agents, running

TRIAGE = "Role: Triage receptionist"
ADVISOR = "Role: Portfolio advisor"


def handoff(target: str, reason: str = "wants advice", summary: str = "caller has savings") -> Any:
    return ToolCallSpec("handoff_conversation", {"target": target, "reason": reason,
                                                 "summary": summary})  # fmt: skip


def _enum(declarations: list[dict[str, Any]]) -> list[str]:
    (decl,) = declarations
    assert decl["name"] == "handoff_conversation"
    params = decl["parameters"]
    assert sorted(params["required"]) == ["reason", "summary", "target"]
    return list(params["properties"]["target"]["enum"])


def _voices_heard(pcm: bytes, voices: list[str]) -> list[str]:
    """The sequence of voices heard, by pitch, in 100 ms windows (repeats collapsed)."""
    pitches = {v: voice_pitch_hz(v) for v in voices}
    out: list[str] = []
    for i in range(0, len(pcm) - 1600 + 1, 1600):
        chunk = pcm[i : i + 1600]
        if rms_dbfs(chunk) < -40:
            continue
        hz = dominant_frequency(chunk, 8000)
        voice = min(pitches, key=lambda v: abs(pitches[v] - hz))
        if abs(pitches[voice] - hz) < 10 and (not out or out[-1] != voice):
            out.append(voice)
    return out


GREETING = agents(agent_triage={"greeting": "Greet the caller."})

BASIC_STEPS = [
    Step(on="text", when=TRIAGE, say="Hello, how can I help?", seconds=1.0),
    Step(on="caller", when=TRIAGE, hear="I want investment advice.",
         say="Let me transfer you.", seconds=0.8, tool_call=handoff("agent-advisor")),
    Step(on="text", when=ADVISOR, say="Hi, portfolio advisor here.", seconds=1.0),
    Step(on="caller", when=ADVISOR, hear="Thanks.", say="You're welcome.", seconds=0.6),
]  # fmt: skip


async def test_handoff_resumes_with_the_handle_and_the_new_agents_config() -> None:
    async with running(steps=BASIC_STEPS, graph=GREETING) as h:
        result = await h.call(
            [Silence(1.8), Tone(300, 0.6), Silence(3.6), Tone(300, 0.5)], linger_s=1.6
        )
        first, second = h.sim.connections[:2]
        session = h.sim.sessions[first.session_id or 0]
    assert result.violations == []
    assert len(h.sim.connections) == 2
    # Old connection answered (tool response) and closed by the gateway before the new one.
    (response,) = first.tool_responses
    assert response["name"] == "handoff_conversation"
    assert response["response"]["result"] == "transferred"
    assert first.closed_by == "client"
    assert first.closed_at is not None and first.closed_at <= second.opened_at
    # New connection: same session via the newest handle, the advisor's persona, same model.
    assert second.resumed and second.session_id == first.session_id
    assert second.handle_requested == session.handles[0]  # issued after the greeting turn
    assert second.model == first.model
    assert second.voice == "Charon" and first.voice == "Aoede"
    assert second.system_instruction == h.graph.agent("agent-advisor").system_instruction()
    assert _enum(first.function_declarations) == ["agent-advisor"]
    assert _enum(second.function_declarations) == ["agent-triage"]
    # The takeover prompt: role, reason, summary and what the caller said since the handle.
    prompt = second.client_contents[0]["turns"][0]["parts"][0]["text"]
    assert "You are now the Portfolio advisor" in prompt
    assert "wants advice" in prompt and "caller has savings" in prompt
    assert '"I want investment advice."' in prompt
    assert second.client_contents[0]["turnComplete"] is True
    # The caller heard the triage voice, then the advisor's.
    assert _voices_heard(result.heard_pcm(), ["Aoede", "Charon"]) == ["Aoede", "Charon"]
    (done,) = h.named("handoff.completed")
    assert done["from_agent"] == "agent-triage" and done["to_agent"] == "agent-advisor"
    assert done["resumed"] is True
    assert done["reconnect_ms"] < 1000
    # The advisor answered the caller on the new connection (conversation continues).
    assert "Thanks." in session.heard_by(second.system_instruction)


async def test_caller_audio_during_the_reconnect_is_buffered_and_replayed() -> None:
    steps = [
        Step(on="caller", when=TRIAGE, hear="advice please", say="One moment.", seconds=0.4,
             tool_call=handoff("agent-advisor")),
    ]  # fmt: skip
    # A slow setup on the new connection makes the reconnect window long enough to matter.
    async with running(steps=steps, sim_options={"setup_delay_ms": 300}) as h:
        result = await h.call([Silence(0.4), Tone(300, 0.5), Silence(3.0)], linger_s=0.5)
        first, second = h.sim.connections[:2]
    sent_frames = sum(1 for _, m in result.sent if m.get("event") == "media")
    received = len(first.audio_in) + len(second.audio_in)
    # Every caller frame reached Gemini (4 bytes of PCM16 16 kHz per μ-law byte), except at
    # most the few in flight when the caller hung up.
    assert received == pytest.approx(sent_frames * 160 * 4, abs=160 * 4 * 3)
    (done,) = h.named("handoff.completed")
    assert done["reconnect_ms"] >= 300


async def test_handoffs_chain_and_return_via_can_return_to() -> None:
    steps = [
        *BASIC_STEPS[:3],
        Step(on="caller", when=ADVISOR, hear="Actually, billing.", say="Sending you back.",
             seconds=0.6, tool_call=handoff("agent-triage", reason="billing question")),
        Step(on="text", when=TRIAGE, say="Triage again.", seconds=0.6),
    ]  # fmt: skip
    async with running(steps=steps, graph=GREETING) as h:
        result = await h.call(
            [Silence(1.8), Tone(300, 0.5), Silence(3.5), Tone(300, 0.5), Silence(2.5)],
            linger_s=0.5,
        )
        conns = h.sim.connections
    assert len(conns) == 3
    assert [c.voice for c in conns] == ["Aoede", "Charon", "Aoede"]
    assert all(c.resumed for c in conns[1:])
    assert len({c.session_id for c in conns}) == 1
    assert _enum(conns[2].function_declarations) == ["agent-advisor"]
    assert "billing question" in conns[2].client_contents[0]["turns"][0]["parts"][0]["text"]
    assert [e["to_agent"] for e in h.named("handoff.completed")] == [
        "agent-advisor",
        "agent-triage",
    ]
    assert _voices_heard(result.heard_pcm(), ["Aoede", "Charon"]) == ["Aoede", "Charon", "Aoede"]


async def test_without_a_handle_the_new_agent_gets_a_fresh_session_seeded_with_the_transcript() -> (
    None
):
    # No greeting, and the very first caller turn hands off: no turn ever completed, so Gemini
    # never issued a handle.
    steps = [
        Step(on="caller", when=TRIAGE, hear="I need portfolio advice.", say="Transferring.",
             seconds=0.5, tool_call=handoff("agent-advisor")),
        Step(on="text", when=ADVISOR, say="Advisor here.", seconds=0.6),
    ]  # fmt: skip
    async with running(steps=steps) as h:
        await h.call([Silence(0.4), Tone(300, 0.5), Silence(2.5)], linger_s=0.3)
        first, second = h.sim.connections[:2]
    assert first.handle_requested is None and second.handle_requested is None
    assert second.resumption_requested and not second.resumed
    assert second.session_id != first.session_id
    turns = second.client_contents[0]["turns"]
    text = " ".join(p["text"] for t in turns for p in t["parts"])
    assert turns[-1]["role"] == "user"
    assert "I need portfolio advice." in text
    assert "You are now the Portfolio advisor" in turns[-1]["parts"][0]["text"]
    (done,) = h.named("handoff.completed")
    assert done["resumed"] is False


async def test_an_invalid_target_gets_an_error_and_no_reconnect() -> None:
    steps = [
        Step(on="caller", when=TRIAGE, say="Let me see.", seconds=0.4,
             tool_call=handoff("agent-nobody"), then_say="I'll help you myself.", then_seconds=0.5),
    ]  # fmt: skip
    async with running(steps=steps) as h:
        await h.call([Silence(0.4), Tone(300, 0.5), Silence(2.2)], linger_s=0.3)
        conns = h.sim.connections
    assert len(conns) == 1
    (response,) = conns[0].tool_responses
    assert "agent-nobody" in response["response"]["error"]
    assert "agent-advisor" in response["response"]["error"]
    assert h.named("handoff.rejected") == [
        {"call_id": h.named("call.started")[0]["call_id"], "agent": "agent-triage",
         "target": "agent-nobody"}
    ]  # fmt: skip
    assert h.named("handoff.completed") == []


async def test_a_terminal_agent_is_not_offered_the_handoff_tool() -> None:
    graph = agents(agent_triage={"greeting": "Greet."}, stage_advising={"can_return_to": []})
    async with running(steps=BASIC_STEPS, graph=graph) as h:
        await h.call([Silence(1.8), Tone(300, 0.6), Silence(2.5)], linger_s=0.2)
        second = h.sim.connections[1]
    assert second.function_declarations == []
    assert "tools" not in (second.setup or {})
