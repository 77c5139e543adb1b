"""agents.yaml: schema, graph validation, identity block and handoff targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.agents import AgentsFileError, load_agents, parse_agents

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "model": "gemini-2.5-flash-native-audio-preview-12-2025",
    "agents": [
        {
            "id": "agent-triage",
            "role": "Triage receptionist",
            "description": "Routes callers to the right specialist",
            "scope": "Financial advisory services only",
            "system_prompt": "Greet callers. Ask what they need. Under 30 words.",
            "voice": "Aoede",
            "greeting": "Greet the caller and ask how you can help.",
        },
        {
            "id": "agent-advisor",
            "role": "Portfolio advisor",
            "description": "Provides financial and investment advice",
            "system_prompt": "Give concise financial advice. Under 50 words.",
            "voice": "Charon",
        },
    ],
    "pipeline": [
        {"phase": "triage", "agent_id": "agent-triage", "next": "advising"},
        {
            "phase": "advising",
            "agent_id": "agent-advisor",
            "next": None,
            "can_return_to": ["triage"],
        },
    ],
}


def _with(path: str, value: object) -> str:
    """BASE with one field replaced (``agents.1.voice``), as YAML text."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return yaml.safe_dump(data)


_DELETE = object()


def test_repository_example_is_valid_and_packaged_copy_matches() -> None:
    graph = load_agents(ROOT / "agents.yaml")
    assert [a.id for a in graph.spec.agents] == ["agent-triage", "agent-advisor"]
    assert graph.warnings == []
    packaged = ROOT / "gateway" / "data" / "agents.example.yaml"
    assert packaged.read_text() == (ROOT / "agents.yaml").read_text()


def test_identity_block_follows_the_prompt_and_omits_empty_lines() -> None:
    graph = parse_agents(yaml.safe_dump(BASE))
    triage = graph.agent("agent-triage").system_instruction()
    assert triage == (
        "Greet callers. Ask what they need. Under 30 words.\n\n"
        "--- Agent Identity ---\n"
        "Role: Triage receptionist\n"
        "Description: Routes callers to the right specialist\n"
        "Scope: Financial advisory services only"
    )
    advisor = graph.agent("agent-advisor").system_instruction()
    assert advisor.endswith(
        "Role: Portfolio advisor\nDescription: Provides financial and investment advice"
    )
    assert "Scope:" not in advisor


def test_handoff_targets_follow_next_and_can_return_to() -> None:
    graph = parse_agents(yaml.safe_dump(BASE))
    assert [t.agent.id for t in graph.targets(graph.stage("triage"))] == ["agent-advisor"]
    assert [t.agent.id for t in graph.targets(graph.stage("advising"))] == ["agent-triage"]
    assert graph.first_stage.phase == "triage"


def test_terminal_stage_without_returns_has_no_targets() -> None:
    graph = parse_agents(_with("pipeline.1.can_return_to", []))
    assert graph.targets(graph.stage("advising")) == []


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("agents.1.id", "agent-triage", "agents[1].id: duplicate agent id 'agent-triage'"),
        (
            "pipeline.1.agent_id",
            "agent-nobody",
            "pipeline[1].agent_id: unknown agent 'agent-nobody'",
        ),
        ("pipeline.0.next", "billing", "pipeline[0].next: unknown phase 'billing'"),
        (
            "pipeline.1.can_return_to",
            ["lobby"],
            "pipeline[1].can_return_to[0]: unknown phase 'lobby'",
        ),
        ("agents.0.system_prompt", "   ", "agents[0].system_prompt: must not be empty"),
        ("agents.0.voise", "Aoede", "agents[0].voise: unknown key; did you mean 'voice'?"),
        (
            "agents.0.sytem_prompt",
            "Hi.",
            "agents[0].sytem_prompt: unknown key; did you mean"
            " 'system_prompt'? valid keys here: id, role,",
        ),
        ("pipeline.0.nxt", "advising", "pipeline[0].nxt: unknown key; did you mean 'next'?"),
        ("fallback", {"sey": "Sorry."}, "fallback.sey: unknown key; did you mean 'say'?"),
        ("modle", "gemini-x", "modle: unknown key; did you mean 'model'?"),
        (
            "pipeline.0.agent_id",
            "agent-trage",
            "pipeline[0].agent_id: unknown agent 'agent-trage'; did you mean 'agent-triage'?",
        ),
        (
            "pipeline.0.next",
            "advsing",
            "pipeline[0].next: unknown phase 'advsing'; did you mean 'advising'?",
        ),
        ("agents.1.voice", "Hal9000", "agents[1].voice: unknown voice 'Hal9000'; Gemini's voices"),
        (
            "agents.1.voice",
            "Charonn",
            "agents[1].voice: unknown voice 'Charonn'; did you mean 'Charon'?",
        ),
        (
            "agents.0.tools",
            ["google_serch"],
            "unknown tool 'google_serch'; did you mean 'google_search'?",
        ),
        ("pipeline.0.next", None, "pipeline[1]: stage 'advising' is unreachable"),
        ("agents.0.role", _DELETE, "agents[0].role: required field is missing"),
        ("agents.0.tools", ["fax"], "agents[0].tools: unknown tool 'fax'"),
        ("pipeline.1.phase", "triage", "pipeline[1].phase: duplicate phase 'triage'"),
        ("agents", [], "agents: must not be empty"),
    ],
)
def test_invalid_files_stop_with_one_message_naming_the_field(
    path: str, value: object, message: str
) -> None:
    with pytest.raises(AgentsFileError) as info:
        parse_agents(_with(path, value), source="agents.yaml")
    text = str(info.value)
    assert text.startswith("agents.yaml: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize("written", ["charon", "CHARON", " Charon "])
def test_a_voice_in_another_case_is_accepted_and_normalised(written: str) -> None:
    graph = parse_agents(_with("agents.1.voice", written))
    assert graph.agent("agent-advisor").voice == "Charon"
    assert graph.warnings == []


def test_yaml_syntax_errors_and_missing_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AgentsFileError, match="not valid YAML"):
        parse_agents("agents: [\n")
    with pytest.raises(AgentsFileError, match="file not found"):
        load_agents(tmp_path / "nope.yaml")
    with pytest.raises(AgentsFileError, match="expected a mapping"):
        parse_agents("- just\n- a list\n")


def test_describe_prints_the_graph() -> None:
    text = parse_agents(yaml.safe_dump(BASE)).describe()
    assert "start triage [agent-triage] -> hands off to: agent-advisor (advising)" in text
    assert "advising [agent-advisor] -> hands off to: agent-triage (triage)" in text
    assert "agent-triage: Triage receptionist, voice Aoede (speaks first)" in text
