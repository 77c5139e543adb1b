"""Outbound calls end to end: ``POST /calls`` on the real gateway places the call through the
carrier's fake REST API (Twilio "Create a Call", Telnyx "Dial"), the fake's callee picks up on
the gateway's own webhook, and the call is bridged to the agent as an inbound one is: the
stream carries ``direction=outbound`` and the phase, the variables reach the prompt.

Also the route's refusals (401, 422, 502, 503) and ``gateway dial`` against a running server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from callsim.callers.audio import Silence, render
from callsim.live.script import Step
from gateway import cli
from gateway.agents import AgentGraph, Route
from gateway.web.admission import DIRECTION_QUERY, PHASE_QUERY
from tests.harness import (
    ADMIN_TOKEN,
    TELNYX_CONNECTION_ID,
    TWILIO_ACCOUNT_SID,
    Harness,
    agents,
    running,
)

OWN = "+15550001111"  # the gateway's number: the caller id it dials with
CALLEE = "+15552223333"
ADVISOR_GREETS = agents(
    agent_advisor={
        "system_prompt": "Give concise financial advice. Customer: {{param.customer}}.",
        "greeting": "Introduce yourself to {{param.customer}}.",
    },
)
#: The advisor speaks first (its greeting); the triage agent, if it were reached, would not.
STEPS = [Step(on="text", when="Portfolio advisor", say="Hello, advisor calling.", seconds=0.8)]
CALLEE_SAYS = 2.0  # seconds of the callee's line, then it hangs up


async def post_calls(h: Harness, body: object, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient() as http:
        return await http.post(f"{h.gateway.url}/calls", json=body, headers=headers)


def request_body(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_twilio_outbound_call_starts_at_its_phase_with_its_variables() -> None:
    async with running(steps=STEPS, graph=ADVISOR_GREETS, outbound=True) as h:
        assert h.twilio_api is not None
        h.twilio_api.callee = {"audio": render([Silence(CALLEE_SAYS)]), "linger_s": 0.1}
        request = {"to": CALLEE, "from": OWN, "carrier": "twilio", "phase": "advising",
                   "variables": {"customer": "Ada Lovelace"}}  # fmt: skip
        answer = request_body(await post_calls(h, request))
        result = await h.twilio_api.outbound_result(answer["call_id"])
        await h.calls_finished()
        (conn,) = h.sim.connections
        (create,) = [r for r in h.twilio_api.requests if r.action == "create"]
    assert answer == {"call_id": result.call_sid, "carrier": "twilio", "to": CALLEE,
                      "from": OWN, "status": "queued"}  # fmt: skip
    assert create.path == f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls.json"
    assert create.auth == f"Basic {TWILIO_ACCOUNT_SID}"
    assert (create.body["To"], create.body["From"], create.body["Method"]) == (CALLEE, OWN, "POST")
    assert create.body["Url"].startswith(f"{h.gateway.url}/twilio/voice?")
    # The callee's webhook was signed and accepted; the TwiML's stream says what the call is.
    result.raise_for_violations()
    assert result.webhook_status == 200
    assert result.parameters["direction"] == "outbound"
    assert result.parameters["phase"] == "advising"
    assert result.parameters["param.customer"] == "Ada Lovelace"
    assert (result.parameters["from"], result.parameters["to"]) == (OWN, CALLEE)
    assert not any(name.startswith("param.callbridge") for name in result.parameters)
    # The call started with the advisor, its prompt filled in; the callee heard it speak.
    assert conn.voice == "Charon"
    assert "Customer: Ada Lovelace." in (conn.system_instruction or "")
    assert result.media_bytes_received > 0
    (started,) = h.named("call.started")
    assert started["direction"] == "outbound" and started["agent"] == "agent-advisor"


async def test_telnyx_outbound_call_is_streamed_on_answer_and_routed_by_its_own_number() -> None:
    route = Route(number=OWN, phase="advising")
    graph = AgentGraph(ADVISOR_GREETS.spec.model_copy(update={"routes": (route,)}))
    async with running(steps=STEPS, graph=graph, outbound=True) as h:
        assert h.telnyx_api is not None
        h.telnyx_api.callee = {"speech": [Silence(CALLEE_SAYS)], "linger_s": 0.1}
        request = {"to": CALLEE, "from": OWN, "carrier": "telnyx",
                   "variables": {"customer": "Grace"}}  # fmt: skip
        answer = request_body(await post_calls(h, request))
        result = await h.telnyx_api.outbound_result(answer["call_id"])
        await h.calls_finished()
        (conn,) = h.sim.connections
        requests = h.telnyx_api.requests
    assert answer["call_id"] == result.call_sid
    (dial,) = [r for r in requests if r.action == "dial"]
    assert dial.body["connection_id"] == TELNYX_CONNECTION_ID
    assert (dial.body["to"], dial.body["from"]) == (CALLEE, OWN)
    assert dial.body["webhook_url"].startswith(f"{h.gateway.url}/telnyx/call-control?")
    # call.initiated of an outgoing call is not answered (the fake calls that a violation).
    assert "answer" not in [r.action for r in requests]
    result.raise_for_violations()
    assert [w.event for w in result.webhooks][:2] == ["call.initiated", "call.answered"]
    assert result.parameters["direction"] == "outbound"
    assert "phase" not in result.parameters
    assert result.parameters["param.customer"] == "Grace"
    # No phase asked for: the route of the gateway's own number (from) chose the advisor.
    assert conn.voice == "Charon"
    assert "Customer: Grace." in (conn.system_instruction or "")
    assert result.media_bytes_received > 0


async def test_the_admin_token_is_required() -> None:
    request = {"to": CALLEE, "from": OWN, "carrier": "twilio"}
    async with running(outbound=True) as h:
        missing = await post_calls(h, request, token=None)
        wrong = await post_calls(h, request, token="x" * 30)
        assert h.twilio_api is not None
        placed = [r for r in h.twilio_api.requests if r.action == "create"]
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert placed == []


async def test_without_an_admin_token_there_is_no_route() -> None:
    async with running() as h, httpx.AsyncClient() as http:
        answer = await http.post(f"{h.gateway.url}/calls", json={})
    assert answer.status_code in (404, 405)


BAD_REQUESTS = [
    ([1, 2], "JSON object"),
    ({"to": "5552223333", "from": OWN}, "'to' must be an E.164"),
    ({"to": CALLEE, "from": "+1 555 000"}, "'from' must be an E.164"),
    ({"to": CALLEE, "from": OWN, "carrier": "vonage"}, "carrier must be one of"),
    ({"to": CALLEE, "from": OWN, "phase": "billing"}, "unknown phase"),
    ({"to": CALLEE, "from": OWN, "variables": ["a"]}, "variables must be an object"),
    ({"to": CALLEE, "from": OWN, "variables": {"a": 1}}, "variable 'a' must be a string"),
    ({"to": CALLEE, "from": OWN, "variables": {"callbridge:phase": "triage"}}, "variable name"),
    ({"to": CALLEE, "from": OWN, "variables": {f"v{i}": "x" for i in range(17)}}, "at most 16"),
    ({"to": CALLEE, "from": OWN, "variables": {"long": "x" * 500}}, "too long"),
    ({"to": CALLEE, "from": OWN, "tag": "x"}, "unknown field 'tag'"),
]


async def test_bad_requests_get_422_with_the_reason() -> None:
    async with running(outbound=True) as h:
        answers = [await post_calls(h, body) for body, _ in BAD_REQUESTS]
        assert h.twilio_api is not None and h.telnyx_api is not None
        placed = [r for r in h.twilio_api.requests + h.telnyx_api.requests if r.action]
    for (_, reason), answer in zip(BAD_REQUESTS, answers, strict=True):
        assert answer.status_code == 422, answer.text
        assert reason in answer.json()["detail"]
    assert placed == []


async def test_a_carrier_not_served_is_refused() -> None:
    async with running(outbound=True, carriers="twilio") as h:
        answer = await post_calls(h, {"to": CALLEE, "from": OWN, "carrier": "telnyx"})
    assert answer.status_code == 422
    assert "not served" in answer.json()["detail"]


async def test_503_when_the_carriers_api_is_not_configured_or_the_gateway_drains() -> None:
    async with running(admin_api_token=ADMIN_TOKEN) as h:
        twilio = await post_calls(h, {"to": CALLEE, "from": OWN, "carrier": "twilio"})
        telnyx = await post_calls(h, {"to": CALLEE, "from": OWN, "carrier": "telnyx"})
        h.gateway.state.draining = True
        draining = await post_calls(h, {"to": CALLEE, "from": OWN})
        h.gateway.state.draining = False
    assert twilio.status_code == 503
    assert "TWILIO_AUTH_TOKEN and TWILIO_ACCOUNT_SID" in twilio.json()["detail"]
    assert telnyx.status_code == 503
    assert "TELNYX_API_KEY and TELNYX_CONNECTION_ID" in telnyx.json()["detail"]
    assert draining.status_code == 503 and "draining" in draining.json()["detail"]


async def test_a_carrier_refusal_is_a_502_with_its_code_only() -> None:
    # Twilio refuses a token it no longer knows (20003: rotated in the console), Telnyx an
    # application the key does not own (10015, the fake's assumed code).
    async with running(outbound=True, telnyx_connection_id="999") as h:
        assert h.twilio_api is not None
        h.twilio_api.auth_token = "rotated-token-0123456789"
        twilio = await post_calls(h, {"to": CALLEE, "from": OWN, "carrier": "twilio"})
        telnyx = await post_calls(h, {"to": CALLEE, "from": OWN, "carrier": "telnyx"})
    assert twilio.status_code == 502
    assert twilio.json()["detail"] == "Twilio refused the call (create call: HTTP 401 20003)"
    assert telnyx.status_code == 502
    assert telnyx.json()["detail"] == "Telnyx refused the call (dial: HTTP 422 10015)"


# --- gateway dial ------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    try:
        cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


async def test_gateway_dial_places_a_call_on_a_running_gateway(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)
    async with running(steps=STEPS, graph=ADVISOR_GREETS, outbound=True) as h:
        assert h.twilio_api is not None
        h.twilio_api.callee = {"audio": render([Silence(1.0)]), "linger_s": 0.1}
        argv = ["dial", "--to", CALLEE, "--from", OWN, "--carrier", "twilio",
                "--phase", "advising", "--var", "customer=Ada", "--url", h.gateway.url]  # fmt: skip
        # The CLI blocks (sync HTTP): in a thread, so this loop keeps serving the gateway.
        code = await asyncio.to_thread(run_cli, argv)
        # The gateway's own log lines share stdout here: the CLI's answer is the JSON line.
        out = capsys.readouterr().out.splitlines()
        printed = json.loads(next(line for line in out if line.startswith("{")))
        result = await h.twilio_api.outbound_result(printed["call_id"])
        await h.calls_finished()
        bad = await asyncio.to_thread(run_cli, [*argv[:-4], "--phase", "nope", *argv[-2:]])
        refused = capsys.readouterr().err
    assert code == 0
    assert printed["status"] == "queued" and printed["carrier"] == "twilio"
    assert result.parameters["param.customer"] == "Ada"
    assert result.parameters["phase"] == "advising"
    assert bad == 1
    assert "HTTP 422" in refused and "unknown phase" in refused


def test_gateway_dial_needs_the_admin_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ADMIN_API_TOKEN", raising=False)
    code = run_cli(["dial", "--to", CALLEE, "--from", OWN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "ADMIN_API_TOKEN" in err[0]


def test_gateway_dial_says_why_it_could_not_reach_the_gateway(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)
    code = run_cli(["dial", "--to", CALLEE, "--from", OWN, "--url", "http://127.0.0.1:9"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


def test_the_reserved_query_names_are_not_variable_names() -> None:
    from gateway.web.admission import variable_errors, webhook_parameters

    for name in (DIRECTION_QUERY, PHASE_QUERY):
        assert variable_errors({name: "x"}) is not None
        assert webhook_parameters([(name, "x")]) == {}
