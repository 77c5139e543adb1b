"""The carrier side of the agent's end_call and transfer (issue 11): the hooks each route
builds, run against a live call on the real gateway with the carrier's fake REST API, and the
stream parameters (``from``, ``to``, ``param.*``, TeXML's ``account_sid``) every mode carries.

The bridge does not call the hooks here (that is its own change); the tests call them with
the call's real ``StreamStarted``, as the bridge will, and check what the caller then got: the
stream ended by the carrier and the new markup run, never the apology after ``</Connect>``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import httpx
import pytest

from callsim.callers.audio import Silence, render
from callsim.callers.result import CallResult
from callsim.callers.telnyx import TelnyxCaller
from callsim.callers.twilio import TwilioCaller
from gateway.audio.transcode import PCMU_8K
from gateway.call.hooks import CallActionError
from gateway.carriers.base import StreamStarted
from gateway.carriers.markup import dial_document
from gateway.carriers.telnyx import TelnyxCodec
from gateway.carriers.twilio_api import TwilioRest
from gateway.web.admission import webhook_parameters
from gateway.web.state import GatewayState
from gateway.web.telnyx import telnyx_call_actions
from gateway.web.twilio import twilio_call_actions
from tests.harness import TWILIO_AUTH_TOKEN, Carrier, Harness, running
from tests.servers import until

TEXML = Carrier("telnyx", "PCMU")
CALL_CONTROL = Carrier("telnyx", "PCMU", "call-control")


def started_call(h: Harness) -> StreamStarted:
    """The StreamStarted of the gateway's one live call (what the bridge hands the hooks)."""
    (bridge,) = h.gateway.state.calls.values()
    started = bridge._started
    assert started is not None
    return started


async def during_call(h: Harness, caller: TwilioCaller | TelnyxCaller) -> asyncio.Task[CallResult]:
    task = asyncio.create_task(caller.run())
    await until(lambda: any(b._started for b in h.gateway.state.calls.values()))
    return task


def twilio_caller(h: Harness, path: str = "/twilio/voice") -> TwilioCaller:
    return TwilioCaller(
        h.gateway.url,
        audio=render([Silence(4.0)]),
        linger_s=0.1,
        auth_token=TWILIO_AUTH_TOKEN,
        api=h.twilio_api,
        webhook_path=path,
    )


def telnyx_caller(h: Harness, mode: str, path: str = "/telnyx/voice") -> TelnyxCaller:
    return TelnyxCaller(
        h.gateway.url,
        speech=[Silence(4.0)],
        linger_s=0.1,
        mode=mode,  # type: ignore[arg-type]
        api=h.telnyx_api,
        webhook_path=path,
    )


# --- Twilio ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "ran"),
    [(None, ["Hangup"]), ("+15551234567", ["Dial:+15551234567"]),
     ("sip:desk@pbx.example.com", ["Sip:sip:desk@pbx.example.com"])],
)  # fmt: skip
async def test_twilio_hooks_replace_the_twiml_before_the_stream_closes(
    destination: str | None, ran: list[str]
) -> None:
    async with running(carrier_api=True) as h:
        assert h.twilio_api is not None
        call = await during_call(h, twilio_caller(h, "/twilio/voice?campaign=spring"))
        started = started_call(h)
        hooks = twilio_call_actions(h.gateway.state)
        if destination is None:
            await hooks["end_call"](started)
        else:
            await hooks["transfer"](started, destination)
        result = await asyncio.wait_for(call, 5)
        requests = h.twilio_api.requests
    result.raise_for_violations()
    assert result.after_stream == ran  # not the apology after </Connect>
    (update,) = requests
    if destination is None:
        assert update.body == {"Status": "completed"}
    else:
        assert update.body == {"Twiml": dial_document(destination)}
    assert update.status == 200
    assert update.path == (
        f"/2010-04-01/Accounts/{result.account_sid}/Calls/{result.call_sid}.json"
    )
    assert result.api_requests == [update]
    # The stream parameters the bridge reads for prompt variables.
    assert started.account_id == result.account_sid
    assert started.parameters["from"] == "+14155550123"
    assert started.parameters["to"] == "+18005550100"
    assert started.parameters["param.campaign"] == "spring"


async def test_a_twilio_call_the_gateway_closes_itself_runs_the_verbs_after_connect() -> None:
    async with running(carrier_api=True) as h:
        call = await during_call(h, twilio_caller(h))
        (task,) = h.gateway.state.calls
        task.cancel()  # the gateway drops the call: the stream closes, no REST update
        result = await asyncio.wait_for(call, 5)
    assert result.closed_by == "gateway"
    assert result.after_stream[-1] == "Hangup"
    assert result.after_stream[0].startswith("Say:")


async def test_without_twilio_rest_there_are_no_hooks() -> None:
    async with running() as h:
        assert twilio_call_actions(h.gateway.state) == {"end_call": None, "transfer": None}


async def test_a_failed_twilio_update_is_a_short_call_action_error() -> None:
    rest = TwilioRest("secret-token-value", base_url="http://127.0.0.1:9")  # nothing listens
    settings = SimpleNamespace(twilio_account_sid="AC" + "1" * 32)
    state = cast(GatewayState, SimpleNamespace(twilio_rest=rest, settings=settings))
    started = StreamStarted("MZ1", "CA" + "2" * 32, PCMU_8K)
    hooks = twilio_call_actions(state)
    with pytest.raises(CallActionError, match=r"^the transfer could not be placed$"):
        await hooks["transfer"](started, "+15551234567")
    with pytest.raises(CallActionError, match=r"^the call could not be ended$"):
        await hooks["end_call"](started)
    await rest.aclose()


# --- Telnyx ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "ran"),
    [(None, ["Hangup"]), ("+15551234567", ["Dial:+15551234567"]),
     ("sip:desk@pbx.example.com", ["Sip:sip:desk@pbx.example.com"])],
)  # fmt: skip
@pytest.mark.parametrize("carrier", [TEXML, CALL_CONTROL], ids=str)
async def test_telnyx_hooks_end_or_transfer_the_call(
    carrier: Carrier, destination: str | None, ran: list[str]
) -> None:
    async with running(carrier=carrier, carrier_api=True) as h:
        api = h.telnyx_api
        assert api is not None
        call = await during_call(h, telnyx_caller(h, carrier.mode, "/telnyx/voice?campaign=fall"))
        started = started_call(h)
        codec = TelnyxCodec()
        codec.call_control = carrier.mode == "call-control"
        hooks = telnyx_call_actions(h.gateway.state, codec)
        if destination is None:
            await hooks["end_call"](started)
        else:
            await hooks["transfer"](started, destination)
        result = await asyncio.wait_for(call, 8)
    result.raise_for_violations()
    assert result.after_stream == ran
    assert started.parameters["from"] == "+13122010094"
    assert started.parameters["to"] == "+13122123456"
    assert started.parameters["param.campaign"] == "fall"
    acted = [r for r in result.api_requests if r.action in ("texml_update", "hangup", "transfer")]
    if carrier.mode == "texml":
        assert started.account_id == result.account_sid
        (update,) = acted
        assert update.path == f"/v2/texml/Accounts/{result.account_sid}/Calls/{result.call_sid}"
        if destination is None:
            assert update.body == {"Status": "completed"}
        else:
            assert update.body == {"Texml": dial_document(destination)}
    else:
        assert acted[0].action == ("hangup" if destination is None else "transfer")
        if destination is not None:
            assert acted[0].body["to"] == destination


async def test_a_texml_call_the_gateway_closes_itself_runs_the_verbs_after_connect() -> None:
    async with running(carrier=TEXML, carrier_api=True) as h:
        call = await during_call(h, telnyx_caller(h, "texml"))
        (task,) = h.gateway.state.calls
        task.cancel()
        result = await asyncio.wait_for(call, 5)
    assert result.closed_by == "gateway"
    assert result.after_stream[0].startswith("Say:") and result.after_stream[-1] == "Hangup"


async def test_without_a_telnyx_key_there_are_no_hooks() -> None:
    async with running(carrier=TEXML) as h:
        hooks = telnyx_call_actions(h.gateway.state, TelnyxCodec())
    assert hooks == {"end_call": None, "transfer": None}


# --- webhook query parameters ------------------------------------------------------------------


def test_webhook_parameters_are_prefixed_filtered_bounded_and_fit_twilio() -> None:
    query = [("campaign", "spring"), ("bad name", "x"), ("campaign", "second"), ("é", "x"),
             ("long", "v" * 600)] + [(f"p{i}", str(i)) for i in range(30)]  # fmt: skip
    params = webhook_parameters(query)
    assert params["param.campaign"] == "spring"
    assert "param.bad name" not in params and "param.é" not in params
    assert len(params) == 16
    assert len("param.long") + len(params["param.long"]) == 499


async def test_twiml_carries_the_query_as_param_parameters_after_the_gateways_own() -> None:
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        form = {"CallSid": "CA" + "3" * 32, "From": "+15550001111", "To": "+15550002222"}
        twiml = (await http.post("/twilio/voice?token=forged&campaign=x", data=form)).text
    assert '<Parameter name="param.token" value="forged"/>' in twiml
    assert '<Parameter name="param.campaign" value="x"/>' in twiml
    assert '<Parameter name="from" value="+15550001111"/>' in twiml
    assert twiml.count('name="token"') == 1


# --- the TeXML REST client -------------------------------------------------------------------


async def test_texml_rest_against_the_fake_api() -> None:
    from callsim.telnyx.api import TelnyxApiSimulator
    from gateway.carriers.texml_api import TexmlApiError, TexmlRest

    async with TelnyxApiSimulator() as api:
        api.register("v3:live", lambda *_: None, answered=True, account_sid="acct-1")
        good = TexmlRest(api.api_key, api.base_url)
        wrong = TexmlRest("KEY-wrong-secret", api.base_url)
        await good.complete_call("acct-1", "v3:live")
        await good.complete_call("acct-1", "v3:live")  # ended: 90018 is done
        with pytest.raises(TexmlApiError) as failed:
            await wrong.update_call("acct-1", "v3:live", dial_document("+15551234567"))
        with pytest.raises(TexmlApiError, match="not a TeXML account or call id"):
            await good.update_call("acct/../x", "v3:live", dial_document("+15551234567"))
        await good.aclose()
        await wrong.aclose()
        requests = api.requests
    assert "KEY-wrong-secret" not in str(failed.value) and "401" in str(failed.value)
    assert [r.status for r in requests] == [200, 422, 401]
    assert requests[0].body == {"Status": "completed"}
