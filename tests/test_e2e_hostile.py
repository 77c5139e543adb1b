"""What a stranger can send down a stream socket: nothing raises, nothing costs more than real
time. Through the real server, with the log records captured and checked for tracebacks."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callsim.callers.audio import Silence, Tone
from tests.harness import Carrier, Harness, running
from tests.test_e2e_admission import stream_url_of, twilio_start, webhook
from tests.test_hostile_messages import NASTY, TWILIO, _mutated, _paths

MEDIA = json.dumps(
    {"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
)


async def _open_call(h: Harness, call_sid: str) -> websockets.ClientConnection:
    url, _ = stream_url_of((await webhook(h, call_sid)).text)
    return await websockets.connect(url)


async def _until_closed(ws: websockets.ClientConnection) -> int | None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


@pytest.mark.usefixtures("structured_logs")
async def test_deep_nesting_before_and_after_start_is_dropped_and_the_call_goes_on() -> None:
    deep = '{"event": "media", "media": ' + "[" * 1000 + "]" * 1000 + "}"
    assert len(deep) < 2100
    async with running() as h:
        ws = await _open_call(h, "CA" + "1" * 32)
        await ws.send(deep)  # before start
        await ws.send(twilio_start("CA" + "1" * 32))
        await h.sim.wait_for_connections(1, timeout=5)
        await ws.send(deep)  # after start
        await ws.send(MEDIA)
        await ws.send(json.dumps({"event": "stop", "stop": {}}))
        await _until_closed(ws)
        await h.calls_finished()
        metrics = h.gateway.state.metrics.render().decode()
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "caller_hung_up" and ended["bad_messages"] == 2
    assert 'gateway_errors_total{kind="bad_message"} 2.0' in metrics
    assert 'outcome="error"' not in metrics


@pytest.mark.usefixtures("structured_logs")
@pytest.mark.parametrize(
    "token",
    ["v2.Q0E.17650001²0." + "a" * 32, "v2.Q0E." + "9" * 5000 + "." + "a" * 32, "²", "%00",
     "v2." + "A" * 5000],
)  # fmt: skip
async def test_odd_tokens_are_refused_not_raised(token: str) -> None:
    async with running() as h:
        port = h.gateway.port
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(f"ws://127.0.0.1:{port}/twilio/stream/{token}")
        async with websockets.connect(f"ws://127.0.0.1:{port}/twilio/stream") as ws:
            await ws.send(twilio_start("CA" + "2" * 32, token))
            code = await _until_closed(ws)
        await h.calls_finished()
    assert info.value.response.status_code in (403, 404)
    assert code == 1008
    assert h.sim.connections == []
    assert [e["reason"] for e in h.named("call.ended")] == ["unauthorized"]


@pytest.mark.usefixtures("structured_logs")
async def test_fuzzed_frames_of_every_class_leave_one_log_line_each_and_no_error() -> None:
    """A few hundred mutated Twilio frames on one live call: each is dropped (or acted on) and
    the call ends as a protocol error once there are too many, never as an error."""
    rng = random.Random(8)
    frames = []
    for _ in range(260):
        base = TWILIO[rng.choice(["connected", "start", "media", "mark", "dtmf", "stop"])]
        path = rng.choice(_paths(base))
        if path[-1] == "event":
            continue  # a changed event name is just an unknown event: covered elsewhere
        frames.append(_mutated(base, path, rng.choice(NASTY), drop=rng.random() < 0.2))
    async with running() as h:
        call_sid = "CA" + "3" * 32
        ws = await _open_call(h, call_sid)
        await ws.send(twilio_start(call_sid))
        await h.sim.wait_for_connections(1, timeout=5)
        stop_like = 0
        for frame in frames:
            if '"event": "stop"' in frame:
                stop_like += 1
                continue  # a well-formed stop would end the call early
            try:
                await ws.send(frame)
            except ConnectionClosed:
                break
        await ws.close()
        await h.calls_finished()
        metrics = h.gateway.state.metrics.render().decode()
    (ended,) = h.named("call.ended")
    assert ended["reason"] in ("protocol_error", "caller_disconnected")
    assert 'outcome="error"' not in metrics
    assert stop_like < len(frames)


async def test_caller_audio_beyond_real_time_is_dropped_and_counted() -> None:
    """20 s of audio sent in a blink: Gemini gets real time plus one second, no more."""
    async with running() as h:
        call_sid = "CA" + "4" * 32
        ws = await _open_call(h, call_sid)
        await ws.send(twilio_start(call_sid))
        started = time.monotonic()
        await h.sim.wait_for_connections(1, timeout=5)
        for _ in range(1000):  # 20 s of μ-law, as fast as the socket takes it
            await ws.send(MEDIA)
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        await ws.send(json.dumps({"event": "stop", "stop": {}}))
        await _until_closed(ws)
        await h.calls_finished()
        received_s = len(h.sim.connections[0].audio_in) / 32000  # PCM16 at 16 kHz
        metrics = h.gateway.state.metrics.render().decode()
    (ended,) = h.named("call.ended")
    assert 1.0 <= received_s <= elapsed + 1.1
    assert ended["caller_audio_dropped_s"] >= 20 - elapsed - 1.1
    name = "gateway_caller_audio_dropped_seconds_total "
    (line,) = [x for x in metrics.splitlines() if x.startswith(name)]
    dropped = float(line.split()[1])
    assert dropped == pytest.approx(ended["caller_audio_dropped_s"], abs=0.01)


@pytest.mark.parametrize(
    ("carrier", "options"),
    [
        (Carrier(), {}),
        (Carrier("telnyx", "PCMU"), {"burst_frames": 75}),  # 1.5 s stalls, then catch-up
        (Carrier("telnyx", "L16", "call-control"), {"reorder_window": 3, "duplicate_every": 7}),
    ],
    ids=["twilio", "telnyx-bursty", "telnyx-reordered"],
)
async def test_a_real_caller_never_loses_audio_to_the_real_time_budget(
    carrier: Carrier, options: dict[str, int]
) -> None:
    async with running(carrier=carrier) as h:
        await h.call([Tone(300, 3.0), Silence(1.0)], linger_s=0.5, **options)
        metrics = h.gateway.state.metrics.render().decode()
    (ended,) = h.named("call.ended")
    assert ended["caller_audio_dropped_s"] == 0.0
    assert "gateway_caller_audio_dropped_seconds_total 0.0" in metrics
    assert len(h.sim.connections[0].audio_in) >= 4.4 * 32000  # all of it reached the model
