"""An agent's Live config: the functions it may call, and the setup the SDK sends with them."""

from __future__ import annotations

import json
from typing import Any

import yaml
from google.genai import _common, _live_converters, types
from google.genai.client import Client

from callsim.live.protocol import parse_frame, parse_setup
from gateway.agents import parse_agents
from gateway.live.config import live_config
from gateway.model.persona import AgentPersona
from tests.test_agents import _acting

ENV = {"ORDERS_API_TOKEN": "tok-live-77aa01"}


def _persona(**variables: str) -> AgentPersona:
    graph = parse_agents(yaml.safe_dump(_acting()), environ=ENV)
    triage = graph.agent("agent-triage")
    targets = tuple(graph.targets(graph.first_stage))
    return AgentPersona(triage, targets, graph.http_tools(triage), variables)


def _setup_frame(config: types.LiveConnectConfig) -> str:
    """The setup message as google-genai's ``live.connect`` builds it (google/genai/live.py,
    the Gemini API branch): converted, the config key dropped, the model set."""
    client = Client(api_key="test-key")
    request: dict[str, Any] = _common.convert_to_dict(
        _live_converters._LiveConnectParameters_to_mldev(
            api_client=client._api_client,
            from_object=types.LiveConnectParameters(model="models/m", config=config).model_dump(
                exclude_none=True
            ),
        )
    )
    del request["config"]
    request["setup"]["model"] = "models/m"
    return json.dumps(_common.encode_unserializable_types(request))


def test_all_functions_share_one_tool_in_the_agents_order() -> None:
    config = live_config(_persona(), handle=None)
    assert config.tools is not None
    (tool,) = config.tools
    assert tool.function_declarations is not None
    names = [d.name for d in tool.function_declarations]
    assert names == ["handoff_conversation", "lookup_order", "end_call", "transfer_call"]
    end_call, transfer = tool.function_declarations[2:]
    assert end_call.parameters is not None and end_call.parameters.required == ["reason"]
    assert transfer.parameters is not None and transfer.parameters.properties is not None
    assert transfer.parameters.properties["destination"].enum == ["billing", "frontdesk"]
    assert transfer.parameters.required == ["destination", "reason"]
    assert transfer.description is not None and "+15551234567" not in transfer.description
    assert "billing (a phone line); frontdesk (a SIP line)" in transfer.description


def test_google_search_stays_a_tool_of_its_own() -> None:
    persona = _persona()
    agent = persona.agent.model_copy(update={"tools": ("google_search", "end_call")})
    config = live_config(AgentPersona(agent), handle=None)
    assert config.tools is not None
    assert [d.name for d in config.tools[0].function_declarations or []] == ["end_call"]
    assert config.tools[1].google_search is not None


def test_the_system_instruction_is_rendered_with_the_calls_variables() -> None:
    persona = _persona()
    agent = persona.agent.model_copy(
        update={
            "system_prompt": "Caller {{caller_number}}; {{ nmae }}.",
            "greeting": "Hi {{carrier}}",
        }
    )
    persona = AgentPersona(agent, variables={"caller_number": "+15550001111", "carrier": "twilio"})
    config = live_config(persona, handle=None)
    assert str(config.system_instruction).startswith("Caller +15550001111; {{ nmae }}.")
    assert persona.greeting() == "Hi twilio"


def test_the_sdk_sends_the_schema_as_parameters_which_gemini_live_reads() -> None:
    """Not parametersJsonSchema: Gemini Live ignores it and calls the tool without arguments."""
    frame = _setup_frame(live_config(_persona(), handle=None))
    assert "tok-live-77aa01" not in frame
    setup = parse_setup(parse_frame(frame))
    by_name = {d["name"]: d for d in setup.function_declarations}
    assert list(by_name) == ["handoff_conversation", "lookup_order", "end_call", "transfer_call"]
    assert "parametersJsonSchema" not in by_name["lookup_order"]
    assert by_name["lookup_order"]["parameters"] == {
        "type": "OBJECT",
        "properties": {"order_id": {"type": "STRING", "description": "digits only"}},
        "propertyOrdering": ["order_id"],
        "required": ["order_id"],
    }
