"""Telnyx webhooks on a real server: TeXML shape per codec, Ed25519 signatures, Call Control."""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.harness import running

FORM = {"CallSid": "v3:abc123", "AccountSid": "acc", "From": "+13122010094",
        "To": "+13122123456", "CallStatus": "ringing", "Direction": "inbound"}  # fmt: skip


def _stream(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None
    return stream


@pytest.mark.parametrize(("codec", "rate"), [("PCMU", "8000"), ("PCMA", "8000"), ("G722", "16000")])
async def test_texml_connects_a_bidirectional_rtp_stream(codec: str, rate: str) -> None:
    async with running(telnyx_codec=codec) as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        response = await http.post("/telnyx/voice", data=FORM)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    stream = _stream(response.text)
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    base = f"ws://127.0.0.1:{h.gateway.port}/telnyx/stream/"
    assert stream.attrib["url"] == base + params["token"]
    assert stream.attrib["bidirectionalMode"] == "rtp"
    assert stream.attrib["bidirectionalCodec"] == codec
    assert stream.attrib["bidirectionalSamplingRate"] == rate
    assert params["call_control_id"] == "v3:abc123"


async def test_with_texml_off_only_call_control_is_served() -> None:
    """TELNYX_TEXML=false (what TELNYX_CODEC=L16 needs): a TeXML form post is not answered
    with a stream Telnyx does not document; Call Control webhooks still are."""
    event = {"data": {"event_type": "call.initiated", "id": "1", "record_type": "event",
                      "payload": {"call_control_id": "v3:x", "direction": "incoming"}}}  # fmt: skip
    async with (
        running(telnyx_codec="L16", telnyx_texml=False) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        texml = await http.post("/telnyx/voice", data=FORM)
        call_control = await http.post("/telnyx/call-control", content=json.dumps(event),
                                       headers={"content-type": "application/json"})  # fmt: skip
    assert texml.status_code == 404
    assert "TELNYX_TEXML=false" in texml.text and "<Stream" not in texml.text
    assert call_control.status_code == 503  # Call Control, served: it only lacks its API key
    assert "TELNYX_API_KEY" in call_control.text


def _key_pair() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


def _sign(private: Ed25519PrivateKey, body: bytes, ts: int) -> dict[str, str]:
    signature = base64.b64encode(private.sign(f"{ts}|".encode() + body)).decode()
    return {"telnyx-signature-ed25519": signature, "telnyx-timestamp": str(ts)}


async def test_webhooks_need_a_valid_fresh_signature_when_a_public_key_is_set() -> None:
    private, public = _key_pair()
    body = httpx.QueryParams(FORM).__str__().encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    now = int(time.time())
    async with (
        running(telnyx_public_key=public) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        ok = await http.post(
            "/telnyx/voice", content=body, headers={**form, **_sign(private, body, now)}
        )
        tampered = await http.post(
            "/telnyx/voice",
            content=body.replace(b"ringing", b"in-progress"),
            headers={**form, **_sign(private, body, now)},
        )
        stale = await http.post(
            "/telnyx/voice", content=body, headers={**form, **_sign(private, body, now - 301)}
        )
        missing = await http.post("/telnyx/voice", content=body, headers=form)
        other, _ = _key_pair()
        foreign = await http.post(
            "/telnyx/voice", content=body, headers={**form, **_sign(other, body, now)}
        )
    assert ok.status_code == 200 and "<Stream" in ok.text
    assert [r.status_code for r in (tampered, stale, missing, foreign)] == [403, 403, 403, 403]


async def test_call_control_webhook_without_an_api_key_is_refused_clearly() -> None:
    event = {"data": {"event_type": "call.initiated", "id": "1", "record_type": "event",
                      "payload": {"call_control_id": "v3:x", "direction": "incoming"}}}  # fmt: skip
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        response = await http.post("/telnyx/voice", content=json.dumps(event),
                                   headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 503
    assert "TELNYX_API_KEY" in response.text
