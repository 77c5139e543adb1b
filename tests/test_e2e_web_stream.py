"""Browser calls (``POST /web/calls``, ``WS /web/stream``) through the real server, the real SDK
and the Live simulator, spoken by a Python client with the page's protocol: wideband audio
both ways untouched, barge-in, the token scheme, and who may open one."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from callsim.callers.audio import Silence, Tone
from callsim.live.audio import tone_pcm16
from callsim.live.script import Step
from tests.harness import ADMIN_TOKEN, agents, running
from tests.servers import until
from tests.webcaller import BEARER, issue_call, web_call

GREETING_HZ = 500.0


def greeting(seconds: float) -> Step:
    return Step(on="text", say="Hello from the browser line.", seconds=seconds,
                tone_hz=GREETING_HZ)  # fmt: skip


async def test_browser_audio_reaches_the_model_and_comes_back_untouched() -> None:
    """16 kHz PCM up and the model's 24 kHz PCM down are passed through byte for byte: no
    μ-law, no resampling, either way."""
    graph = agents(agent_triage={"greeting": "Greet the caller."})
    caller = Tone(700, 1.0, -10).pcm(16000) + Silence(0.6).pcm(16000)
    async with running(steps=[greeting(0.8)], graph=graph, admin_api_token=ADMIN_TOKEN) as h:
        async with web_call(h) as call:
            await until(lambda: len(call.received) >= len(tone_pcm16(GREETING_HZ, 0.8)), 10)
            await call.speak(caller)
            connection = h.sim.connections[-1]
            await until(lambda: len(connection.audio_in) >= len(caller), 10)
        record = h.named("call.started")[-1]
    expected_down = tone_pcm16(GREETING_HZ, 0.8, -12.0, 24000)
    assert bytes(call.received[: len(expected_down)]) == expected_down
    assert bytes(connection.audio_in[: len(caller)]) == caller
    assert record["carrier"] == "web"
    assert record["from"] == "browser"
    ended = h.named("call.ended")[-1]
    assert ended["reason"] == "caller_hung_up"


async def test_barge_in_clears_the_browsers_playback_at_once() -> None:
    graph = agents(agent_triage={"greeting": "Greet the caller."})
    async with running(steps=[greeting(6.0)], graph=graph, admin_api_token=ADMIN_TOKEN) as h:
        async with web_call(h) as call:
            await until(lambda: len(call.received) >= 24000 * 2 // 2, 10)  # 0.5 s heard
            spoke_at = asyncio.get_running_loop().time()
            await call.speak(Tone(700, 0.6, -10).pcm(16000))
            await until(lambda: call.named("clear"), 5)
        cleared_at = call.named("clear")[0][0]
    # The greeting had 5 s to go; the clear came as the simulator heard the speech begin.
    assert cleared_at - spoke_at < 1.5
    assert len(call.received) < 6.0 * 24000 * 2 * 0.6
    assert h.named("agent.interrupted")


async def test_a_call_can_start_at_a_stage_and_the_token_may_ride_in_start() -> None:
    async with (
        running(admin_api_token=ADMIN_TOKEN) as h,
        web_call(h, phase="advising", in_path=False) as call,
    ):
        await until(lambda: h.named("call.started"), 5)
        await call.speak(Silence(0.2).pcm(16000))
    assert h.named("call.started")[-1]["agent"] == "agent-advisor"


async def test_who_may_open_a_browser_call() -> None:
    async with running(admin_api_token=ADMIN_TOKEN) as h:
        base = h.gateway.url
        ws_base = base.replace("http", "ws")
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.post("/web/calls")).status_code == 401
            wrong = {"Authorization": "Bearer not-the-token"}
            assert (await http.post("/web/calls", headers=wrong)).status_code == 401
            unknown = await http.post("/web/calls", json={"phase": "nope"}, headers=BEARER)
            assert unknown.status_code == 422
            assert "advising" in unknown.json()["detail"]
            bad_body = await http.post("/web/calls", content=b"[1", headers=BEARER)
            assert bad_body.status_code == 400
        issued = await issue_call(h)
        assert issued["stream_url"].startswith(f"{ws_base}/web/stream/v2.")
        # No admin credential: refused at the upgrade, whatever the token.
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(issued["stream_url"]):
                pass
        assert refused.value.response.status_code == 401
        # A token of another carrier's, or a forged one: refused at the upgrade.
        twilio_token = h.gateway.state.tokens.mint("twilio", issued["call_id"], time.time())
        with pytest.raises(InvalidStatus) as forged:
            async with websockets.connect(
                f"{ws_base}/web/stream/{twilio_token}", additional_headers=BEARER
            ):
                pass
        assert forged.value.response.status_code == 403
        # One token, one stream.
        async with websockets.connect(issued["stream_url"], additional_headers=BEARER) as ws:
            await ws.send(json.dumps({"event": "start", "start": {
                "streamSid": issued["stream_id"], "callSid": issued["call_id"]}}))  # fmt: skip
            await until(lambda: h.gateway.state.calls, 5)
            with pytest.raises(InvalidStatus) as again:
                async with websockets.connect(issued["stream_url"], additional_headers=BEARER):
                    pass
            assert again.value.response.status_code == 403
        # A start for another call than the token's is closed as unauthorized.
        other = await issue_call(h)
        async with websockets.connect(other["stream_url"], additional_headers=BEARER) as ws:
            await ws.send(json.dumps({"event": "start", "start": {
                "streamSid": "WSx", "callSid": "WBsomeone-else"}}))  # fmt: skip
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_wrong_media_format_is_refused_in_words() -> None:
    async with running(admin_api_token=ADMIN_TOKEN) as h:
        issued = await issue_call(h)
        async with websockets.connect(issued["stream_url"], additional_headers=BEARER) as ws:
            await ws.send(json.dumps({"event": "start", "start": {
                "streamSid": issued["stream_id"], "callSid": issued["call_id"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}))  # fmt: skip
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        await until(lambda: h.named("call.ended") or not h.gateway.state.calls, 5)
    assert not h.sim.connections  # refused before any Gemini session was opened


async def test_no_browser_calls_without_the_admin_token() -> None:
    async with running() as h:
        async with httpx.AsyncClient(base_url=h.gateway.url) as http:
            assert (await http.post("/web/calls", headers=BEARER)).status_code == 404
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(
                h.gateway.url.replace("http", "ws") + "/web/stream", additional_headers=BEARER
            ):
                pass
        assert refused.value.response.status_code == 403


def test_the_payload_is_base64_of_whole_frames() -> None:
    from gateway.carriers.web import WebCodec

    codec = WebCodec()
    message = json.loads(codec.media(bytes(960)))
    assert base64.b64decode(message["media"]["payload"]) == bytes(960)
    assert json.loads(codec.clear()) == {"event": "clear"}
    assert json.loads(codec.mark("m1")) == {"event": "mark", "mark": {"name": "m1"}}
