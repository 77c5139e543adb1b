"""The fake Twilio Calls update endpoint (callsim/twilio/api.py) and the verbs a TwiML/TeXML
document runs (callsim/twilio/webhook.py), which the callers record as ``after_stream``."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from callsim.callers.result import ApiRequest
from callsim.twilio.api import TwilioApiSimulator
from callsim.twilio.webhook import document_verbs, update_verbs, verbs_after_connect

ACCOUNT, CALL, TOKEN = "AC" + "1" * 32, "CA" + "2" * 32, "auth-token-xyz"
PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json"


def client(api: TwilioApiSimulator, token: str = TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app),
        base_url="https://api.twilio.test",
        auth=(ACCOUNT, token),
    )


def test_verbs_of_a_document_and_after_connect() -> None:
    doc = (
        "<Response><Connect><Stream url='wss://x'/></Connect><Say>Sorry.</Say><Hangup/></Response>"
    )
    assert verbs_after_connect(doc) == ["Say:Sorry.", "Hangup"]
    assert verbs_after_connect("<Response><Hangup/></Response>") == []
    assert verbs_after_connect("not xml") == []
    dial = "<Response><Dial>+15551234567</Dial><Dial><Sip>sip:a@b</Sip></Dial></Response>"
    assert document_verbs(dial) == ["Dial:+15551234567", "Sip:sip:a@b"]
    assert update_verbs({"Status": "completed"}) == ["Hangup"]
    assert update_verbs({"Texml": "<Response><Hangup/></Response>"}, "Texml") == ["Hangup"]
    with pytest.raises(ValueError, match="expected <Response>"):
        update_verbs({"Twiml": "<Dial>+1</Dial>"})
    with pytest.raises(ValueError, match="needs Twiml, Url or Status"):
        update_verbs({})


async def test_an_update_of_a_registered_call_answers_the_call_and_tells_its_caller() -> None:
    api = TwilioApiSimulator(auth_token=TOKEN)
    heard: list[tuple[ApiRequest, list[str]]] = []
    api.register(ACCOUNT, CALL, lambda request, verbs: heard.append((request, verbs)))
    async with client(api) as http:
        response = await http.post(PATH, data={"Twiml": "<Response><Hangup/></Response>"})
        again = await http.post(PATH, data={"Status": "completed"})
    await asyncio.sleep(0)  # the listener is called soon, in this loop
    assert response.status_code == 200
    assert response.json()["sid"] == CALL and response.json()["status"] == "completed"
    (request, verbs), = heard  # fmt: skip
    assert verbs == ["Hangup"] and request.auth == f"Basic {ACCOUNT}"
    assert request.body == {"Twiml": "<Response><Hangup/></Response>"}
    # The call is over: Twilio refuses to redirect it.
    assert again.status_code == 400 and again.json()["code"] == 21220
    assert api.violations == []


async def test_a_dial_keeps_the_call_in_progress() -> None:
    api = TwilioApiSimulator(auth_token=TOKEN)
    api.register(ACCOUNT, CALL)
    async with client(api) as http:
        response = await http.post(PATH, data={"Twiml": "<Response><Dial>+1555</Dial></Response>"})
    assert response.json()["status"] == "in-progress"


async def test_wrong_credentials_unknown_calls_and_empty_updates() -> None:
    api = TwilioApiSimulator(auth_token=TOKEN)
    api.register(ACCOUNT, CALL)
    async with client(api, token="wrong") as bad, client(api) as good:
        denied = await bad.post(PATH, data={"Status": "completed"})
        unknown = await good.post(PATH.replace(CALL, "CA" + "9" * 32), data={"Status": "completed"})
        empty = await good.post(PATH, data={"Method": "POST"})
    assert (denied.status_code, denied.json()["code"]) == (401, 20003)
    assert (unknown.status_code, unknown.json()["code"]) == (404, 20404)
    assert empty.status_code == 400
    assert [r.status for r in api.requests] == [401, 404, 400]
    assert [v.partition(":")[0] for v in api.violations] == ["api-unauthorized", "api-bad-request"]
    assert all(TOKEN not in r.auth and "wrong" not in r.auth for r in api.requests)
