"""The provider switch's ownership of the sessions it hands off from: each one's close runs
behind the handoff (the formats change at once, see ``test_bridge``) and is still the call's to
finish, or to cancel, when the call ends."""

from __future__ import annotations

import asyncio

from gateway.agents import parse_agents
from gateway.audio.transcode import PCMU_8K
from gateway.model.persona import AgentPersona
from gateway.model.session import ModelAudio
from gateway.model.switch import ProviderSwitch
from tests.fakes import FakeModelSession

GRAPH = parse_agents(
    """
agents:
  - {id: triage, role: Triage, system_prompt: Ask., voice: Aoede}
  - {id: advisor, role: Advisor, system_prompt: Advise., voice: sage, provider: openai}
pipeline:
  - {phase: triage, agent_id: triage, next: advising}
  - {phase: advising, agent_id: advisor, next: null}
"""
)


async def _handed_off() -> tuple[ProviderSwitch, FakeModelSession, FakeModelSession]:
    """A switch moved from Gemini to OpenAI whose Gemini session is still closing."""
    gemini = FakeModelSession()
    openai = FakeModelSession(model_audio=ModelAudio(PCMU_8K, PCMU_8K))
    gemini.audio_dropped_ms = 40.0
    gemini.close_gate = asyncio.Event()
    switch = ProviderSwitch({"gemini": lambda: gemini, "openai": lambda: openai})
    await switch.open(AgentPersona(GRAPH.agent("triage")))
    await switch.hand_off(AgentPersona(GRAPH.agent("advisor")), lambda kept: ())
    assert switch.current is openai
    assert switch.audio == openai.audio
    await gemini.until(lambda: gemini.close_calls == 1)
    return switch, gemini, openai


async def test_the_call_ends_once_the_old_sessions_close_has() -> None:
    switch, gemini, openai = await _handed_off()
    assert switch.audio_dropped_ms == 40.0  # the old session's losses stay counted
    closing = asyncio.create_task(switch.close())
    await openai.until(lambda: openai.close_calls == 1)
    await asyncio.sleep(0.01)
    assert not closing.done()  # the old session's close handshake is still under way
    assert gemini.close_gate is not None
    gemini.close_gate.set()
    await asyncio.wait_for(closing, 5.0)
    assert gemini.close_calls == 1


async def test_a_cancelled_close_leaves_nothing_running() -> None:
    before = asyncio.all_tasks()
    switch, _, _ = await _handed_off()
    closing = asyncio.create_task(switch.close())
    await asyncio.sleep(0.01)
    closing.cancel()
    await asyncio.wait([closing])
    assert closing.cancelled()
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
