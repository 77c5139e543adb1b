"""Every call leaves a record, end to end: a real call through the real gateway (the Live
simulator as Gemini, the Twilio caller simulator and REST fake, a local HTTP tool server), then
the record read back through ``GET /calls``, as an operator or a CRM would see it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import wave
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.result import CallResult
from callsim.live.script import Step, ToolCallSpec
from callsim.tools import ToolServer
from gateway.agents import AgentGraph, parse_agents
from gateway.audio.analysis import dominant_frequency, rms_dbfs
from tests.harness import ADMIN_TOKEN, Harness, agents, running
from tests.servers import until

ADMIN = ADMIN_TOKEN
TRIAGE = "Role: Triage receptionist"
ADVISOR = "Role: Portfolio advisor"

AGENTS = """
model: gemini-2.5-flash-native-audio-preview-12-2025
tools:
  - name: lookup_order
    description: Look up an order's status by its number.
    parameters:
      type: object
      properties:
        order_id: {{type: string}}
      required: [order_id]
    url: {url}/orders/lookup
  - name: verify_card
    description: Check a card number.
    parameters:
      type: object
      properties:
        card: {{type: string}}
    url: {url}/cards/verify
    redact: true
agents:
  - id: agent-triage
    role: Triage receptionist
    system_prompt: Greet callers and route them.
    voice: Aoede
    greeting: Greet the caller.
  - id: agent-advisor
    role: Portfolio advisor
    system_prompt: Help with orders.
    voice: Charon
    tools: [lookup_order, verify_card, end_call]
pipeline:
  - {{phase: triage, agent_id: agent-triage, next: advising}}
  - {{phase: advising, agent_id: agent-advisor}}
"""

HANDOFF = ToolCallSpec("handoff_conversation", {
    "target": "agent-advisor", "reason": "order question", "summary": "caller has order A17",
})  # fmt: skip
STEPS = [
    Step(on="text", when=TRIAGE, say="Hello, how can I help?", seconds=0.8),
    Step(on="caller", when=TRIAGE, hear="Where is my order?", say="Let me transfer you.",
         seconds=0.6, tool_call=HANDOFF),
    Step(on="text", when=ADVISOR, say="Advisor here.", seconds=0.6),
    Step(on="caller", when=ADVISOR, hear="Order A17 please.", say="Let me check.", seconds=0.4,
         tool_call=ToolCallSpec("lookup_order", {"order_id": "A17"}), then_say="It shipped.",
         then_seconds=0.4),
    Step(on="caller", when=ADVISOR, hear="My card is 4111.", say="Checking.", seconds=0.4,
         tool_call=ToolCallSpec("verify_card", {"card": "4111111111111111"})),
    Step(on="caller", when=ADVISOR, hear="Bye.", say="Goodbye!", seconds=0.6,
         tool_call=ToolCallSpec("end_call", {"reason": "caller is done"})),
]  # fmt: skip
#: What the caller says: one utterance per caller step, with room for each answer.
SPEECH = [Silence(1.6), Tone(300, 0.5), Silence(3.0), Tone(300, 0.5), Silence(2.4),
          Tone(300, 0.5), Silence(1.6), Tone(300, 0.5), Silence(1.0)]  # fmt: skip
KEYS = [(9.6, "1"), (9.8, "2"), (10.0, "#")]


def graph_for(url: str) -> AgentGraph:
    return parse_agents(AGENTS.format(url=url))


@contextlib.asynccontextmanager
async def recorded_gateway(database_url: str, **settings: Any) -> AsyncIterator[Harness]:
    async with contextlib.AsyncExitStack() as stack:
        tools = await stack.enter_async_context(ToolServer())
        tools.respond("/cards/verify", {"valid": True})
        h = await stack.enter_async_context(
            running(
                steps=STEPS,
                graph=graph_for(tools.url),
                carrier_api=True,
                database_url=database_url,
                admin_api_token=ADMIN,
                **settings,
            )
        )
        yield h


async def admin_get(h: Harness, path: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=h.gateway.url) as client:
        return await client.get(path, params=params, headers={"Authorization": f"Bearer {ADMIN}"})


async def the_call(h: Harness) -> CallResult:
    return await h.call(SPEECH, dtmf=KEYS, linger_s=6.0)


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


async def test_a_finished_call_leaves_a_record_of_everything_that_happened(
    database_url: str,
) -> None:
    async with recorded_gateway(database_url) as h:
        result = await the_call(h)
        await until(lambda: not _writing(h))
        answer = await admin_get(h, f"/calls/{result.call_sid}")
        assert answer.status_code == 200, answer.text
        record = answer.json()
        listed = (await admin_get(h, "/calls")).json()
    assert listed["calls"] == [record] and listed["next"] is None
    assert record["call_id"] == result.call_sid
    assert (record["carrier"], record["direction"]) == ("twilio", "inbound")
    assert (record["from"], record["to"]) == ("+14155550123", "+18005550100")
    started, ended = parse_time(record["started_at"]), parse_time(record["ended_at"])
    assert record["duration_s"] == pytest.approx((ended - started).total_seconds(), abs=0.002)
    assert 8 < record["duration_s"] < 30
    assert record["end_reason"] == "agent_ended" and record["transfer_to"] is None
    assert record["agents"] == ["agent-triage", "agent-advisor"]
    (handoff,) = record["handoffs"]
    assert handoff["from"] == "agent-triage" and handoff["to"] == "agent-advisor"
    assert (handoff["reason"], handoff["summary"]) == ("order question", "caller has order A17")
    assert 0 <= handoff["reconnect_ms"] < 2000 and started <= parse_time(handoff["at"]) <= ended
    said = [(t["role"], t["agent_id"], t["text"]) for t in record["transcript"]]
    assert said[:2] == [("agent", "agent-triage", "Hello, how can I help?"),
                        ("caller", "agent-triage", "Where is my order?")]  # fmt: skip
    assert ("caller", "agent-advisor", "Order A17 please.") in said
    assert ("agent", "agent-advisor", "Goodbye!") in said
    assert all(started <= parse_time(t["at"]) <= ended for t in record["transcript"])
    tools = {t["name"]: t for t in record["tool_calls"]}
    assert tools["lookup_order"]["arguments"] == {"order_id": "A17"}
    assert tools["lookup_order"]["ok"] is True and tools["lookup_order"]["ms"] >= 0
    assert "arguments" not in tools["verify_card"]  # redact: true in agents.yaml
    assert tools["handoff_conversation"]["arguments"] == {"target": "agent-advisor"}
    assert tools["end_call"]["ok"] is True
    assert [d["digits"] for d in record["dtmf"]] == ["12#"]
    assert record["reconnects"] == []
    usage = record["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert record["recording"] is None


SECRET = "records-secret-for-the-tests-0123"
QUIET = [Step(on="caller", hear="Hello?", say="Hello!", seconds=0.4)]


def deliveries(receiver: ToolServer) -> list[tuple[str, bytes, str]]:
    """(delivery id, body, signature) of every POST the receiver got, in order."""
    return [
        (r.headers["x-callbridge-delivery"], r.raw, r.headers["x-callbridge-signature"])
        for r in receiver.requests
        if r.path == "/records"
    ]


def signed(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@contextlib.asynccontextmanager
async def delivering_gateway(database_url: str, receiver: ToolServer) -> AsyncIterator[Harness]:
    async with running(
        steps=QUIET,
        database_url=database_url,
        admin_api_token=ADMIN,
        call_records_url=receiver.url + "/records",
        call_records_secret=SECRET,
        call_records_retry_s=0.1,
    ) as h:
        yield h


async def test_a_record_is_delivered_signed_after_the_receiver_was_down(
    database_url: str,
) -> None:
    async with ToolServer() as receiver, delivering_gateway(database_url, receiver) as h:
        receiver.respond("/records", {"error": "down"}, status=503)
        result = await h.call([Silence(0.3), Tone(300, 0.4), Silence(1.0)], linger_s=0.5)
        await until(lambda: len(deliveries(receiver)) >= 3)  # tried, and tried again
        receiver.respond("/records", {"ok": True})
        await until(lambda: _delivered(h) == 1)
        stored = (await admin_get(h, f"/calls/{result.call_sid}")).json()
        await asyncio.sleep(0.5)  # five retry periods: a delivered record is not sent again
        attempts = deliveries(receiver)
    ids = {delivery_id for delivery_id, _, _ in attempts}
    assert len(ids) == 1 and len(attempts) >= 4  # one id on every attempt
    assert len({body for _, body, _ in attempts}) == 1  # and the same bytes
    _, body, signature = attempts[-1]
    assert signature == signed(body)
    assert json.loads(body) == stored
    assert stored["call_id"] == result.call_sid and stored["end_reason"] == "caller_hangup"


def _delivered(h: Harness) -> float:
    text = h.gateway.state.metrics.render().decode()
    for line in text.splitlines():
        if line.startswith('gateway_call_record_deliveries_total{result="delivered"}'):
            return float(line.split()[-1])
    return 0.0


async def test_a_delivery_pending_at_a_restart_is_made_once_by_the_next_process(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'calls.db'}"
    async with ToolServer() as receiver:
        receiver.respond("/records", {"error": "down"}, status=503)
        async with delivering_gateway(database_url, receiver) as h:
            result = await h.call([Silence(0.3), Tone(300, 0.4), Silence(1.0)], linger_s=0.5)
            await until(lambda: len(deliveries(receiver)) >= 1)
        refused = len(deliveries(receiver))
        receiver.respond("/records", {"ok": True})
        async with delivering_gateway(database_url, receiver) as h:
            await until(lambda: _delivered(h) == 1)
            await asyncio.sleep(0.5)
            assert _delivered(h) == 1
        attempts = deliveries(receiver)
    assert len(attempts) == refused + 1  # the new process sent it once, and it was taken
    assert len({delivery_id for delivery_id, _, _ in attempts}) == 1
    assert json.loads(attempts[-1][1])["call_id"] == result.call_sid


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_an_outbound_calls_record_says_outbound_with_the_carriers_call_id(
    carrier: str, tmp_path: Path
) -> None:
    steps = [Step(on="text", when=ADVISOR, say="Hello, advisor calling.", seconds=0.6)]
    graph = agents(agent_advisor={"greeting": "Introduce yourself."})
    async with running(
        steps=steps, graph=graph, outbound=True, database_url=f"sqlite:///{tmp_path}/c.db"
    ) as h:
        api = h.twilio_api if carrier == "twilio" else h.telnyx_api
        assert api is not None
        if carrier == "twilio":
            api.callee = {"audio": render([Silence(1.5)]), "linger_s": 0.1}
        else:
            api.callee = {"speech": [Silence(1.5)], "linger_s": 0.1}
        body = {"to": "+15552223333", "from": "+15550001111", "carrier": carrier,
                "phase": "advising"}  # fmt: skip
        async with httpx.AsyncClient() as http:
            placed = await http.post(
                f"{h.gateway.url}/calls", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
            )
        assert placed.status_code == 201, placed.text
        call_id = placed.json()["call_id"]
        await api.outbound_result(call_id)
        await h.calls_finished()
        await until(lambda: h.gateway.state.records is not None and not _writing(h))
        record = (await admin_get(h, f"/calls/{call_id}")).json()
    assert (record["call_id"], record["carrier"], record["direction"]) == (
        call_id, carrier, "outbound")  # fmt: skip
    assert (record["from"], record["to"]) == ("+15550001111", "+15552223333")
    assert record["agents"] == ["agent-advisor"]
    assert record["end_reason"] == "caller_hangup"
    assert record["transcript"][0]["text"] == "Hello, advisor calling."


def _writing(h: Harness) -> bool:
    records = h.gateway.state.records
    return records is not None and records.writing


def audible_spans(pcm: bytes, rate: int = 8000) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of audible 10 ms windows in ``pcm``."""
    window, spans = rate // 100 * 2, []
    for i in range(0, len(pcm) - window + 1, window):
        if rms_dbfs(pcm[i : i + window]) <= -40:
            continue
        t = i / 2 / rate
        if spans and t - spans[-1][1] < 0.015:
            spans[-1] = (spans[-1][0], t + 0.01)
        else:
            spans.append((t, t + 0.01))
    return spans


async def test_the_recording_holds_both_sides_as_the_caller_heard_them_barge_in_included(
    tmp_path: Path,
) -> None:
    steps = [Step(on="text", say="a long answer", seconds=6.0)]
    greeting = agents(agent_triage={"greeting": "Greet the caller."})
    async with running(
        steps=steps,
        graph=greeting,
        database_url=f"sqlite:///{tmp_path}/calls.db",
        admin_api_token=ADMIN,
        recordings_dir=tmp_path / "recordings",
    ) as h:
        result = await h.call([Silence(1.5), Tone(300, 0.8), Silence(1.5)], linger_s=0.2)
        await until(lambda: not _writing(h))
        record = (await admin_get(h, f"/calls/{result.call_sid}")).json()
    path = tmp_path / "recordings" / f"{result.call_sid}.wav"
    assert record["recording"] == str(path)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        frames = wav.readframes(wav.getnframes())
    stereo = np.frombuffer(frames, dtype="<i2").reshape(-1, 2)
    caller, agent = (np.ascontiguousarray(stereo[:, i]).tobytes() for i in (0, 1))
    # The caller's whole stream: 3.8 s of speech and silence, and 0.2 s more while it lingers.
    assert len(caller) / 2 / 8000 == pytest.approx(4.0, abs=0.15)
    # Left: the caller's tone where the caller said it, and nothing else.
    assert audible_spans(caller) == [(pytest.approx(1.5, abs=0.1), pytest.approx(2.3, abs=0.1))]
    assert dominant_frequency(caller[int(1.7 * 16000) : int(2.1 * 16000)], 8000) == (
        pytest.approx(300, abs=10)
    )
    # Right: the agent as the caller heard it, stretch for stretch (within 100 ms: the caller's
    # clock and the recording's start a few milliseconds apart, and a busy machine schedules
    # late): the long answer cut off at the barge-in (the clear), then the agent's reply.
    heard = audible_spans(result.heard_pcm())
    recorded = audible_spans(agent)
    assert len(recorded) == len(heard) >= 2
    for (start, end), (heard_start, heard_end) in zip(recorded, heard, strict=True):
        assert start == pytest.approx(heard_start, abs=0.1)
        assert end == pytest.approx(heard_end, abs=0.1)
    clear_at = result.call_time(result.clear_times[0])
    assert recorded[0][1] == pytest.approx(clear_at, abs=0.1)  # not the 6 s it was to last
