"""The Live simulator keeps serving whatever clients throw at it: random and malformed JSON,
non-UTF-8 frames, clients that vanish mid-turn. A bad connection is closed (1007 with a reason);
the server itself never fails and never leaves tasks behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from callsim.live import model as live_model
from callsim.live.server import LiveSimulator
from callsim.tls import generate_tls

TLS = generate_tls()
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SETUP = json.dumps({"setup": {"model": "models/m", "sessionResumption": {}}})

# Keys from the protocol, in both spellings, so random messages reach deep into the parser.
PROTOCOL_KEYS = [
    "setup",
    "model",
    "clientContent",
    "client_content",
    "turns",
    "parts",
    "text",
    "role",
    "turnComplete",
    "turn_complete",
    "realtimeInput",
    "realtime_input",
    "audio",
    "video",
    "mediaChunks",
    "data",
    "mimeType",
    "mime_type",
    "activityStart",
    "activityEnd",
    "audioStreamEnd",
    "toolResponse",
    "tool_response",
    "functionResponses",
    "id",
    "name",
    "response",
    "contextUpdate",
    "systemInstruction",
    "sessionResumption",
    "handle",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["audio/pcm;rate=16000", "audio/pcm;rate=0", "AAAA", "-_8A", "sim-1-1"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(PROTOCOL_KEYS) | st.text(max_size=8), children, max_size=4
        )
    ),
    max_leaves=20,
)
MESSAGE_TYPES = [
    "setup",
    "realtimeInput",
    "realtime_input",
    "clientContent",
    "client_content",
    "toolResponse",
    "tool_response",
    "contextUpdate",
]
bodies = st.dictionaries(st.sampled_from(PROTOCOL_KEYS), json_values, max_size=3)
messages = st.builds(lambda kind, body: {kind: body}, st.sampled_from(MESSAGE_TYPES), bodies)
frames = (
    messages.map(json.dumps)
    | messages.map(json.dumps)
    | st.dictionaries(st.sampled_from(PROTOCOL_KEYS), json_values, min_size=1, max_size=2).map(
        json.dumps
    )
    | json_values.map(json.dumps)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)


@pytest.fixture
async def sim() -> AsyncIterator[LiveSimulator]:
    async with LiveSimulator(tls=TLS, think_ms=1, speed=1000.0, tool_timeout_s=0.5) as simulator:
        yield simulator


async def raw_client(sim: LiveSimulator) -> ClientConnection:
    uri = sim.base_url.replace("https", "wss") + LIVE_PATH + "?key=fuzz"
    return await ws_connect(uri, ssl=sim.tls.client_context())


async def send_and_settle(sim: LiveSimulator, ws: ClientConnection, frame: str | bytes) -> None:
    """Send one frame and wait until the server has handled it (or closed the connection)."""
    record = sim.connections[-1]
    before = record.frames_received
    await ws.send(frame)
    await sim.wait_for(lambda: record.frames_received > before or not record.is_open)


async def assert_still_serving(sim: LiveSimulator) -> None:
    async with await raw_client(sim) as ws:
        await ws.send(SETUP)
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        await ws.send(json.dumps({"realtimeInput": {"text": "still there?"}}))
        while "turnComplete" not in json.loads(await ws.recv()).get("serverContent", {}):
            pass


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames, after_setup=st.booleans())
async def test_random_frames_never_break_the_server(
    sim: LiveSimulator, frame: str | bytes, after_setup: bool
) -> None:
    async with await raw_client(sim) as ws:
        await sim.wait_for(lambda: bool(sim.connections) and sim.connections[-1].is_open)
        record = sim.connections[-1]
        if after_setup:
            await ws.send(SETUP)
            await ws.recv()
        await send_and_settle(sim, ws, frame)
        if not record.is_open:  # 1008/1011: a random setup may name a handle in use or unknown
            assert record.close_code in (1007, 1008, 1011)
            assert record.close_reason
            assert record.closed_by == "server"
    assert sim.internal_errors == 0


async def test_server_survives_a_burst_of_malformed_clients(sim: LiveSimulator) -> None:
    bad_frames: list[str | bytes] = [
        b"\xff\xfe\x00",
        "{",
        "null",
        json.dumps({"realtimeInput": {"audio": {"data": "%%%"}}}),
        json.dumps({"realtimeInput": {"audio": {"data": "AAA", "mimeType": "audio/pcm;rate=x"}}}),
        json.dumps({"clientContent": {"turns": "not a list"}}),
        json.dumps({"toolResponse": {"functionResponses": [{"id": 7}]}}),
        json.dumps({"setup": {"model": "again"}}),
        "[" * 100_000,
        '{"\\ud800": 1}',  # a lone surrogate in a key ends up in the close reason
        json.dumps({"realtimeInput": {"audio": {"data": "AAAA", "mimeType": "audio/pcm;rate=0"}}}),
    ]
    for frame in bad_frames:
        async with await raw_client(sim) as ws:
            await ws.send(SETUP)
            await ws.recv()
            await ws.send(frame)
            await ws.wait_closed()
            assert ws.close_code == 1007, frame
    await assert_still_serving(sim)
    assert sim.internal_errors == 0


async def test_client_vanishing_mid_turn_is_cleaned_up(sim: LiveSimulator) -> None:
    ws = await raw_client(sim)
    await ws.send(SETUP)
    await ws.recv()
    await ws.send(json.dumps({"realtimeInput": {"text": "talk to me"}}))
    await ws.recv()
    ws.transport.abort()  # no close frame: a dropped TCP connection
    record = sim.connections[0]
    await sim.wait_for(lambda: not record.is_open)
    assert record.close_code == 1006
    assert record.closed_by == "client"
    await assert_still_serving(sim)
    assert sim.internal_errors == 0


async def test_many_connections_then_stop(sim: LiveSimulator) -> None:
    clients = [await raw_client(sim) for _ in range(8)]

    async def read_until_closed(ws: ClientConnection) -> None:
        async for _ in ws:
            pass

    for ws in clients:
        await ws.send(SETUP)
        await ws.recv()
        await ws.send(json.dumps({"realtimeInput": {"text": "hi"}}))
    readers = [asyncio.create_task(read_until_closed(ws)) for ws in clients]
    await sim.wait_for(lambda: all(r.sent_times("audio") for r in sim.connections))
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 1.0
    await asyncio.gather(*readers)
    assert [ws.close_code for ws in clients] == [1001] * 8
    assert all(not record.is_open for record in sim.connections)
    assert all(record.closed_by == "server" for record in sim.connections)
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.parametrize("where", ["turn", "receive loop"])
async def test_a_simulator_bug_closes_only_that_connection_with_1011(
    sim: LiveSimulator, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated bug")

    target = "tone_pcm16" if where == "turn" else "default_step"
    monkeypatch.setattr(live_model, target, broken)
    async with await raw_client(sim) as ws:
        await ws.send(SETUP)
        await ws.recv()
        await ws.send(json.dumps({"realtimeInput": {"text": "hi"}}))
        await ws.wait_closed()
    assert ws.close_code == 1011
    assert ws.close_reason == "internal simulator error"
    assert sim.internal_errors == 1
    monkeypatch.undo()
    await assert_still_serving(sim)


async def test_each_connection_records_its_clients_port(sim: LiveSimulator) -> None:
    """What tells a connection's packets apart in a capture (``benchmarks/wire.py``)."""
    first, second = await raw_client(sim), await raw_client(sim)
    try:
        await sim.wait_for(lambda: len(sim.connections) == 2)
        ports = {record.client_port for record in sim.connections}
        assert ports == {first.local_address[1], second.local_address[1]}
        assert sim.connections[0].summary()["client_port"] == sim.connections[0].client_port
    finally:
        await first.close()
        await second.close()
