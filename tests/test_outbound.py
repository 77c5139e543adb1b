"""The parts of outbound calls below the route: the REST clients against the carriers' fakes,
the webhook query that carries a placed call's phase and variables, and where a call starts."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from callsim.telnyx.api import CallRecord, TelnyxApiSimulator, apply_command
from callsim.twilio.api import TwilioApiSimulator
from gateway.agents import AgentGraph, Route
from gateway.carriers.base import own_number
from gateway.carriers.telnyx_api import CallControl, TelnyxApiError
from gateway.carriers.twilio_api import TwilioApiError, TwilioRest
from gateway.web.admission import (
    gateway_parameters,
    outbound_query,
    variable_errors,
    webhook_parameters,
)
from tests.harness import agents, serving

ACCOUNT = "AC" + "1" * 32
TOKEN = "twilio-token-0123456789"
#: Nobody listens here: the fakes' callees fail to reach it and end at once.
NOWHERE = "http://127.0.0.1:9/webhook"


# --- the webhook query --------------------------------------------------------------------------


def test_the_query_carries_the_variables_as_params_and_the_phase_apart() -> None:
    query = outbound_query({"customer": "Ada & co", "order.id": "42"}, "advising")
    pairs = parse_qsl(query)
    assert webhook_parameters(pairs) == {"param.customer": "Ada & co", "param.order.id": "42"}
    assert gateway_parameters(pairs) == {"direction": "outbound", "phase": "advising"}
    assert gateway_parameters(parse_qsl(outbound_query({}, None))) == {"direction": "outbound"}


def test_an_inbound_webhook_query_has_no_gateway_parameters() -> None:
    pairs = [("campaign", "spring"), ("direction", "outbound"), ("phase", "advising")]
    assert gateway_parameters(pairs) == {}  # only the reserved names count
    assert gateway_parameters([("callbridge:direction", "sideways")]) == {}


@pytest.mark.parametrize(
    "variables",
    [
        {"callbridge:phase": "x"},  # a reserved name: outside the name pattern
        {"": "x"},
        {"a b": "x"},
        {"n" * 65: "x"},
        {"a": None},
        {f"v{i}": "x" for i in range(17)},
        "customer=Ada",
    ],
)
def test_variables_that_could_not_travel_intact_are_refused(variables: object) -> None:
    assert variable_errors(variables) is not None


def test_variables_within_the_limits_pass() -> None:
    assert variable_errors({}) is None
    assert variable_errors({f"v{i}": "x" * 400 for i in range(16)}) is None


# --- where a call starts ------------------------------------------------------------------------


def test_a_phase_wins_over_the_route_and_an_unknown_one_is_passed_over() -> None:
    base = agents()
    graph = AgentGraph(
        base.spec.model_copy(update={"routes": (Route(number="+15550001111", phase="advising"),)})
    )
    assert graph.start_stage("+15550001111").phase == "advising"
    assert graph.start_stage("+15550001111", phase="triage").phase == "triage"
    assert graph.start_stage(None, phase="advising").phase == "advising"
    assert graph.start_stage("+15550001111", phase="gone").phase == "advising"
    assert graph.start_stage(None, phase="gone").phase == "triage"


def test_routes_match_the_gateways_own_number_of_a_call() -> None:
    inbound = {"from": "+15552223333", "to": "+15550001111"}
    outbound = {"from": "+15550001111", "to": "+15552223333", "direction": "outbound"}
    assert own_number(inbound) == own_number(outbound) == "+15550001111"


# --- the REST clients against the fakes ---------------------------------------------------------


async def test_twilio_create_call_returns_the_sid_the_fake_made() -> None:
    api = TwilioApiSimulator(auth_token=TOKEN)
    async with serving(api.app) as base:
        rest = TwilioRest(TOKEN, base_url=base)
        try:
            sid = await rest.create_call(ACCOUNT, "+15552223333", "+15550001111", NOWHERE)
            with pytest.raises(TwilioApiError, match="HTTP 400 21211"):
                await rest.create_call(ACCOUNT, "+1", "+15550001111", NOWHERE)
            with pytest.raises(TwilioApiError, match="HTTP 401 20003"):
                await TwilioRest("wrong", base_url=base).create_call(
                    ACCOUNT, "+15552223333", "+15550001111", NOWHERE
                )
            callee = await api.outbound_result(sid)
        finally:
            await rest.aclose()
    create = api.requests[0]
    assert create.status == 201 and create.action == "create"
    assert create.body == {"To": "+15552223333", "From": "+15550001111", "Url": NOWHERE,
                           "Method": "POST"}  # fmt: skip
    assert callee.call_sid == sid and callee.account_sid == ACCOUNT
    assert callee.webhook_url == NOWHERE  # the callee asked the Url for its TwiML


async def test_telnyx_dial_returns_the_call_control_id_the_fake_made() -> None:
    async with TelnyxApiSimulator(connection_id="1234") as api:
        control = CallControl(api.api_key, base_url=api.base_url)
        try:
            call_id = await control.dial("1234", "+15552223333", "+15550001111", NOWHERE)
            with pytest.raises(TelnyxApiError, match="HTTP 422 10015"):
                await control.dial("9999", "+15552223333", "+15550001111", NOWHERE)
            with pytest.raises(TelnyxApiError, match="HTTP 401"):
                await CallControl("wrong", base_url=api.base_url).dial(
                    "1234", "+15552223333", "+15550001111", NOWHERE
                )
            callee = await api.outbound_result(call_id)
        finally:
            await control.aclose()
    dial = api.requests[0]
    assert dial.status == 200 and dial.action == "dial"
    assert dial.body["webhook_url"] == NOWHERE and dial.body["connection_id"] == "1234"
    assert callee.call_sid == call_id
    assert urlsplit(callee.webhook_url).port == 9


def test_the_fake_refuses_to_answer_an_outgoing_call() -> None:
    call = CallRecord("v3:x", direction="outgoing")
    out = apply_command(call, "answer", {})
    assert out.status == 422
    assert "answered by the callee" in out.violations[0]
