"""HTTP tools, prompt variables and routes through the real gateway: the Live simulator calls a
tool the way Gemini does, the gateway calls a local tool server over HTTP, and the answer goes
back to the model as the function response with the call's id."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callsim.callers.audio import Silence, Tone
from callsim.live.records import ConnectionRecord
from callsim.live.script import Step, ToolCallSpec
from callsim.tools import ToolServer
from gateway.agents import AgentGraph, parse_agents
from tests.harness import Harness, running

TOKEN = "orders-secret-token-0123456789"

AGENTS = """
tools:
  - name: lookup_order
    description: Look up an order's status by its number.
    parameters:
      type: object
      properties:
        order_id: {{type: string, description: The order number, digits only}}
      required: [order_id]
    url: {url}/orders/lookup
    method: {method}
    headers:
      Authorization: "Bearer ${{ORDERS_API_TOKEN}}"
    timeout_s: {timeout_s}
agents:
  - id: agent-support
    role: Support agent
    system_prompt: >-
      Help the caller from {{{{caller_number}}}} who dialled {{{{called_number}}}} on
      {{{{carrier}}}} (call {{{{call_id}}}}, campaign {{{{param.campaign}}}}, {{{{unknown}}}}),
      JSON stays {{"a": 1}}.
    tools: [lookup_order, end_call]
  - id: agent-sales
    role: Sales agent
    system_prompt: Sell to {{{{caller_number}}}}.
    fallback: {{say: "Sales cannot take your call right now."}}
pipeline:
  - {{phase: support, agent_id: agent-support, next: sales}}
  - {{phase: sales, agent_id: agent-sales}}
routes:
  - {{number: "+15550009999", phase: sales}}
"""


def support_graph(url: str, *, method: str = "POST", timeout_s: float = 8) -> AgentGraph:
    text = AGENTS.format(url=url, method=method, timeout_s=timeout_s)
    return parse_agents(text, environ={"ORDERS_API_TOKEN": TOKEN})


LOOKUP = ToolCallSpec("lookup_order", {"order_id": "A17"})
ASK = [Step(on="caller", hear="Where is my order?", say="Let me check.", seconds=0.5,
            tool_call=LOOKUP, then_say="It has shipped.", then_seconds=0.6)]  # fmt: skip


@contextlib.asynccontextmanager
async def gateway_with_tools(
    steps: list[Step], **graph_options: Any
) -> AsyncIterator[tuple[Harness, ToolServer]]:
    async with contextlib.AsyncExitStack() as stack:
        tools = await stack.enter_async_context(ToolServer())
        graph = support_graph(tools.url, **graph_options)
        h = await stack.enter_async_context(running(steps=steps, graph=graph))
        yield h, tools


def tool_call_ids(h: Harness, conn: ConnectionRecord) -> list[str]:
    session = h.sim.sessions[conn.session_id or 0]
    return [str(e.data["id"]) for e in session.history if e.kind == "tool_call" and e.data]


async def test_an_http_tool_gets_the_arguments_and_headers_and_its_json_goes_back() -> None:
    async with gateway_with_tools(ASK) as (h, tools):
        result = await h.call([Tone(300, 0.6), Silence(0.4)], linger_s=2.5)
        conn = h.sim.connections[0]
        (request,) = tools.requests
    assert (request.method, request.path, request.body) == ("POST", "/orders/lookup",
                                                            {"order_id": "A17"})  # fmt: skip
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-callbridge-call-id"] == result.call_sid
    assert request.headers["x-callbridge-agent"] == "agent-support"
    (response,) = conn.tool_responses
    assert response["id"] == tool_call_ids(h, conn)[0]
    assert response["name"] == "lookup_order"
    assert response["response"] == {"order_id": "A17", "status": "shipped", "eta": "tomorrow"}
    (done,) = h.named("tool.completed")
    assert (done["tool"], done["ok"], done["status"]) == ("lookup_order", True, 200)


async def test_a_get_tool_sends_the_arguments_as_the_query() -> None:
    async with gateway_with_tools(ASK, method="GET") as (h, tools):
        await h.call([Tone(300, 0.6), Silence(0.4)], linger_s=2.5)
        (request,) = tools.requests
    assert (request.method, request.query) == ("GET", {"order_id": ["A17"]})


async def test_a_slow_tool_does_not_stall_caller_audio() -> None:
    async with gateway_with_tools(ASK) as (h, tools):
        tools.respond("/orders/lookup", {"status": "shipped"}, delay_s=3.0)
        await h.call([Tone(300, 0.6), Silence(0.4)], linger_s=5.0)
        conn = h.sim.connections[0]
        (request,) = tools.requests
    (response,) = conn.tool_responses
    assert response["response"] == {"status": "shipped"}
    # While the tool ran (3 s), caller audio kept reaching the model every 20 ms or so.
    during = [t for t, _ in conn.audio_in_chunks if request.time < t < request.time + 3.0]
    assert len(during) >= 140  # 150 frames in 3 s
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 0.2


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ({"status": 503, "json": {"error": "maintenance"}}, "HTTP 503"),
        ({"delay_s": 2.0}, "did not answer within"),
    ],
)
async def test_a_failing_tool_is_an_error_answer_and_the_call_goes_on(
    reply: dict[str, Any], words: str
) -> None:
    async with gateway_with_tools(ASK, timeout_s=0.5) as (h, tools):
        tools.respond("/orders/lookup", **reply)
        result = await h.call([Tone(300, 0.6), Silence(0.4)], linger_s=3.5)
        conn = h.sim.connections[0]
    (response,) = conn.tool_responses
    assert words in response["response"]["error"]
    assert result.closed_by == "caller"  # the call went on to the caller's own hang-up
    assert "It has shipped." in " ".join(e["text"] for e in h.named("transcript"))
    (done,) = h.named("tool.completed")
    assert done["ok"] is False


async def test_a_tool_unreachable_is_an_error_answer() -> None:
    async with ToolServer() as tools:
        url = tools.url
    graph = support_graph(url)  # the server is gone: connection refused
    async with running(steps=ASK, graph=graph) as h:
        await h.call([Tone(300, 0.6), Silence(0.4)], linger_s=2.0)
        (response,) = h.sim.connections[0].tool_responses
    assert "could not reach" in response["response"]["error"]


async def test_variables_fill_the_prompt_the_model_receives() -> None:
    async with gateway_with_tools([]) as (h, _):
        result = await h.call(
            [Silence(0.3)], linger_s=0.2, from_number="+14155550123",
            webhook_path="/twilio/voice?campaign=spring",
        )  # fmt: skip
        conn = h.sim.connections[0]
    assert conn.system_instruction.startswith(
        f"Help the caller from +14155550123 who dialled +18005550100 on twilio (call "
        f'{result.call_sid}, campaign spring, {{{{unknown}}}}), JSON stays {{"a": 1}}.'
    )
    names = [d["name"] for d in conn.function_declarations]
    assert names == ["handoff_conversation", "lookup_order", "end_call"]


async def test_a_route_starts_a_call_to_its_number_in_its_phase() -> None:
    async with gateway_with_tools([]) as (h, _):
        routed_call = await h.call([Silence(0.3)], linger_s=0.2, to_number="+15550009999")
        default_call = await h.call([Silence(0.3)], linger_s=0.2, to_number="+15550008888")
        routed, default = h.sim.connections[0], h.sim.connections[1]
    assert routed.system_instruction.startswith("Sell to +14155550123.")
    assert "Role: Sales agent" in routed.system_instruction
    assert "Role: Support agent" in default.system_instruction
    started = [e["agent"] for e in h.named("call.started")]
    assert started == ["agent-sales", "agent-support"]
    # The opening fallback (after </Connect>) is the routed stage's agent's.
    assert "Sales cannot take your call" in routed_call.twiml
    assert "Sales cannot take your call" not in default_call.twiml
