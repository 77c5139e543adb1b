"""HTTP tools (gateway/call/http_tools.py) against a real fake API on a loopback port: what the
API receives, what the model hears back, and what the log never holds."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from callsim.tools import ORDERS_PATH, ToolServer
from gateway.call.http_tools import HttpToolRunner, HttpToolSpec, ToolOutcome, query_params
from tests.conftest import StructuredLogs
from tests.servers import until

SECRET = "Bearer sk-live-7c1f0e9a5b"


@dataclass(frozen=True)
class Tool:
    """What gateway.agents.HttpTool gives the runner."""

    name: str
    url: str
    method: str = "POST"
    timeout_s: float = 10.0
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": SECRET})

    def header_values(self) -> dict[str, str]:
        return dict(self.headers)


@pytest.fixture
async def server() -> AsyncIterator[ToolServer]:
    async with ToolServer() as tool_server:
        yield tool_server


@pytest.fixture
async def runner() -> AsyncIterator[HttpToolRunner]:
    tool_runner = HttpToolRunner()
    yield tool_runner
    await tool_runner.aclose()


async def run(runner: HttpToolRunner, tool: HttpToolSpec, arguments: Any) -> ToolOutcome:
    return await runner.run(tool, arguments, call_id="CA" + "1" * 32, agent_id="support")


async def test_a_post_sends_the_arguments_as_json_with_the_call_headers(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    tool = Tool("orders", server.url + ORDERS_PATH)
    # The configured headers cannot pass for the gateway's own.
    tool.headers["x-callbridge-call-id"] = "forged"
    outcome = await run(runner, tool, {"order_id": "A-17", "items": [1, 2]})
    assert outcome.response == {"order_id": "A-17", "status": "shipped", "eta": "tomorrow"}
    assert (outcome.ok, outcome.status) == (True, 200)
    assert outcome.ms > 0
    (request,) = server.requests
    assert (request.method, request.path, request.query) == ("POST", ORDERS_PATH, {})
    assert request.body == {"order_id": "A-17", "items": [1, 2]}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == SECRET
    assert request.headers["x-callbridge-call-id"] == "CA" + "1" * 32
    assert request.headers["x-callbridge-agent"] == "support"


async def test_a_get_sends_the_arguments_as_the_query(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    tool = Tool("orders", server.url + ORDERS_PATH + "?key=abc", method="GET")
    arguments = {"order_id": "A-17", "tags": ["a", "b"], "filter": {"x": 1}, "all": True,
                 "limit": 5, "missing": None}  # fmt: skip
    outcome = await run(runner, tool, arguments)
    assert outcome.response["order_id"] == "A-17"
    (request,) = server.requests
    assert request.method == "GET"
    assert request.body is None
    assert request.query == {"key": ["abc"], "order_id": ["A-17"], "tags": ["a", "b"],
                             "filter": ['{"x":1}'], "all": ["true"], "limit": ["5"]}  # fmt: skip
    assert request.headers["x-callbridge-agent"] == "support"


def test_query_params_spell_every_json_value() -> None:
    assert query_params({"n": 1.5, "b": False, "l": [{"a": None}, 2], "s": "x y"}) == [
        ("n", "1.5"), ("b", "false"), ("l", '{"a":null}'), ("l", "2"), ("s", "x y")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "response"),
    [
        ({"json": {"balance": 400, "currency": "USD"}}, {"balance": 400, "currency": "USD"}),
        ({"json": [1, 2, 3]}, {"result": [1, 2, 3]}),
        ({"json": "done"}, {"result": "done"}),
        ({"text": "Order A-17 has shipped."}, {"result": "Order A-17 has shipped."}),
        ({"status": 204}, {"result": "ok"}),
    ],
)
async def test_a_2xx_answer_becomes_an_object_for_the_model(
    server: ToolServer, runner: HttpToolRunner, reply: dict[str, Any], response: dict[str, Any]
) -> None:
    server.respond("/api", **reply)
    outcome = await run(runner, Tool("orders", server.url + "/api"), {})
    assert outcome.response == response
    assert outcome.ok


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"status": 503}, "the orders service answered HTTP 503"),
        ({"status": 500, "text": "Traceback ..."}, "the orders service answered HTTP 500"),
        ({"status": 404, "json": {"error": "no order A-17"}},
         "the orders service answered HTTP 404: no order A-17"),
        ({"status": 422, "json": {"error": {"message": "order_id is malformed"}}},
         "the orders service answered HTTP 422: order_id is malformed"),
        ({"status": 400, "json": {"detail": "x" * 500}}, "the orders service answered HTTP 400"),
    ],
)  # fmt: skip
async def test_a_non_2xx_answer_is_an_error_in_words(
    server: ToolServer, runner: HttpToolRunner, reply: dict[str, Any], error: str
) -> None:
    server.respond("/api", **reply)
    outcome = await run(runner, Tool("orders", server.url + "/api"), {})
    assert outcome.response == {"error": error}
    assert (outcome.ok, outcome.status) == (False, reply["status"])


async def test_a_redirect_is_not_followed(server: ToolServer, runner: HttpToolRunner) -> None:
    """Following it would hand the Authorization header to the host it names."""
    server.respond("/api", status=302, headers={"Location": server.url + "/elsewhere"})
    outcome = await run(runner, Tool("orders", server.url + "/api"), {})
    assert outcome.response == {
        "error": "the orders service answered HTTP 302, a redirect (not followed)"
    }
    assert not outcome.ok
    assert [r.path for r in server.requests] == ["/api"]


async def test_a_slow_service_is_cut_off_at_its_timeout(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    server.respond("/api", {"late": True}, delay_s=1.0)
    started = time.monotonic()
    outcome = await run(runner, Tool("orders", server.url + "/api", timeout_s=0.3), {})
    assert time.monotonic() - started < 0.9
    assert outcome.response == {"error": "the orders service did not answer within 0.3 s"}
    assert (outcome.ok, outcome.status) == (False, None)


async def test_a_slow_trickle_is_bounded_by_the_timeout_as_a_whole(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    """Every chunk comes soon after the last; only a bound on the whole request ends it."""
    server.respond("/api", failure="oversize", size=60_000, trickle_s=0.3)
    started = time.monotonic()
    outcome = await run(runner, Tool("orders", server.url + "/api", timeout_s=0.5), {})
    assert time.monotonic() - started < 1.2
    assert outcome.response["error"] == "the orders service did not answer within 0.5 s"


async def test_an_unreachable_service_is_an_error(runner: HttpToolRunner) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = await run(runner, Tool("orders", f"http://127.0.0.1:{port}/api"), {})
    assert outcome.response == {"error": "could not reach the orders service"}
    assert (outcome.ok, outcome.status) == (False, None)


async def test_a_connection_closed_mid_answer_is_an_error(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    server.respond("/api", failure="drop")
    outcome = await run(runner, Tool("orders", server.url + "/api"), {})
    assert outcome.response == {"error": "the connection to the orders service broke off"}
    assert not outcome.ok


async def test_a_huge_answer_is_cut_at_64_kb_without_reading_the_rest(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    """1 MB trickled at 16 KB per 50 ms would take 3 s to read whole: the runner stops at 64 KB
    and hands the model the text it read (cut JSON is not JSON)."""
    server.respond("/api", failure="oversize", size=1024 * 1024, trickle_s=0.05)
    started = time.monotonic()
    outcome = await run(runner, Tool("orders", server.url + "/api"), {})
    assert time.monotonic() - started < 1.5
    assert outcome.ok
    assert outcome.response["note"] == "the response was cut at 64 KB"
    assert len(outcome.response["result"]) == 64 * 1024
    assert outcome.response["result"].startswith('{"padding": "xxx')


async def test_an_answer_of_exactly_64_kb_is_whole(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    server.respond("/api", failure="oversize", size=64 * 1024)
    outcome = await run(runner, Tool("orders", server.url + "/api"), {})
    assert set(outcome.response) == {"padding"}


async def test_arguments_that_are_not_an_object_are_refused(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    outcome = await run(runner, Tool("orders", server.url + "/api"), ["A-17"])
    assert outcome.response == {"error": "the arguments must be a JSON object"}
    assert (outcome.ok, outcome.status) == (False, None)
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "headers", "method"),
    [
        ("http://[::1/api", {}, "POST"),
        ("{server}/api", {"X-Key": "bad\r\nvalue"}, "POST"),
        ("{server}/api", {}, "PUT"),
    ],
)
async def test_a_broken_configuration_is_an_error_not_an_exception(
    server: ToolServer, runner: HttpToolRunner, url: str, headers: dict[str, str], method: str
) -> None:
    tool = Tool("orders", url.format(server=server.url), method=method, headers=headers)
    outcome = await run(runner, tool, {})
    assert outcome.response == {"error": "the orders tool failed"}
    assert server.requests == []


async def test_cancelling_a_tool_call_cancels_the_request(
    server: ToolServer, runner: HttpToolRunner
) -> None:
    """The bridge cancels a tool when its call ends or moves: the cancellation must come
    through, and the runner must serve the next call as before."""
    server.respond("/slow", {"late": True}, delay_s=5.0)
    task = asyncio.create_task(run(runner, Tool("orders", server.url + "/slow"), {}))
    await until(lambda: len(server.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    outcome = await run(runner, Tool("orders", server.url + ORDERS_PATH), {"order_id": "B-2"})
    assert outcome.response["order_id"] == "B-2"


@pytest.fixture
def httpx_at_warning() -> Iterator[None]:
    """As production holds it (gateway.logs): httpx's INFO lines carry whole URLs."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("httpx_at_warning")
async def test_one_log_line_per_call_and_no_secret_argument_or_answer_in_it(
    server: ToolServer, runner: HttpToolRunner, structured_logs: StructuredLogs
) -> None:
    server.respond("/api", {"balance": "four hundred dollars"})
    tool = Tool("balance", server.url + "/api?api_key=qk-0123456789", method="GET")
    await run(runner, tool, {"question": "my card number is 4111 1111"})
    await run(runner, Tool("balance", server.url + "/missing"), {"question": "4111 1111"})
    ok, failed = structured_logs.events("call.tool_http")
    assert ok["target"] == server.url + "/api"
    assert (ok["name"], ok["method"], ok["status"], ok["outcome"]) == ("balance", "GET", 200, "ok")
    assert ok["agent"] == "support"
    assert ok["ms"] > 0
    assert (failed["status"], failed["outcome"], failed["level"]) == (404, "http_status", "warning")
    # uvicorn's lines are the fake API's own access log (a real API's is on its own host).
    ours = "\n".join(r.getMessage() for r in structured_logs.records if r.name != "uvicorn.access")
    for secret in (SECRET, "sk-live", "qk-0123456789", "4111", "four hundred"):
        assert secret not in ours
