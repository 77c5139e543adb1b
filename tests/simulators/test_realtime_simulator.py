"""The Realtime simulator exercised through its real edges: the unmodified ``openai`` SDK (and a
raw websockets client for refused handshakes) over TLS on 127.0.0.1."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callsim.live.audio import tone_pcm16
from callsim.live.script import Script, Step, ToolCallSpec
from callsim.live.voices import ALL_VOICES, voice_pitch_hz
from callsim.realtime.server import EXPIRED_MESSAGE, RealtimeSimulator
from callsim.tls import generate_tls
from gateway.audio.g711 import ulaw_encode

MODEL = "gpt-realtime"
TLS = generate_tls()
PCMU = {"type": "audio/pcmu"}
SPEECH = ulaw_encode(tone_pcm16(300, 0.6, -12, 8000))
SILENCE = ulaw_encode(b"\0\0" * 4000)  # 0.5 s


def fast_sim(**overrides: Any) -> RealtimeSimulator:
    options: dict[str, Any] = {"tls": TLS, "think_ms": 5, "speed": 50.0}
    options.update(overrides)
    return RealtimeSimulator(**options)


def connect(sim: RealtimeSimulator) -> Any:
    client = AsyncOpenAI(api_key="test-key", base_url=sim.base_url)
    return client.realtime.connect(
        model=MODEL, websocket_connection_options={"ssl": sim.tls.client_context()}
    )


async def until(connection: AsyncRealtimeConnection, event_type: str) -> list[Any]:
    """Events up to and including the first of ``event_type``."""
    seen = []
    async for event in connection:
        seen.append(event)
        if event.type == event_type:
            return seen
    raise AssertionError(f"closed before {event_type}")


async def pcmu_session(connection: AsyncRealtimeConnection, **session: Any) -> None:
    await until(connection, "session.created")
    body = {"type": "realtime", "audio": {"input": {"format": PCMU}, "output": {"format": PCMU}}}
    body.update(session)
    await connection.send({"type": "session.update", "session": body})
    await until(connection, "session.updated")


async def append(connection: AsyncRealtimeConnection, audio: bytes) -> None:
    for start in range(0, len(audio), 160):
        chunk = base64.b64encode(audio[start : start + 160]).decode()
        await connection.send({"type": "input_audio_buffer.append", "audio": chunk})


def types_of(events: list[Any]) -> list[str]:
    return [event.type for event in events]


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with fast_sim() as simulator:
        yield simulator


# --- session and audio -------------------------------------------------------------------------


async def test_session_created_defaults_and_update(sim: RealtimeSimulator) -> None:
    async with connect(sim) as connection:
        created = (await until(connection, "session.created"))[-1]
        assert created.session.type == "realtime" and created.session.model == MODEL
        assert created.session.audio.output.voice == "alloy"
        assert created.session.audio.input.turn_detection.type == "server_vad"
        await connection.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "Role: X"}}
        )
        updated = (await until(connection, "session.updated"))[-1]
        assert updated.session.instructions == "Role: X"
        await connection.send({"type": "session.update", "session": {"instructions": "y"}})
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "missing_required_parameter"
    record = sim.connections[0]
    assert record.authorized and record.beta_header is None and record.model == MODEL
    assert record.instructions == "Role: X" and len(record.session_updates) == 2
    await sim.wait_for(lambda: not record.is_open)
    assert record.closed_by == "client"


async def test_caller_speech_gets_an_answer_in_the_session_format(sim: RealtimeSimulator) -> None:
    async with connect(sim) as connection:
        await pcmu_session(connection, audio={
            "input": {"format": PCMU, "transcription": {"model": "whisper-1"}},
            "output": {"format": PCMU, "voice": "marin"}})  # fmt: skip
        await append(connection, SILENCE + SPEECH + SILENCE)
        seen = await until(connection, "response.done")
        transcribed = "conversation.item.input_audio_transcription.completed"
        if transcribed not in types_of(seen):
            seen += await until(connection, transcribed)
    kinds = types_of(seen)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.created")
    # The caller's transcript arrives after the response started: a real-service habit.
    assert kinds.index("response.created") < kinds.index(
        "conversation.item.input_audio_transcription.completed"
    )
    started = next(e for e in seen if e.type == "input_audio_buffer.speech_started")
    assert 450 <= started.audio_start_ms <= 550
    audio = b"".join(
        base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta"
    )
    record = sim.connections[0]
    assert record.audio_in == SILENCE + SPEECH + SILENCE  # byte for byte
    spoken = record.items[-1]
    assert bytes(spoken.audio) == audio and len(audio) % 160 == 0  # whole 20 ms μ-law frames
    assert audio == ulaw_encode(tone_pcm16(voice_pitch_hz("marin"), len(audio) / 8000, -12, 8000))
    assert record.responses[0].trigger == "vad" and record.responses[0].status == "completed"
    assert record.items[0].text == "caller utterance 1 (0.6 s)"


def test_every_voice_has_its_own_pitch() -> None:
    pitches = sorted(voice_pitch_hz(v) for v in ALL_VOICES)
    assert min(b - a for a, b in itertools.pairwise(pitches)) >= 12


async def test_barge_in_sends_a_late_delta_then_cancels() -> None:
    async with fast_sim(speed=1.0, late_deltas=1) as sim, connect(sim) as connection:
        await pcmu_session(connection)
        await connection.send(
            {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "hi"}]}})  # fmt: skip
        await connection.send({"type": "response.create"})
        await until(connection, "response.output_audio.delta")
        await append(connection, SPEECH)
        seen = await until(connection, "response.done")
    kinds = types_of(seen)
    after = kinds[kinds.index("input_audio_buffer.speech_started") + 1 :]
    assert after[0] == "response.output_audio.delta"  # in flight: the client must drop it
    assert "response.output_audio.delta" not in after[1:]
    assert seen[-1].response.status == "cancelled"
    assert seen[-1].response.status_details.reason == "turn_detected"
    item_done = next(e for e in seen if e.type == "response.output_item.done")
    assert item_done.item.status == "incomplete"
    assert sim.connections[0].responses[0].status == "cancelled"


async def test_truncate_and_voice_change_after_audio(sim: RealtimeSimulator) -> None:
    async with connect(sim) as connection:
        await pcmu_session(connection)
        await connection.send({"type": "response.create"})
        seen = await until(connection, "response.done")
        item_id = seen[-1].response.output[0].id
        await connection.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
             "audio_end_ms": 200})  # fmt: skip
        truncated = (await until(connection, "conversation.item.truncated"))[-1]
        assert truncated.audio_end_ms == 200
        await connection.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
             "audio_end_ms": 999_999, "event_id": "evt_1"})  # fmt: skip
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "invalid_value" and error.error.event_id == "evt_1"
        assert "exceeds the audio length" in error.error.message
        await connection.send(
            {"type": "session.update",
             "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}})  # fmt: skip
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "cannot_update_voice"
    record = sim.connections[0]
    assert record.truncations == [(item_id, 0, 200)] and record.voice == "alloy"


async def test_tool_call_then_output_and_create_speaks_then_say() -> None:
    step = Step(on="text", say="One moment.", tool_call=ToolCallSpec("lookup", {"id": "A1"}),
                then_say="It shipped.")  # fmt: skip
    async with fast_sim(script=Script([step])) as sim, connect(sim) as connection:
        await pcmu_session(connection, tools=[{"type": "function", "name": "lookup"}])
        await connection.send(
            {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "where?"}]}})  # fmt: skip
        await connection.send({"type": "response.create"})
        seen = await until(connection, "response.done")
        call = next(e for e in seen if e.type == "response.function_call_arguments.done")
        assert call.name == "lookup" and json.loads(call.arguments) == {"id": "A1"}
        await connection.send({"type": "response.create"})  # refused? no: the first is done
        second = await until(connection, "response.done")
        assert "It shipped" not in json.dumps([e.to_dict() for e in second])
        await connection.send(
            {"type": "conversation.item.create",
             "item": {"type": "function_call_output", "call_id": call.call_id,
                      "output": "shipped"}})  # fmt: skip
        await connection.send({"type": "response.create"})
        third = await until(connection, "response.done")
        said = next(e for e in third if e.type == "response.output_audio_transcript.done")
        assert said.transcript == "It shipped."
    assert sim.connections[0].tool_names == ["lookup"]


async def test_create_while_active_and_cancel_not_active(sim: RealtimeSimulator) -> None:
    async with fast_sim(speed=5.0) as slow, connect(slow) as connection:
        await pcmu_session(connection)
        await connection.send({"type": "response.cancel"})
        assert (await until(connection, "error"))[-1].error.code == "response_cancel_not_active"
        await connection.send({"type": "response.create"})
        await until(connection, "response.created")
        await connection.send({"type": "response.create"})
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "conversation_already_has_active_response"
        await connection.send({"type": "response.cancel"})
        done = (await until(connection, "response.done"))[-1]
        assert done.response.status_details.reason == "client_cancelled"
        await connection.send({"type": "input_audio_buffer.commit"})
        assert (await until(connection, "error"))[-1].error.code == (
            "input_audio_buffer_commit_empty"
        )
        await connection.send({"type": "output_audio_buffer.clear"})
        await connection.send({"type": "no.such.event"})
        assert (await until(connection, "error"))[-1].error.param == "type"
        assert (await until(connection, "error"))[-1].error.param == "type"


# --- fault hooks -------------------------------------------------------------------------------


async def test_handshake_refusals_and_fail_next_connects(sim: RealtimeSimulator) -> None:
    url = sim.base_url.replace("https", "wss") + "/realtime?model=" + MODEL
    ssl = sim.tls.client_context()
    with pytest.raises(InvalidStatus) as missing_key:
        await ws_connect(url, ssl=ssl)
    assert missing_key.value.response.status_code == 401
    assert json.loads(missing_key.value.response.body)["error"]["type"] == "invalid_request_error"
    headers = {"Authorization": "Bearer k"}
    with pytest.raises(InvalidStatus) as no_model:
        await ws_connect(url.split("?")[0], ssl=ssl, additional_headers=headers)
    assert no_model.value.response.status_code == 400
    sim.fail_next_connects(1, status=503)
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(url, ssl=ssl, additional_headers=headers)
    assert refused.value.response.status_code == 503
    sim.fail_next_connects(1, error_code="invalid_api_key")
    async with ws_connect(url, ssl=ssl, additional_headers=headers) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert [status for status, _ in sim.refused] == [401, 400, 503]
    assert sim.connections[0].injected_failure == "invalid_api_key"


async def test_expire_fail_responses_inject_and_close(sim: RealtimeSimulator) -> None:
    async with connect(sim) as connection:
        await pcmu_session(connection)
        sim.fail_next_responses(1, error_code="server_error")
        await connection.send({"type": "response.create"})
        done = (await until(connection, "response.done"))[-1]
        assert done.response.status == "failed" and done.response.output == []
        assert done.response.status_details.error.type == "server_error"
        assert await sim.inject({"type": "rate_limits.updated", "rate_limits": []}) == 1
        await until(connection, "rate_limits.updated")
        assert await sim.expire() == 1
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "session_expired" and error.error.message == EXPIRED_MESSAGE
        assert [e async for e in connection] == []
    await sim.wait_for(lambda: not sim.connections[0].is_open)
    assert sim.connections[0].close_code == 1001
    async with connect(sim) as connection:
        await until(connection, "session.created")
        assert await sim.close(1006) == 1
        with pytest.raises(ConnectionClosed):
            await connection.recv()
    await sim.wait_for(lambda: not sim.connections[1].is_open)
    assert sim.connections[1].close_code == 1006
    assert sim.connections[1].items == []  # a new connection is a new, empty conversation


async def test_http_control_routes_and_plain_ws() -> None:
    async with fast_sim(use_tls=False) as sim:
        assert sim.base_url.startswith("http://") and sim.base_url.endswith("/v1")
        base = sim.base_url.removesuffix("/v1")
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/_sim/health")).json() == {"ok": True}
            client = AsyncOpenAI(api_key="k", base_url=sim.base_url)
            async with client.realtime.connect(model=MODEL) as connection:
                await until(connection, "session.created")
                event = urllib.parse.quote(json.dumps({"type": "rate_limits.updated",
                                                       "rate_limits": []}))  # fmt: skip
                answer = await http.post(f"/_sim/inject?event={event}")
                assert answer.json() == {"ok": True, "affected": 1}
                await until(connection, "rate_limits.updated")
                digest = (await http.get("/_sim/connections")).json()["connections"]
                assert digest[0]["model"] == MODEL and "audio_in" not in digest[0]
                assert (await http.post("/_sim/fail-responses?n=1")).json() == {"ok": True}
                assert (await http.post("/_sim/close?code=1011")).json()["affected"] == 1
            bad = await http.post("/_sim/close?code=abc")
            assert bad.status_code == 400
            assert (await http.post("/_sim/fail-connects?n=1&status=429")).status_code == 200
            assert (await http.post("/_sim/expire")).json()["affected"] == 0
    assert sim.connections[0].close_code == 1011


def test_cli_simulator_provider_openai_starts(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulator", "--provider", "openai", "--port", port,
         "--ca-file", str(tmp_path / "ca.pem")],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        lines: list[str] = []
        while len(lines) < 20 and "OPENAI_API_KEY" not in "".join(lines):
            lines.append(process.stderr.readline())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    text = "".join(lines)
    assert "Realtime simulator listening" in text, text
    assert f"export OPENAI_BASE_URL=https://127.0.0.1:{port}/v1\n" in text
    assert "export OPENAI_API_KEY=anything" in text
    assert (tmp_path / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
