"""A call's life through the real gateway: setup, greeting, barge-in, DTMF, teardown, bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import websockets

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.audio.analysis import rms_dbfs
from tests.harness import API_KEY, agents, running

GREETING = agents(agent_triage={"greeting": "Greet the caller and ask how you can help."})


async def test_setup_carries_the_first_agents_persona_and_session_features() -> None:
    async with running(graph=GREETING) as h:
        result = await h.call([Silence(1.5)], linger_s=0.2)
        conn = h.sim.connections[0]
    assert result.violations == []
    assert conn.api_version == "v1beta"
    assert conn.api_key == API_KEY
    assert conn.model == "models/gemini-2.5-flash-native-audio-preview-12-2025"
    assert conn.voice == "Aoede"
    assert conn.system_instruction == h.graph.agent("agent-triage").system_instruction()
    assert conn.system_instruction.endswith(
        "--- Agent Identity ---\nRole: Triage receptionist\n"
        "Description: Routes callers to the right specialist\n"
        "Scope: Financial advisory services only"
    )
    setup = conn.setup or {}
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert setup["sessionResumption"] == {}  # resumption on, no handle yet
    assert "inputAudioTranscription" in setup and "outputAudioTranscription" in setup
    assert "slidingWindow" in setup["contextWindowCompression"]
    (decl,) = conn.function_declarations
    assert decl["parameters"]["properties"]["target"]["enum"] == ["agent-advisor"]
    # The first agent speaks first: its greeting instruction is the first turn.
    greeting = conn.client_contents[0]
    assert greeting["turns"][0]["parts"][0]["text"] == "Greet the caller and ask how you can help."
    assert result.first_media_time is not None
    assert result.call_time(result.first_media_time) < 1.0


async def test_without_a_greeting_the_agent_waits_for_the_caller() -> None:
    async with running() as h:
        result = await h.call([Silence(1.0)], linger_s=0.2)
        conn = h.sim.connections[0]
    assert conn.client_contents == []
    assert result.media_bytes_received == 0


async def test_barge_in_clears_playback_within_a_frame_and_drops_stale_audio() -> None:
    steps = [Step(on="text", say="a long answer", seconds=6.0)]
    async with running(steps=steps, graph=GREETING) as h:
        result = await h.call([Silence(1.5), Tone(300, 0.8), Silence(1.0)], linger_s=0.2)
        conn = h.sim.connections[0]
    (interrupted_at,) = conn.sent_times("interrupted")
    assert result.clear_times, "the gateway never sent clear"
    clear_at = result.clear_times[0]
    assert 0 <= clear_at - interrupted_at < 0.020
    (event,) = h.named("agent.interrupted")
    assert event["frames_dropped"] > 20  # seconds of queued speech never reached the carrier
    # After the clear the caller hears nothing of the interrupted answer.
    heard = result.heard_pcm()
    start = int(result.call_time(clear_at) * 8000 + 8 * 20) * 2  # one frame after the clear
    assert rms_dbfs(heard[start : start + 8000 * 2 // 2]) < -60
    # The gateway's transcript marks the agent's utterance as cut off.
    agent_lines = [e for e in h.named("transcript") if e["speaker"] == "agent"]
    assert agent_lines and agent_lines[0]["interrupted"] is True


async def test_keys_1_2_3_hash_reach_the_model_as_one_turn() -> None:
    keys = [(0.3, "1"), (0.5, "2"), (0.7, "3"), (0.9, "#")]
    async with running() as h:
        await h.call([Silence(1.2)], dtmf=keys, linger_s=0.2)
        conn = h.sim.connections[0]
    texts = [p["text"] for c in conn.client_contents for t in c["turns"] for p in t["parts"]]
    texts += conn.realtime_texts
    assert texts == ["The caller pressed 1 2 3 # on the phone keypad."]


async def test_keys_without_hash_reach_the_model_after_the_interdigit_pause() -> None:
    keys = [(0.3, "4"), (0.4, "2")]
    async with running(dtmf_interdigit_ms=300) as h:
        await h.call([Silence(1.2)], dtmf=keys, linger_s=0.2)
        conn = h.sim.connections[0]
    texts = [p["text"] for c in conn.client_contents for t in c["turns"] for p in t["parts"]]
    assert texts + conn.realtime_texts == ["The caller pressed 4 2 on the phone keypad."]


async def test_caller_stop_closes_the_live_session() -> None:
    async with running() as h:
        tasks_before = len(asyncio.all_tasks())
        result = await h.call([Silence(0.6)], linger_s=0.1, hangup="stop")
        conn = h.sim.connections[0]
        await h.sim.wait_for(lambda: not conn.is_open, timeout=2)
        await asyncio.sleep(0.05)
        assert len(asyncio.all_tasks()) <= tasks_before
    assert result.closed_by == "caller"
    assert conn.closed_by == "client"
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "caller_hung_up"


async def test_a_dropped_carrier_socket_closes_the_live_session() -> None:
    async with running() as h:
        await h.call([Silence(0.6)], linger_s=0.1, hangup="drop")
        conn = h.sim.connections[0]
        await h.sim.wait_for(lambda: not conn.is_open, timeout=2)
    assert conn.closed_by == "client"
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "caller_disconnected"


async def test_a_live_session_that_ends_for_good_closes_the_stream() -> None:
    async with running() as h:
        call = asyncio.create_task(h.call([Silence(5.0)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=3)
        await asyncio.sleep(0.3)
        h.sim.fail_next_connects(10, code=1008, reason="API key not valid")
        await h.sim.close(1008, "policy violation")  # one reconnect, which is refused
        result = await asyncio.wait_for(call, 5)
    assert result.closed_by == "gateway"
    assert len(h.sim.connections) == 2
    assert result.call_time(result.ended_at or 0) < 2.0
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "model_ended"


async def test_a_transient_live_drop_is_resumed_and_the_call_goes_on() -> None:
    steps = [Step(on="text", say="hello", seconds=0.5)]
    async with running(steps=steps, graph=GREETING) as h:
        call = asyncio.create_task(h.call([Silence(3.0)], linger_s=0.1))
        await h.sim.wait_for(lambda: bool(h.sim.sessions and h.sim.connections[0].sent_times(
            "turnComplete")), timeout=3)  # fmt: skip
        await asyncio.sleep(0.2)  # let the handle arrive
        await h.sim.close(1011, "internal error")
        result = await asyncio.wait_for(call, 6)
        conns = h.sim.connections
    assert result.closed_by == "caller"
    assert len(conns) == 2 and conns[1].resumed
    assert conns[1].voice == "Aoede"
    (event,) = h.named("live.reconnected")
    assert event["resumed"] is True


async def test_bad_input_is_dropped_or_ends_only_that_call() -> None:
    async with running(max_message_bytes=4096) as h:
        good = asyncio.create_task(h.call([Silence(2.5)], linger_s=0.1))
        url = f"ws://127.0.0.1:{h.gateway.port}/twilio/stream"
        async with websockets.connect(url) as ws:
            await ws.send("this is not json")
            await ws.send(b"\x00\x01binary")
            await ws.send(json.dumps({"event": "teleport"}))
            await ws.send(json.dumps({"event": "media", "media": {"payload": "AAAA"}}))  # early
            token = h.gateway.state.tokens.mint("twilio", "CAbad", time.time())
            start = {"event": "start", "start": {"streamSid": "MZbad", "callSid": "CAbad",
                     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                     "channels": 1}, "customParameters": {"token": token}},
                     "streamSid": "MZbad"}  # fmt: skip
            await ws.send(json.dumps(start))
            await ws.send(json.dumps({"event": "media", "streamSid": "MZbad",
                                      "media": {"payload": "%%%"}}))  # fmt: skip
            payload = base64.b64encode(b"\xff" * 160).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": "MZbad",
                                      "media": {"payload": payload}}))  # fmt: skip
            await h.sim.wait_for_connections(2, timeout=3)
            await ws.send("x" * 10_000)  # over the cap: this call alone is closed
            await asyncio.wait_for(ws.wait_closed(), 3)
        result = await good
    assert result.closed_by == "caller" and result.violations == []
    bad = [e for e in h.named("call.ended") if e["call_id"] == "CAbad"]
    assert bad and bad[0]["bad_messages"] >= 5
    bad_conn = next(c for c in h.sim.connections if len(c.audio_in) == 640)
    assert bad_conn.closed_by == "client"


async def test_a_stream_that_never_starts_is_closed() -> None:
    async with running() as h:
        url = f"ws://127.0.0.1:{h.gateway.port}/twilio/stream"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
            await ws.close()
        await h.calls_finished()
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "caller_disconnected_before_start"
    assert h.sim.connections == []


async def test_a_flood_of_bad_messages_ends_only_that_call() -> None:
    async with running() as h:
        url = f"ws://127.0.0.1:{h.gateway.port}/twilio/stream"
        async with websockets.connect(url) as ws:
            token = h.gateway.state.tokens.mint("twilio", "CAflood", time.time())
            start = {"event": "start", "streamSid": "MZflood",
                     "start": {"streamSid": "MZflood", "callSid": "CAflood",
                               "customParameters": {"token": token}}}  # fmt: skip
            await ws.send(json.dumps(start))
            await h.sim.wait_for_connections(1, timeout=3)
            for _ in range(250):
                await ws.send("{not json")
            await asyncio.wait_for(ws.wait_closed(), 3)
        await h.calls_finished()
        conn = h.sim.connections[0]
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "protocol_error"
    assert ended["bad_messages"] == 201
    assert conn.closed_by == "client"
