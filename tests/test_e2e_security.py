"""Nobody in uninvited: Twilio signatures, stream tokens, and what a refused stream costs."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from callsim.callers.audio import Silence, render
from callsim.callers.twilio import TwilioCaller
from gateway.security import StreamTokens
from tests.harness import Harness, running

AUTH_TOKEN = "twilio-auth-token-0123456789"
FORM = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+14155550100",
        "To": "+18005550199", "CallStatus": "ringing"}  # fmt: skip


async def test_signed_webhook_and_stream_upgrade_are_accepted() -> None:
    async with running(twilio_auth_token=AUTH_TOKEN) as h:
        result = await h.call([Silence(1.0)], linger_s=0.1, auth_token=AUTH_TOKEN)
    assert result.webhook_status == 200
    assert len(h.sim.connections) == 1


async def test_unsigned_or_wrongly_signed_webhooks_get_403() -> None:
    async with (
        running(twilio_auth_token=AUTH_TOKEN) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        unsigned = await http.post("/twilio/voice", data=FORM)
        forged = await http.post(
            "/twilio/voice",
            data=FORM,
            headers={"X-Twilio-Signature": "L/OH5YylLD5NRKLltdqwSvS0BnU="},
        )
        wrong_key = TwilioCaller(h.gateway.url, auth_token="some-other-token-000000")
        result = await wrong_key.run()
    assert unsigned.status_code == 403 and forged.status_code == 403
    assert result.webhook_status == 403
    assert h.sim.connections == []


async def test_an_unsigned_stream_upgrade_is_refused_before_accept() -> None:
    async with running(twilio_auth_token=AUTH_TOKEN) as h:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"ws://127.0.0.1:{h.gateway.port}/twilio/stream"):
                pass
    assert info.value.response.status_code == 403


def _start(call_sid: str, token: str | None) -> str:
    params = {"token": token} if token is not None else {}
    return json.dumps({
        "event": "start", "streamSid": "MZ" + "5" * 32,
        "start": {"streamSid": "MZ" + "5" * 32, "callSid": call_sid, "customParameters": params,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                  "channels": 1}},
    })  # fmt: skip


async def _raw_stream(h: Harness, start: str) -> int | None:
    """Open a stream with this start; returns the close code the gateway sent."""
    async with websockets.connect(f"ws://127.0.0.1:{h.gateway.port}/twilio/stream") as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start)
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


@pytest.mark.parametrize(
    "case", ["missing", "other_call", "expired", "tampered", "other_secret", "garbage"]
)
async def test_streams_without_a_valid_token_never_reach_gemini(case: str) -> None:
    async with running() as h:
        tokens = h.gateway.state.tokens
        now = time.time()
        call = "CA" + "7" * 32
        token = {
            "missing": None,
            "other_call": tokens.mint("twilio", "CA" + "8" * 32, now),
            "expired": tokens.mint("twilio", call, now - tokens.ttl_s - 1),
            "tampered": tokens.mint("twilio", call, now)[:-2] + "xx",
            "other_secret": StreamTokens(b"another-secret-0123456789").mint("twilio", call, now),
            "garbage": "v1.notanumber.abc",
        }[case]
        code = await _raw_stream(h, _start(call, token))
        await h.calls_finished()
    assert code == 1008
    assert h.sim.connections == []  # no Gemini session was opened (it would cost money)
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "unauthorized"


async def test_a_valid_token_opens_exactly_its_own_call() -> None:
    async with running() as h:
        call = "CA" + "9" * 32
        token = h.gateway.state.tokens.mint("twilio", call, time.time())
        async with websockets.connect(f"ws://127.0.0.1:{h.gateway.port}/twilio/stream") as ws:
            await ws.send(_start(call, token))
            await h.sim.wait_for_connections(1, timeout=3)
        await h.calls_finished()
    assert len(h.sim.connections) == 1


async def test_the_shared_gateway_secret_lets_any_replica_check_tokens() -> None:
    secret = "shared-gateway-secret-0123456789"
    async with running(gateway_secret=secret) as a, running(gateway_secret=secret) as b:
        async with httpx.AsyncClient() as http:
            twiml = (await http.post(a.gateway.url + "/twilio/voice", data=FORM)).text
        token = twiml.split('name="token" value="')[1].split('"')[0]
        async with websockets.connect(f"ws://127.0.0.1:{b.gateway.port}/twilio/stream") as ws:
            await ws.send(_start(FORM["CallSid"], token))
            await b.sim.wait_for_connections(1, timeout=3)
        await b.calls_finished()
    assert len(b.sim.connections) == 1


async def test_caller_simulator_calls_carry_their_token() -> None:
    async with running() as h:
        result = await TwilioCaller(h.gateway.url, audio=render([Silence(0.5)])).run()
    assert "token" in result.parameters
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"
