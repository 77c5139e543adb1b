"""What an OpenAI Realtime session is told for an agent and a carrier (pure JSON)."""

from __future__ import annotations

import json

from gateway.audio.transcode import G722_16K, L16_16K, PCM16_16K, PCM16_24K, PCMA_8K, PCMU_8K
from gateway.model.persona import AgentPersona
from gateway.model.turns import Turn
from gateway.realtime.config import (
    message_item,
    realtime_audio,
    seed_events,
    session_config,
    tool_declarations,
)
from tests.harness import agents


def _persona() -> AgentPersona:
    graph = agents(agent_triage={"tools": ["end_call"]})
    stage = graph.first_stage
    return AgentPersona(graph.agent(stage.agent_id), tuple(graph.targets(stage)))


def test_g711_passes_through_and_everything_else_meets_the_model_at_24k() -> None:
    assert realtime_audio(PCMU_8K).input == realtime_audio(PCMU_8K).output == PCMU_8K
    assert realtime_audio(PCMA_8K).output == PCMA_8K
    for carrier in (G722_16K, L16_16K, PCM16_16K):
        audio = realtime_audio(carrier)
        assert (audio.input, audio.output) == (PCM16_24K, PCM16_24K)
    assert realtime_audio(PCMU_8K).tracks_playback


def test_a_fresh_session_gets_the_whole_persona() -> None:
    persona = _persona()
    session = session_config(persona, realtime_audio(PCMU_8K))
    assert session["type"] == "realtime"
    assert session["instructions"] == persona.system_instruction()
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "Aoede"}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["transcription"]["model"]
    names = [tool["name"] for tool in session["tools"]]
    assert names == ["handoff_conversation", "end_call"]


def test_an_in_place_update_changes_no_voice_and_no_format() -> None:
    """A session that has spoken refuses any voice in an update."""
    session = session_config(_persona(), realtime_audio(PCM16_16K), in_place=True)
    assert set(session) == {"type", "instructions", "tools", "tool_choice", "audio"}
    assert session["audio"] == {
        "input": {"turn_detection": session["audio"]["input"]["turn_detection"]}
    }


def test_tools_are_flat_functions_with_json_schema() -> None:
    (handoff, end_call) = tool_declarations(_persona())
    assert handoff["type"] == "function"
    assert handoff["parameters"]["properties"]["target"]["enum"] == ["agent-advisor"]
    assert handoff["parameters"]["required"] == ["target", "reason", "summary"]
    assert end_call["name"] == "end_call"


def test_turns_become_user_and_assistant_message_items() -> None:
    assert message_item(Turn("user", "Hi")) == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Hi"}],
    }
    assert message_item(Turn("model", "Hello"))["content"] == [
        {"type": "output_text", "text": "Hello"}
    ]
    (created,) = seed_events([Turn("user", "Hi")])
    assert json.loads(created)["type"] == "conversation.item.create"
