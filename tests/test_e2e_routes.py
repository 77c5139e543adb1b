"""HTTP routes of a real server: TwiML shape, stream URL derivation, health."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx

from tests.harness import running

FORM = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+14155550100",
        "To": "+18005550199", "CallStatus": "ringing"}  # fmt: skip


def _stream(xml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


async def test_voice_webhook_answers_connect_stream_twiml() -> None:
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        response = await http.post("/twilio/voice", data=FORM)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/xml")
        url, params = _stream(response.text)
        assert url == f"ws://127.0.0.1:{h.gateway.port}/twilio/stream/{params['token']}"
        assert "?" not in url
        assert params["call_sid"] == FORM["CallSid"]
        assert params["from"] == FORM["From"]

        behind_proxy = await http.post(
            "/twilio/voice",
            data=FORM,
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc.ngrok.app"},
        )
        url, params = _stream(behind_proxy.text)
        assert url == f"wss://abc.ngrok.app/twilio/stream/{params['token']}"

        missing = await http.post("/twilio/voice", data={"From": "+1"})
        assert missing.status_code == 400

        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"


async def test_public_url_wins_over_the_request() -> None:
    async with (
        running(public_url="https://gw.example.com") as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        response = await http.post("/twilio/voice", data=FORM)
        url, params = _stream(response.text)
        assert url == f"wss://gw.example.com/twilio/stream/{params['token']}"


async def test_a_call_id_no_carrier_sends_is_a_bad_request_not_a_server_error() -> None:
    """Ids are bounded printable ASCII (as in a stream's start), checked before a token is
    minted for them: a 200-character non-ASCII CallSid used to raise inside the minting."""
    odd = ["é" * 200, "CA 1", "x" * 257, "CA\x00"]
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        twilio = [await http.post("/twilio/voice", data={**FORM, "CallSid": s}) for s in odd]
        telnyx = [await http.post("/telnyx/voice", data={**FORM, "CallSid": s}) for s in odd]
    assert [r.status_code for r in twilio + telnyx] == [400] * 8
