"""Operations: readiness, metrics, limits, the watchdog, drain, and the fuzzed front door."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET

import httpx
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step, ToolCallSpec
from tests.harness import agents, running

FORM = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+14155550100",
        "To": "+18005550199", "CallStatus": "ringing"}  # fmt: skip


def _metric(text: str, name: str) -> float:
    """The value of one sample line (``name`` includes labels, as exposed)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_metrics_count_calls_handoffs_frames_and_latency() -> None:
    steps = [
        Step(on="text", say="hi", seconds=0.6),
        Step(on="caller", hear="advice", say="Transferring.", seconds=0.4,
             tool_call=ToolCallSpec("handoff_conversation", {"target": "agent-advisor",
                                    "reason": "r", "summary": "s"})),
    ]  # fmt: skip
    async with (
        running(steps=steps, graph=agents(agent_triage={"greeting": "Hi."})) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        during = asyncio.create_task(h.call([Silence(1.5), Tone(300, 0.5), Silence(2.0)]))
        await h.sim.wait_for_connections(1, timeout=3)
        live = (await http.get("/metrics")).text
        await during
        response = await http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _metric(live, "gateway_active_calls") == 1
    assert _metric(text, "gateway_active_calls") == 0
    assert _metric(text, 'gateway_calls_total{outcome="completed"}') == 1
    assert _metric(text, "gateway_handoffs_total") == 1
    assert _metric(text, "gateway_handoff_seconds_count") == 1
    assert _metric(text, "gateway_first_audio_seconds_count") >= 1
    assert _metric(text, 'gateway_audio_frames_total{direction="in"}') > 150
    assert _metric(text, 'gateway_audio_frames_total{direction="out"}') > 20
    for name in ("gateway_live_reconnects_total", "gateway_dropped_frames_total",
                 "gateway_errors_total"):  # fmt: skip
        assert f"# TYPE {name} counter" in text


async def test_readyz_and_capacity_refuse_calls_politely() -> None:
    async with (
        running(max_concurrent_calls=1) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        first = asyncio.create_task(h.call([Silence(2.0)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=3)
        full = await http.get("/readyz")
        busy = await http.post("/twilio/voice", data=FORM)
        await first
        metrics = (await http.get("/metrics")).text
        assert (await http.get("/readyz")).status_code == 200
    assert full.status_code == 503 and full.json()["status"] == "capacity"
    root = ET.fromstring(busy.text)
    assert root.find("Connect") is None
    assert "busy" in (root.findtext("Say") or "")
    assert root.find("Hangup") is not None
    assert _metric(metrics, 'gateway_calls_total{outcome="rejected_capacity"}') == 1


async def test_max_call_duration_ends_the_call_politely() -> None:
    async with running(max_call_duration=1.5) as h:
        result = await h.call([Silence(5.0)], linger_s=0.1)
    assert result.closed_by == "gateway"
    assert 1.4 < result.call_time(result.ended_at or 0) < 3.0
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "max_duration"


async def test_the_watchdog_ends_a_call_where_nothing_moves() -> None:
    async with running(call_idle_timeout=1.0) as h:
        token = h.gateway.state.tokens.mint("twilio", "CAidle", time.time())
        start = {"event": "start", "streamSid": "MZidle", "start": {"streamSid": "MZidle",
                 "callSid": "CAidle", "customParameters": {"token": token}}}  # fmt: skip
        async with websockets.connect(f"ws://127.0.0.1:{h.gateway.port}/twilio/stream") as ws:
            await ws.send(json.dumps(start))
            began = time.monotonic()
            await asyncio.wait_for(ws.wait_closed(), 5)  # the caller sent no media at all
            elapsed = time.monotonic() - began
        await h.calls_finished()
    assert 0.9 < elapsed < 2.5
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "idle_timeout"
    assert h.sim.connections[0].closed_by == "client"


async def test_drain_refuses_new_calls_and_lets_live_ones_finish() -> None:
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        live = asyncio.create_task(h.call([Silence(2.0)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=3)
        drain = asyncio.create_task(h.gateway.drain(timeout_s=10))
        await asyncio.sleep(0.05)
        ready = await http.get("/readyz")
        busy = await http.post("/twilio/voice", data=FORM)
        result = await live
        await asyncio.wait_for(drain, 5)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert "<Connect>" not in busy.text
    assert result.closed_by == "caller"  # the live call ran to its natural end
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"


async def test_drain_timeout_ends_remaining_calls_politely() -> None:
    async with running() as h:
        live = asyncio.create_task(h.call([Silence(10.0)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=3)
        began = time.monotonic()
        await h.gateway.drain(timeout_s=0.5)
        result = await asyncio.wait_for(live, 5)
        elapsed = time.monotonic() - began
    assert result.closed_by == "gateway"
    assert elapsed < 3
    assert h.named("call.ended")[0]["reason"] == "drained"


_frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["event", "streamSid", "media", "start", "mark", "dtmf", "stop", "x"]),
        st.one_of(st.text(max_size=20), st.integers(), st.none(),
                  st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)),
        max_size=5,
    ).map(json.dumps),
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frames, min_size=1, max_size=15))
async def test_fuzzed_stream_messages_never_hurt_the_gateway_or_other_calls(
    frames: list[str | bytes],
) -> None:
    async with running() as h:
        bystander = asyncio.create_task(h.call([Silence(0.6)], linger_s=0.1))
        url = f"ws://127.0.0.1:{h.gateway.port}/twilio/stream"
        async with websockets.connect(url) as ws:
            for frame in frames:
                await ws.send(frame)
        result = await bystander
        async with httpx.AsyncClient() as http:
            health = await http.get(h.gateway.url + "/healthz")
    assert result.closed_by == "caller"
    assert health.status_code == 200


async def test_behind_a_retrying_proxy_a_refusal_is_passed_on_with_503() -> None:
    retry = {"X-Callbridge-Retry": "503"}
    async with (
        running(max_concurrent_calls=1) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        live = asyncio.create_task(h.call([Silence(1.5)], linger_s=0.1))
        await h.sim.wait_for_connections(1, timeout=3)
        passed_on = await http.post("/twilio/voice", data=FORM, headers=retry)
        final = await http.post("/twilio/voice", data=FORM)  # the proxy's last try: no header
        await live
    assert passed_on.status_code == 503 and passed_on.headers["retry-after"] == "1"
    assert final.status_code == 200 and "busy" in final.text
