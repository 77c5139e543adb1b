"""agents.yaml: schema, graph validation, identity block and handoff targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.agents import AgentsFileError, load_agents, parse_agents
from gateway.variables import CALL_VARIABLES

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
            "agents[0].tools[0]: unknown tool 'google_serch'; did you mean 'google_search'?",
        ),
        ("pipeline.0.next", None, "pipeline[1]: stage 'advising' is unreachable"),
        ("agents.0.role", _DELETE, "agents[0].role: required field is missing"),
        ("agents.0.tools", ["fax"], "agents[0].tools[0]: unknown tool 'fax'"),
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


# --------------------------------------------------------------------- agents that act

TOKEN = "tok-3f9a1c77e2"
ENV = {"ORDERS_API_TOKEN": TOKEN, "ORDERS_KEY": "key-8812aa"}
LOOKUP = {
    "name": "lookup_order",
    "description": "Look up an order's status by its number.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "description": "digits only"}},
        "required": ["order_id"],
    },
    "url": "https://api.example.com/orders/lookup",
    "headers": {"Authorization": "Bearer ${ORDERS_API_TOKEN}"},
    "timeout_s": 8,
}


def _acting(**changes: object) -> dict[str, object]:
    """BASE with an HTTP tool enabled for triage, which may also end and transfer the call."""
    data: dict[str, object] = yaml.safe_load(yaml.safe_dump(BASE))
    data["tools"] = [dict(LOOKUP)]
    agents = data["agents"]
    assert isinstance(agents, list)
    agents[0]["tools"] = ["lookup_order", "end_call", "transfer_call"]
    agents[0]["transfers"] = {"billing": "+15551234567", "frontdesk": "sip:desk@pbx.example.com"}
    data.update(changes)
    return data


def _acting_with(path: str, value: object) -> str:
    data = _acting()
    *parents, last = path.split(".")
    node: object = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]  # type: ignore[index]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]  # type: ignore[attr-defined]
    else:
        node[int(last) if last.isdigit() else last] = value  # type: ignore[index]
    return yaml.safe_dump(data)


def test_an_http_tool_is_declared_enabled_and_expanded_from_the_environment() -> None:
    graph = parse_agents(yaml.safe_dump(_acting()), environ=ENV)
    triage = graph.agent("agent-triage")
    (tool,) = graph.http_tools(triage)
    assert (tool.name, tool.method, tool.timeout_s, tool.redact) == (
        "lookup_order",
        "POST",
        8,
        False,
    )
    assert tool.header_values() == {"Authorization": f"Bearer {TOKEN}"}
    assert tool.parameters["required"] == ["order_id"]
    assert graph.http_tools(graph.agent("agent-advisor")) == ()
    assert triage.transfers == {"billing": "+15551234567", "frontdesk": "sip:desk@pbx.example.com"}
    assert graph.warnings == []


def test_http_tool_defaults_and_a_lower_case_method() -> None:
    tool = {"name": "ping", "description": "Ping.", "url": "http://svc.local/ping", "method": "get"}
    data = _acting(tools=[tool])
    data["agents"][0]["tools"] = ["ping"]  # type: ignore[index]
    graph = parse_agents(yaml.safe_dump(data), environ={})
    (ping,) = graph.http_tools(graph.agent("agent-triage"))
    assert ping.method == "GET"
    assert ping.timeout_s == 10
    assert ping.parameters == {"type": "object", "properties": {}}
    assert ping.headers == {}


def test_header_values_never_show_in_reprs_errors_or_describe() -> None:
    graph = parse_agents(yaml.safe_dump(_acting()), environ=ENV)
    tool = graph.spec.tools[0]
    for text in (repr(tool), str(tool), repr(graph.spec), str(graph.spec), graph.describe()):
        assert TOKEN not in text
    with pytest.raises(AgentsFileError) as info:
        parse_agents(_acting_with("tools.0.timeout_s", 0), environ=ENV)
    assert TOKEN not in str(info.value)


def test_secrets_are_header_values_and_query_values_from_the_environment() -> None:
    data = _acting()
    data["tools"][0]["url"] = "https://${HOST}/orders?key=${ORDERS_KEY}"  # type: ignore[index]
    graph = parse_agents(yaml.safe_dump(data), environ={**ENV, "HOST": "api.example.com"})
    assert graph.spec.tools[0].url == "https://api.example.com/orders?key=key-8812aa"
    assert sorted(graph.secrets()) == sorted([f"Bearer {TOKEN}", TOKEN, "key-8812aa"])
    text = graph.describe()
    assert "lookup_order: POST https://api.example.com/orders?key=*** (headers: Authorization)" in (
        text
    )
    assert "key-8812aa" not in repr(graph.spec.tools[0])


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            "headers",
            "agents.yaml: tools[0].headers.Authorization: ${ORDERS_API_TOKEN} is not set in the "
            "environment",
        ),
        ("url", "agents.yaml: tools[0].url: ${ORDERS_API_TOKEN} is not set in the environment"),
    ],
)
def test_an_unset_variable_is_one_line_naming_it(where: str, message: str) -> None:
    data = _acting()
    if where == "url":
        data["tools"][0]["url"] = "https://x.example/?t=${ORDERS_API_TOKEN}"  # type: ignore[index]
        data["tools"][0]["headers"] = {}  # type: ignore[index]
    with pytest.raises(AgentsFileError) as info:
        parse_agents(yaml.safe_dump(data), environ={})
    assert str(info.value) == message


def test_load_agents_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(_acting()))
    monkeypatch.delenv("ORDERS_API_TOKEN", raising=False)
    with pytest.raises(AgentsFileError, match=r"\$\{ORDERS_API_TOKEN\} is not set"):
        load_agents(path)
    monkeypatch.setenv("ORDERS_API_TOKEN", TOKEN)
    assert load_agents(path).secrets() == [f"Bearer {TOKEN}", TOKEN]
    assert load_agents(path, environ={"ORDERS_API_TOKEN": "other-token"}).secrets()[1] == (
        "other-token"
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("tools.0.name", "look up", "tools[0].name: String should match pattern"),
        ("tools.0.name", "x" * 65, "tools[0].name: String should match pattern"),
        ("tools.0.name", "end_call", "tools[0].name: 'end_call' is the gateway's own tool"),
        (
            "tools.0.name",
            "handoff_conversation",
            "tools[0].name: 'handoff_conversation' is the gateway's own tool",
        ),
        ("tools.0.description", "  ", "tools[0].description: must not be empty"),
        ("tools.0.description", _DELETE, "tools[0].description: required field is missing"),
        ("tools.0.parameters", {"type": "string"}, "tools[0].parameters: must be a JSON Schema"),
        ("tools.0.parameters", ["order_id"], "tools[0].parameters:"),
        (
            "tools.0.parameters",
            {"type": "object", "properties": {}, "required": ["order_id"]},
            "tools[0].parameters: required names 'order_id', which is not in properties",
        ),
        ("tools.0.url", "ftp://api.example.com/x", "tools[0].url: must be an http:// or https://"),
        ("tools.0.url", "api.example.com/x", "tools[0].url: must be an http:// or https://"),
        ("tools.0.method", "PUT", "tools[0].method: Input should be 'GET' or 'POST'"),
        ("tools.0.timeout_s", 0, "tools[0].timeout_s: Input should be greater than 0"),
        ("tools.0.timeout_s", 121, "tools[0].timeout_s: Input should be less than or equal"),
        ("tools.0.headers", {"X-Retries": 3}, "tools[0].headers.X-Retries:"),
        (
            "tools.0.verb",
            "GET",
            "tools[0].verb: unknown key; valid keys here: name, description, parameters, url, "
            "method, headers, timeout_s, redact",
        ),
        ("tools.0.timeout", 3, "tools[0].timeout: unknown key; did you mean 'timeout_s'?"),
        ("tools", [LOOKUP, LOOKUP], "tools[1].name: duplicate tool name 'lookup_order'"),
        (
            "agents.0.tools.0",
            "lookup_ordr",
            "agents[0].tools[0]: unknown tool 'lookup_ordr'; did you mean 'lookup_order'? tools "
            "are: google_search, end_call, transfer_call, lookup_order",
        ),
        ("agents.0.tools.1", "lookup_order", "agents[0].tools[1]: tool 'lookup_order' is listed"),
        (
            "agents.0.transfers",
            {},
            "agents[0].transfers: transfer_call needs at least one destination",
        ),
        (
            "agents.0.transfers",
            {"billing": "5551234567"},
            "agents[0].transfers: transfer 'billing': the destination must be an E.164 number",
        ),
        (
            "agents.0.transfers",
            {"bill ing": "+15551234567"},
            "agents[0].transfers: transfer name 'bill ing' must start with a letter or digit",
        ),
        (
            "routes",
            [{"number": "+15550001111", "phase": "advsing"}],
            "routes[0].phase: unknown phase 'advsing'; did you mean 'advising'? phases are: "
            "triage, advising",
        ),
        (
            "routes",
            [{"number": "+15550001111", "phase": "triage"}] * 2,
            "routes[1].number: duplicate number '+15550001111'",
        ),
        (
            "routes",
            [{"number": 15550001111, "phase": "triage"}],
            'routes[0].number: write the number in quotes, as "+15550001111"',
        ),
        (
            "routes",
            [{"number": "555-0001", "phase": "triage"}],
            "routes[0].number: String should match pattern",
        ),
        (
            "routes",
            [{"number": "+15550001111", "stage": "triage"}],
            "routes[0].stage: unknown key; valid keys here: number, phase",
        ),
    ],
)
def test_invalid_tools_transfers_and_routes_name_the_field(
    path: str, value: object, message: str
) -> None:
    with pytest.raises(AgentsFileError) as info:
        parse_agents(_acting_with(path, value), environ=ENV)
    text = str(info.value)
    assert text.startswith(f"agents.yaml: {message}")
    assert "\n" not in text


def test_an_unquoted_e164_number_in_yaml_gets_the_quoting_hint() -> None:
    text = yaml.safe_dump(_acting()) + "routes:\n- {number: +15550001111, phase: advising}\n"
    with pytest.raises(AgentsFileError, match=r"routes\[0\]\.number: write the number in quotes"):
        parse_agents(text, environ=ENV)


def test_transfers_without_transfer_call_and_unused_tools_are_warnings() -> None:
    data = _acting()
    data["agents"][0]["tools"] = ["end_call"]  # type: ignore[index]
    graph = parse_agents(yaml.safe_dump(data), environ=ENV)
    assert graph.warnings == [
        "agents[0].transfers: unused, transfer_call is not in this agent's tools",
        "tools[0]: tool 'lookup_order' is in no agent's tools, so no agent can call it",
    ]
    assert "warning: tools[0]: tool 'lookup_order'" in graph.describe()


def test_routes_choose_the_start_stage_and_count_as_entry_points() -> None:
    data = _acting(routes=[{"number": "+15550002222", "phase": "advising"}])
    data["pipeline"][0]["next"] = None  # type: ignore[index]
    graph = parse_agents(yaml.safe_dump(data), environ=ENV)  # advising: reachable only by route
    assert graph.start_stage("+15550002222").phase == "advising"
    assert graph.start_stage("+15559999999").phase == "triage"
    assert graph.start_stage(None).phase == "triage"
    assert "routes:\n  +15550002222 -> advising [agent-advisor]" in graph.describe()


def test_describe_shows_tools_and_transfers_per_agent() -> None:
    text = parse_agents(yaml.safe_dump(_acting()), environ=ENV).describe()
    assert (
        "    tools: lookup_order, end_call, transfer_call\n    transfers: billing, frontdesk"
        in (text)
    )
    assert "http tools:\n  lookup_order: POST https://api.example.com/orders/lookup" in text
    assert "+15551234567" not in text


def test_unknown_prompt_variables_are_warnings_and_known_ones_are_not() -> None:
    data = _acting()
    data["agents"][0]["system_prompt"] = (  # type: ignore[index]
        "Caller {{caller_number}} on {{ date }} at {{time}}, account {{param.account}}; "
        'reply as JSON {"ok": true}. Hello {{ nmae }}.'
    )
    data["agents"][1]["greeting"] = "Hi {{agent}}."  # type: ignore[index]
    graph = parse_agents(yaml.safe_dump(data), environ=ENV)
    known = ", ".join(CALL_VARIABLES)
    assert graph.warnings == [
        f"agents[0].system_prompt: unknown variable {{{{nmae}}}} is left as written; known: "
        f"{known}, param.NAME",
        f"agents[1].greeting: unknown variable {{{{agent}}}} is left as written; known: "
        f"{known}, param.NAME",
    ]


def test_a_yaml_error_is_one_line_with_its_place() -> None:
    """``gateway check`` prints it and a reload logs it: PyYAML's own text spans lines."""
    with pytest.raises(AgentsFileError) as caught:
        parse_agents("agents: [\n  - id: x\n", source="agents.yaml")
    assert str(caught.value) == (
        "agents.yaml: not valid YAML: expected the node content, but found '-' (line 2, column 3)"
    )


def test_the_provider_defaults_to_gemini_and_fills_in_each_agents_provider() -> None:
    graph = parse_agents(yaml.safe_dump(BASE))
    assert graph.provider == "gemini"
    assert graph.providers == ("gemini",)
    assert {a.provider for a in graph.spec.agents} == {"gemini"}


def test_an_openai_file_gets_its_default_model_and_voice() -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["provider"] = "openai"
    del data["model"]
    for agent in data["agents"]:
        del agent["voice"]
    graph = parse_agents(yaml.safe_dump(data))
    assert graph.model == "gpt-realtime-2.1"
    assert {a.voice for a in graph.spec.agents} == {"marin"}
    assert graph.describe().startswith("provider: openai\nmodel: gpt-realtime-2.1")


def test_an_agent_may_run_on_the_other_provider() -> None:
    text = _with("agents.1.provider", "openai").replace("Charon", "Cedar")
    graph = parse_agents(text)
    assert graph.providers == ("gemini", "openai")
    advisor = graph.agent("agent-advisor")
    assert (advisor.provider, advisor.voice) == ("openai", "cedar")
    assert graph.model_of("openai") == "gpt-realtime-2.1"
    assert graph.model_of("gemini") == BASE["model"]
    assert "agent-advisor: Portfolio advisor, voice cedar on openai" in graph.describe()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "agents.1.provider",
            "openai",  # keeps the Gemini voice Charon
            "agents[1].voice: 'Charon' is a voice of Gemini, but this agent runs on openai. "
            "OpenAI's voices are: alloy,",
        ),
        ("agents.1.provider", "anthropic", "agents[1].provider"),
        ("provider", "azure", "provider"),
        ("model", "gpt-realtime", "model: 'gpt-realtime' is an OpenAI model; set provider: openai"),
    ],
)
def test_provider_mistakes_name_the_field(path: str, value: str, message: str) -> None:
    with pytest.raises(AgentsFileError) as err:
        parse_agents(_with(path, value))
    assert message in str(err.value)


def test_an_openai_file_refuses_a_model_that_is_not_a_realtime_one() -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["provider"] = "openai"
    for agent in data["agents"]:
        agent["voice"] = "alloy"
    for model, hint in [
        ("gpt-4o", "not an OpenAI Realtime model; name a realtime model"),
        (BASE["model"], "set provider: gemini to use it"),
    ]:
        data["model"] = model
        with pytest.raises(AgentsFileError) as err:
            parse_agents(yaml.safe_dump(data))
        assert hint in str(err.value)
    data["model"] = "gpt-realtime-mini"
    assert parse_agents(yaml.safe_dump(data)).model == "gpt-realtime-mini"


def test_google_search_is_refused_for_an_agent_on_openai() -> None:
    text = _with("agents.0.provider", "openai").replace("Aoede", "alloy")
    data = yaml.safe_load(text)
    data["agents"][0]["tools"] = ["google_search"]
    with pytest.raises(AgentsFileError) as err:
        parse_agents(yaml.safe_dump(data))
    assert "agents[0].tools[0]: google_search is Gemini's own tool" in str(err.value)
