"""The Telnyx caller simulator on whole calls: TeXML and Call Control, every codec, misbehaviour.

Calls run against a small scripted test gateway (FastAPI + uvicorn in its own thread and event
loop, below) and the fake Call Control API (also in its own thread), so after each call the
test's loop must hold no task but the test itself: anything the caller left running would show.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
import numpy as np
import pytest
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from callsim.callers.audio import Silence, Tone
from callsim.callers.result import CallEvent, CallResult
from callsim.callers.telnyx import TelnyxCaller
from callsim.telnyx.api import TelnyxApiSimulator
from callsim.telnyx.peer import FORMATS, Violation
from callsim.wav import read_wav
from gateway.audio import analysis, g711, g722

STREAM_PATH = "/telnyx/stream"
PARAMS = {"session": "tok-123", "from_number": "+13122010094"}
RATES = {"PCMU": 8000, "PCMA": 8000, "G722": 16000, "L16": 16000}
KEY = Ed25519PrivateKey.generate()
B64_ANSWERED = base64.b64encode(b"answered").decode()
B64_STREAMING = base64.b64encode(b"streaming").decode()

Scenario = Callable[["ServerCall"], Awaitable[None]]


# === a small Telnyx-speaking test gateway ========================================================


@dataclass
class Behaviour:
    """How the test gateway answers; a fresh one per test."""

    codec: str = "PCMU"  # bidirectional codec asked for (and, by default, inbound)
    inbound: str | None = None  # <Stream codec> / stream_codec
    rate: int | None = None  # None: the codec's own rate
    mode: str | None = "rtp"  # None: left out (Telnyx then defaults to mp3)
    texml: str | None = None  # full TeXML override; "{url}" is replaced
    public_key: Ed25519PublicKey | None = None  # check webhook signatures (403 if bad)
    scenario: Scenario | None = None  # runs on the stream once `start` arrived
    echo: bool = False  # send every inbound payload straight back
    api_base: str = ""
    api_key: str = ""
    answer: bool = True
    stream: Literal["on_answered", "on_answer", "before_answer", "never"] = "on_answered"
    hangup_after_close: bool = True  # Call Control: POST hangup once the stream handler ends


@dataclass
class ServerCall:
    """What the test gateway saw of one call; written in the server thread."""

    behaviour: Behaviour
    webhooks: list[tuple[str, Any]] = field(default_factory=list)  # (event type, form or JSON)
    signatures_ok: list[bool] = field(default_factory=list)
    api_answers: list[tuple[str, int, Any]] = field(default_factory=list)
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    start_time: float = 0.0
    stream_id: str = ""
    call_control_id: str = ""
    disconnect_code: int | None = None
    errors: list[BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    ws: WebSocket | None = None

    def events(self) -> list[str]:
        return [m["event"] for _, m in self.messages]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["event"] == event]

    def webhook(self, event_type: str) -> dict[str, Any]:
        [body] = [b for kind, b in self.webhooks if kind == event_type]
        payload: dict[str, Any] = body["data"]["payload"]
        return payload

    async def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after ``start`` arrived."""
        await asyncio.sleep(max(0.0, self.start_time + seconds - time.monotonic()))

    async def send(self, message: object) -> None:
        assert self.ws is not None
        await self.ws.send_text(message if isinstance(message, str) else json.dumps(message))

    async def media(self, payload: bytes) -> None:
        payload_b64 = base64.b64encode(payload).decode()
        await self.send({"event": "media", "media": {"payload": payload_b64}})

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "mark": {"name": name}})

    async def clear(self) -> None:
        await self.send({"event": "clear"})

    async def api(self, action: str, body: dict[str, Any] | None = None) -> int:
        """POST a Call Control command for this call to the fake API."""
        b = self.behaviour
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{b.api_base}/calls/{self.call_control_id}/actions/{action}",
                json=body or {},
                headers={"Authorization": f"Bearer {b.api_key}"},
            )
        self.api_answers.append((action, response.status_code, response.json()))
        return response.status_code


class TelnyxGateway:
    """FastAPI app on 127.0.0.1 in a background thread, scripted per test by ``behaviour``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stream_url = f"ws://127.0.0.1:{self.port}{STREAM_PATH}"
        self.behaviour = Behaviour()
        self.calls: list[ServerCall] = []
        config = uvicorn.Config(
            self._app(), lifespan="off", log_level="warning", ws="websockets-sansio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve([self.sock])))

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "test gateway did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/telnyx/voice")
        async def voice(request: Request) -> Response:
            body = await request.body()
            is_json = request.headers.get("content-type", "").startswith("application/json")
            event = json.loads(body) if is_json else None
            if event is None or event["data"]["event_type"] == "call.initiated" or not self.calls:
                self.calls.append(ServerCall(self.behaviour))
            call = self.calls[-1]
            b = call.behaviour
            if b.public_key is not None:
                ok = _signature_ok(b.public_key, request.headers, body)
                call.signatures_ok.append(ok)
                if not ok:
                    return Response("invalid or missing Telnyx signature", status_code=403)
            if event is not None:
                return await self._call_control(call, event)
            call.webhooks.append(("texml", dict(parse_qsl(body.decode(), strict_parsing=True))))
            answer = (b.texml or texml(b)).replace("{url}", self.stream_url)
            return Response(answer, media_type="text/xml")

        @app.websocket(STREAM_PATH)
        async def media(ws: WebSocket) -> None:
            call = self.calls[-1]
            call.ws = ws
            try:
                await ws.accept()
                await self._serve_stream(call)
                call_control = call.webhooks[0][0] != "texml"
                if call_control and call.behaviour.hangup_after_close:
                    await call.api("hangup")
            except BaseException as exc:
                call.errors.append(exc)
                raise
            finally:
                call.done.set()

        return app

    async def _call_control(self, call: ServerCall, event: dict[str, Any]) -> Response:
        b = call.behaviour
        kind = event["data"]["event_type"]
        call.webhooks.append((kind, event))
        call.call_control_id = event["data"]["payload"]["call_control_id"]
        stream = {
            "stream_url": self.stream_url,
            "stream_track": "inbound_track",
            "stream_codec": b.inbound or b.codec,
            "stream_bidirectional_codec": b.codec,
            "stream_bidirectional_sampling_rate": b.rate or RATES[b.codec],
            "client_state": B64_STREAMING,
        }
        if b.mode is not None:
            stream["stream_bidirectional_mode"] = b.mode
        if kind == "call.initiated" and b.answer:
            if b.stream == "before_answer":
                await call.api("streaming_start", stream)
            answer = {"client_state": B64_ANSWERED}
            await call.api("answer", answer | stream if b.stream == "on_answer" else answer)
        elif kind == "call.answered" and b.stream in ("on_answered", "before_answer"):
            await call.api("streaming_start", stream)
        return Response('{"status":"ok"}', media_type="application/json")

    async def _serve_stream(self, call: ServerCall) -> None:
        ws = call.ws
        assert ws is not None
        b = call.behaviour
        started = asyncio.Event()

        async def run_scenario() -> None:
            await started.wait()
            if b.scenario is not None:
                await b.scenario(call)

        scenario = asyncio.create_task(run_scenario())
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    call.disconnect_code = msg.get("code")
                    break
                now = time.monotonic()
                data = json.loads(msg["text"])
                call.messages.append((now, data))
                if data["event"] == "start":
                    call.start_time, call.stream_id = now, data["stream_id"]
                    call.call_control_id = data["start"]["call_control_id"]
                    started.set()
                elif data["event"] == "media" and b.echo:
                    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                        await call.media(base64.b64decode(data["media"]["payload"]))
            if scenario.done() and not scenario.cancelled() and scenario.exception():
                call.errors.append(scenario.exception())  # type: ignore[arg-type]
        finally:
            scenario.cancel()
            await asyncio.gather(scenario, return_exceptions=True)


def texml(b: Behaviour, params: dict[str, str] = PARAMS) -> str:
    items = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in params.items())
    mode = f' bidirectionalMode="{b.mode}"' if b.mode is not None else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url="{{url}}" track="inbound_track" codec="{b.inbound or b.codec}"{mode}'
        f' bidirectionalCodec="{b.codec}" bidirectionalSamplingRate="{b.rate or RATES[b.codec]}">'
        f"{items}</Stream></Connect></Response>"
    )


def _signature_ok(key: Ed25519PublicKey, headers: Any, body: bytes) -> bool:
    """Telnyx's verification, written out independently of the simulator."""
    signature, timestamp = headers.get("telnyx-signature-ed25519"), headers.get("telnyx-timestamp")
    if not signature or not timestamp or abs(time.time() - int(timestamp)) > 300:
        return False
    try:
        key.verify(base64.b64decode(signature), timestamp.encode() + b"|" + body)
    except InvalidSignature:
        return False
    return True


@pytest.fixture(scope="module")
def server() -> Iterator[TelnyxGateway]:
    gw = TelnyxGateway()
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def api() -> Iterator[TelnyxApiSimulator]:
    """One fake API for the module (it runs in its own thread; each call registers its own id)."""
    simulator = TelnyxApiSimulator()
    asyncio.run(simulator.__aenter__())
    yield simulator
    asyncio.run(simulator.__aexit__(None, None, None))


@pytest.fixture
def gw(server: TelnyxGateway, api: TelnyxApiSimulator) -> TelnyxGateway:
    server.behaviour = Behaviour(api_base=api.base_url, api_key=api.api_key)
    server.calls.clear()
    return server


async def place_call(gw: TelnyxGateway, **options: Any) -> tuple[CallResult, ServerCall | None]:
    """Run one call; check the caller left nothing running and the gateway side finished."""
    t0 = time.monotonic()
    result = await TelnyxCaller(gw.url, **options).run()
    assert asyncio.all_tasks() == {asyncio.current_task()}, "the caller left tasks running"
    assert time.monotonic() - t0 < 5
    if not gw.calls:
        return result, None
    call = gw.calls[-1]
    if result.stream_url is not None:
        for _ in range(300):
            if call.done.is_set():
                break
            await asyncio.sleep(0.01)
        assert call.done.is_set(), "the gateway's stream handler did not finish"
    assert call.errors == []
    return result, call


def encode(codec: str, pcm: bytes) -> bytes:
    """The codecs written out with gateway.audio directly (not the simulator's helpers)."""
    if codec == "PCMU":
        return g711.ulaw_encode(pcm)
    if codec == "PCMA":
        return g711.alaw_encode(pcm)
    if codec == "L16":
        return np.frombuffer(pcm, dtype="<i2").astype(">i2").tobytes()
    return g722.G722Encoder().encode(pcm)


def decode(codec: str, payload: bytes) -> bytes:
    if codec == "PCMU":
        return g711.ulaw_decode(payload)
    if codec == "PCMA":
        return g711.alaw_decode(payload)
    if codec == "L16":
        return np.frombuffer(payload, dtype=">i2").astype("<i2").tobytes()
    return g722.G722Decoder().decode(payload)


def kinds(result: CallResult) -> list[str]:
    return result.violation_kinds()


# === TeXML calls ================================================================================


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])  # TeXML's codecs (L16: Call Control)
async def test_texml_call_is_exact_paced_and_heard_per_codec(gw: TelnyxGateway, codec: str) -> None:
    rate = RATES[codec]
    wide = rate == 16000
    say_hz, hear_hz = (5000.0, 6000.0) if wide else (1000.0, 700.0)  # > 4 kHz: really wideband
    tone = analysis.sine_pcm16(hear_hz, 0.2, rate, dbfs=-12.0)

    async def speak(call: ServerCall) -> None:
        await call.at(0.3)
        await call.media(encode(codec, tone))  # 200 ms, whole 20 ms frames
        await call.mark("tone-end")

    gw.behaviour.codec, gw.behaviour.public_key = codec, KEY.public_key()
    gw.behaviour.scenario = speak
    speech = [Silence(0.05), Tone(say_hz, 0.3, -10.0)]  # 17.5 frames: the last one padded
    events: list[CallEvent] = []
    result, call = await place_call(
        gw,
        speech=speech,
        linger_s=0.4,
        dtmf=[(0.1, "5"), (0.2, "#")],
        signing_key=KEY,
        on_event=events.append,
        call_codec=codec,  # a leg in the codec asked for: nothing to transcode
    )
    assert call is not None
    assert result.violations == [], result.violations
    assert call.signatures_ok == [True]
    form = call.webhooks[0][1]
    assert form["CallSid"] == form["CallSidLegacy"] == result.call_control_id
    assert result.call_control_id.startswith("v3:")
    assert (form["AccountSid"], form["CallStatus"], form["Direction"]) == (
        result.account_sid,
        "ringing",
        "inbound",
    )
    assert (form["From"], form["To"]) == ("+13122010094", "+13122123456")
    assert (result.carrier, result.mode, result.codec, result.bidirectional_codec) == (
        "telnyx",
        "texml",
        codec,
        codec,
    )
    assert (result.heard_rate, result.heard_encoding) == (rate, "pcm16")

    # The inbound sequence, exactly.
    fmt = FORMATS[codec]
    n_media = 18 + 20  # ceil(0.35 s / 20 ms) + 0.4 s linger
    events_seen = call.events()
    assert events_seen[:2] == ["connected", "start"]
    assert events_seen[-1] == "stop"
    assert events_seen.count("media") == n_media
    assert events_seen.count("dtmf") == 2
    assert [m["sequence_number"] for _, m in call.messages[1:]] == [
        str(i) for i in range(1, len(events_seen))
    ]
    assert call.messages[0][1] == {"event": "connected", "version": "1.0.0"}
    sid = result.stream_id
    assert call.of("start") == [
        {
            "event": "start",
            "sequence_number": "1",
            "start": {
                "user_id": result.account_sid,
                "call_control_id": result.call_control_id,
                "call_session_id": result.call_session_id,
                "from": "+13122010094",
                "to": "+13122123456",
                "client_state": None,
                "media_format": {
                    "encoding": codec,
                    "sample_rate": 8000 if codec == "G722" else rate,  # G.722: its RTP clock
                    "channels": 1,
                },
                "custom_parameters": PARAMS,
            },
            "stream_id": sid,
        }
    ]
    media = call.of("media")
    assert [set(m) for m in media] == [{"event", "sequence_number", "media", "stream_id"}] * n_media
    assert [m["media"]["chunk"] for m in media] == [str(k) for k in range(1, n_media + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * k) for k in range(n_media)]
    assert {m["media"]["track"] for m in media} == {"inbound"}
    assert {m["stream_id"] for m in media} == {sid}
    payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
    assert {len(p) for p in payloads} == {fmt.frame_bytes}  # 160, 160, 640, 160
    spoken = Silence(0.05).pcm(rate) + Tone(say_hz, 0.3, -10.0).pcm(rate)
    expected = encode(codec, spoken.ljust(n_media * 2 * fmt.samples_per_frame, b"\0"))
    assert b"".join(payloads) == expected
    dtmf = call.of("dtmf")
    assert [d["dtmf"] for d in dtmf] == [{"digit": "5"}, {"digit": "#"}]
    assert set(dtmf[0]) == {"event", "stream_id", "occurred_at", "sequence_number", "dtmf"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", dtmf[0]["occurred_at"])
    assert events_seen.index("dtmf") == 2 + 4  # at 0.1 s, right before chunk 5 (due at 0.1 s)
    assert call.of("stop") == [
        {
            "event": "stop",
            "sequence_number": str(len(events_seen) - 1),
            "stop": {"user_id": result.account_sid, "call_control_id": result.call_control_id},
            "stream_id": sid,
        }
    ]

    # Real-time pacing on an absolute schedule: chunk k arrives ~k·20 ms after `start`.
    arrivals = np.array([t for t, m in call.messages if m["event"] == "media"]) - call.start_time
    lateness = arrivals - 0.020 * np.arange(1, n_media + 1)
    assert np.median(np.abs(lateness)) < 0.005
    assert np.max(np.abs(lateness)) < 0.040
    assert result.send_timing.samples == n_media
    assert (result.closed_by, result.close_code, call.disconnect_code) == ("caller", 1000, 1000)

    # What the caller heard: the gateway's tone, decoded, from the tick after it arrived.
    assert result.first_media_time is not None
    arrived = result.call_time(result.first_media_time)
    onset = result.heard_onset_s(min_level=300)
    assert onset is not None
    assert arrived <= onset <= arrived + 0.02 + 0.002  # G.722's QMF adds ~0.7 ms
    heard = result.heard_between(onset + 0.03, onset + 0.17)
    assert analysis.tone_dbfs(heard, rate, hear_hz) == pytest.approx(-12.0, abs=0.6)
    assert analysis.dominant_frequency(heard, rate) == pytest.approx(hear_hz, abs=15)
    assert result.media_bytes_received == len(encode(codec, tone))
    assert result.heard_s == pytest.approx(0.75, abs=0.04)
    [echo] = result.mark_echoes
    assert (echo.name, echo.cleared) == ("tone-end", False)
    played = result.call_time(echo.time) - onset
    assert 0.2 - 0.002 <= played <= 0.2 + 0.06  # (onset is ~0.7 ms late through G.722)
    assert call.of("mark") == [
        {
            "event": "mark",
            "stream_id": sid,
            "sequence_number": call.of("mark")[0]["sequence_number"],
            "mark": {"name": "tone-end"},
        }
    ]
    assert [e.kind for e in events][:2] == ["webhook", "stream_open"]
    assert [e.detail for e in events if e.kind == "webhook"] == ["texml 200"]


async def test_clear_drops_buffered_audio_and_echoes_pending_marks(gw: TelnyxGateway) -> None:
    async def talk_then_barge_in(call: ServerCall) -> None:
        await call.at(0.1)
        for i in range(50):  # 1 s of audio, faster than real time, a mark every 0.2 s
            await call.media(bytes([0x10 + i % 64]) * 160)
            if i % 10 == 9:
                await call.mark(f"m{i // 10}")
        await call.at(0.4)
        await call.clear()
        await call.at(0.55)
        await call.mark("after-clear")

    gw.behaviour.scenario = talk_then_barge_in
    result, call = await place_call(gw, linger_s=0.7)
    assert call is not None
    assert result.violations == []
    [clear_time] = result.clear_times
    t_clear = result.call_time(clear_time)
    pcm = np.frombuffer(result.heard_pcm(), dtype="<i2")
    loud = np.flatnonzero(pcm != 0) / 8000
    assert loud[-1] < t_clear + 0.02  # at most the 20 ms frame already playing
    echoes = [(e.name, e.cleared) for e in result.mark_echoes]
    assert echoes == [
        ("m0", False),  # played at ~0.32 s
        ("m1", True),
        ("m2", True),
        ("m3", True),
        ("m4", True),
        ("after-clear", False),  # nothing buffered: echoed on the next tick
    ]
    assert [m["mark"]["name"] for m in call.of("mark")] == [name for name, _ in echoes]
    assert {frozenset(m) for m in call.of("mark")} == {
        frozenset({"event", "stream_id", "sequence_number", "mark"})
    }
    assert result.unplayed_bytes == 0


async def test_reordered_and_duplicated_media_reaches_the_gateway(gw: TelnyxGateway) -> None:
    result, call = await place_call(
        gw,
        speech=[Tone(440, 0.4)],
        linger_s=0.2,
        reorder_window=4,
        duplicate_every=7,
        seed=3,
        parameters_key=None,
    )
    assert call is not None
    assert result.violations == []
    assert "custom_parameters" not in call.of("start")[0]["start"]
    media = call.of("media")
    chunks = [int(m["media"]["chunk"]) for m in media]
    n = 30
    assert sorted(set(chunks)) == list(range(1, n + 1))  # every chunk delivered
    assert len(chunks) == n + n // 7  # plus every 7th message again
    assert chunks != sorted(chunks)  # really out of order
    for m in media:  # numbered at capture, before shuffling: seq 1 is `start`
        assert int(m["sequence_number"]) == int(m["media"]["chunk"]) + 1
    raw = [json.dumps(m, sort_keys=True) for m in media]
    duplicates = [a for a, b in itertools.pairwise(raw) if a == b]
    assert len(duplicates) == n // 7  # exact copies, sent right after the original
    sent = [(result.call_time(t), m) for t, m in result.sent if m["event"] == "media"]
    assert [m for _, m in sent] == media  # the wire order the gateway saw
    for at, m in sent:  # a block leaves once its last chunk is captured, never before
        chunk = int(m["media"]["chunk"])
        assert at >= 0.020 * min(((chunk - 1) // 4 + 1) * 4, n)


async def test_reordered_g722_put_back_in_order_is_the_in_order_encoding(
    gw: TelnyxGateway,
) -> None:
    gw.behaviour.codec = "G722"
    result, call = await place_call(
        gw,
        speech=[Tone(300, 0.2)],
        linger_s=0.0,
        reorder_window=3,
        duplicate_every=2,
        seed=1,
        call_codec="G722",
    )
    assert call is not None
    assert result.violations == []
    by_chunk = {int(m["media"]["chunk"]): m["media"]["payload"] for m in call.of("media")}
    pcm = Tone(300, 0.2).pcm(16000)
    assert b"".join(base64.b64decode(by_chunk[k]) for k in sorted(by_chunk)) == encode("G722", pcm)


@pytest.mark.parametrize("sent", ["G722", "PCMU"])
async def test_the_gateway_is_heard_only_in_the_bidirectional_codec(
    gw: TelnyxGateway, sent: str
) -> None:
    """G722 asked of a PCMU call: Telnyx cannot transcode the caller to G722, so it streams
    PCMU (and says so in ``start``), but it reads the gateway's audio as G722. A gateway that
    answers in the streamed codec sends frames of the right size that decode to noise."""
    rate = RATES[sent]
    tone = analysis.sine_pcm16(700.0, 0.4, rate, dbfs=-12.0)

    async def speak(call: ServerCall) -> None:
        await call.at(0.1)
        await call.media(encode(sent, tone))

    gw.behaviour.codec, gw.behaviour.scenario = "G722", speak
    result, call = await place_call(gw, speech=[Silence(0.2)], linger_s=0.7, call_codec="PCMU")
    assert call is not None
    assert result.violations == []  # 160-byte frames either way: only the audio tells
    media_format = call.of("start")[0]["start"]["media_format"]
    assert media_format == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert (result.codec, result.bidirectional_codec, result.heard_rate) == ("PCMU", "G722", 16000)
    assert "streams the call's PCMU" in " ".join(result.warnings)
    onset = result.heard_onset_s(min_level=300)
    assert onset is not None
    heard = result.heard_between(onset + 0.05, onset + 0.35)
    level = analysis.tone_dbfs(heard, 16000, 700.0)
    impurity = analysis.rms_dbfs(heard) - level  # 0 dB for a pure tone
    if sent == "G722":
        assert level == pytest.approx(-12.0, abs=0.6)
        assert impurity < 0.5
    else:
        assert impurity > 20  # noise, with almost nothing of the tone in it


OUT = base64.b64encode(b"\x2a" * 160).decode()


@pytest.mark.parametrize(
    ("bad", "kind", "code"),
    [
        (b"\x00\x01\x02", Violation.BINARY_FRAME, 100003),
        (
            {"event": "media", "stream_id": "{sid}", "media": {"payload": OUT}},
            Violation.STREAM_ID_IN_OUTBOUND,
            100003,
        ),
        ({"event": "clear", "stream_id": "{sid}"}, Violation.STREAM_ID_IN_OUTBOUND, 100003),
        (
            {"event": "media", "media": {"payload": base64.b64encode(b"\x2a" * 80).decode()}},
            Violation.MEDIA_TOO_SHORT,
            100003,
        ),
        ({"event": "media", "media": {"payload": "***"}}, Violation.BAD_PAYLOAD, 100004),
        (
            {"event": "mark", "mark": {"name": "x"}, "sequence_number": "1"},
            Violation.EXTRA_FIELD,
            100003,
        ),
        ({"event": "stop"}, Violation.UNKNOWN_EVENT, 100003),
        ("{not json", Violation.INVALID_JSON, 100003),
    ],
)
async def test_misbehaving_gateway_is_caught_and_answered_with_error(
    gw: TelnyxGateway, bad: object, kind: str, code: int
) -> None:
    async def misbehave(call: ServerCall) -> None:
        await call.at(0.05)
        assert call.ws is not None
        if isinstance(bad, bytes):
            await call.ws.send_bytes(bad)
        elif isinstance(bad, str):
            await call.ws.send_text(bad)
        else:
            await call.ws.send_text(json.dumps(bad).replace("{sid}", call.stream_id))
        await call.mark("still-working")  # the call goes on after an invalid message
        await call.at(0.25)
        await call.ws.close(code=1000, reason="done")

    gw.behaviour.scenario = misbehave
    events: list[CallEvent] = []
    result, call = await place_call(gw, linger_s=2.0, on_event=events.append)
    assert call is not None
    assert kinds(result) == [kind]
    assert result.media_bytes_received == 0
    assert not np.any(np.frombuffer(result.heard, dtype="<i2"))
    assert [e.name for e in result.mark_echoes] == ["still-working"]
    [error] = call.of("error")
    assert error["stream_id"] == result.stream_id
    assert error["payload"]["code"] == code
    assert set(error) == {"event", "payload", "stream_id"}
    assert call.events().index("error") < call.events().index("mark")  # answered at once
    assert [e.detail for e in events if e.kind == "error_sent"] == [str(code)]


async def test_partial_frames_are_flagged_but_played(gw: TelnyxGateway) -> None:
    async def thirty_ms(call: ServerCall) -> None:
        await call.media(b"\x2a" * 240)

    gw.behaviour.scenario = thirty_ms
    result, call = await place_call(gw, linger_s=0.2)
    assert call is not None
    assert kinds(result) == [Violation.MEDIA_PARTIAL_FRAME]
    assert "error" not in call.events()
    assert result.odd_media_sizes == [240]
    assert np.count_nonzero(np.frombuffer(result.heard, dtype="<i2")) == 240


async def test_mp3_mode_is_a_violation_and_the_call_goes_on(gw: TelnyxGateway) -> None:
    gw.behaviour.mode = None
    gw.behaviour.echo = True
    result, call = await place_call(gw, speech=[Tone(500, 0.1)], linger_s=0.1)
    assert call is not None
    assert kinds(result) == [Violation.BIDIRECTIONAL_MODE]
    assert "default mp3" in result.violations[0]
    assert result.closed_by == "caller"


@pytest.mark.parametrize("signature", ["tampered", "stale", "missing"])
async def test_a_gateway_refusing_a_bad_signature_gets_no_call(
    gw: TelnyxGateway, signature: Literal["tampered", "stale", "missing"]
) -> None:
    gw.behaviour.public_key = KEY.public_key()
    result, call = await place_call(gw, signing_key=KEY, signature=signature)
    assert call is not None
    assert (result.webhook_status, call.signatures_ok) == (403, [False])
    assert result.violations == []
    assert (result.started_at, result.closed_by, result.stream_url) == (None, None, None)
    assert [(w.event, w.status, w.signature) for w in result.webhooks] == [
        ("texml", 403, signature)
    ]


async def test_a_gateway_accepting_a_bad_signature_is_warned_about(gw: TelnyxGateway) -> None:
    result, _ = await place_call(gw, signing_key=KEY, signature="tampered", linger_s=0.05)
    assert result.webhook_status == 200
    assert result.violations == []
    assert any("tampered signature" in w for w in result.warnings)


async def test_a_valid_signature_refused_is_a_violation(gw: TelnyxGateway) -> None:
    gw.behaviour.public_key = Ed25519PrivateKey.generate().public_key()  # another account's
    result, _ = await place_call(gw, signing_key=KEY)
    assert kinds(result) == [Violation.WEBHOOK_STATUS]
    assert result.started_at is None


@pytest.mark.parametrize(("mode", "code"), [("stop", 1000), ("close", 1000), ("drop", 1005)])
async def test_hangup_modes(gw: TelnyxGateway, mode: str, code: int) -> None:
    result, call = await place_call(gw, linger_s=0.1, hangup=mode)
    assert call is not None
    assert (result.violations, result.closed_by) == ([], "caller")
    assert ("stop" in call.events()) == (mode == "stop")
    assert call.disconnect_code == code


async def test_texml_call_hung_up_through_the_api(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    async def hang_up(call: ServerCall) -> None:
        await call.at(0.15)
        assert await call.api("hangup") == 200

    gw.behaviour.scenario = hang_up
    result, call = await place_call(gw, linger_s=3.0, api=api)
    assert call is not None
    assert result.violations == []
    assert result.api_actions() == ["hangup"]
    assert (result.closed_by, result.close_code, call.disconnect_code) == ("gateway", 1000, 1000)
    assert call.events()[-1] == "stop"  # Telnyx: stop, then it closes the socket
    assert result.ended_at is not None
    assert result.started_at is not None
    assert result.ended_at - result.started_at >= 0.15
    hung_up_at = result.api_requests[0].time
    assert 0 <= result.ended_at - hung_up_at < 0.02 + 0.03  # within a tick of the command


async def test_unreachable_gateway() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = await TelnyxCaller(f"http://127.0.0.1:{port}").run()
    assert kinds(result) == [Violation.WEBHOOK_FAILED]
    assert [(w.event, w.status) for w in result.webhooks] == [("texml", None)]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_stream_that_cannot_be_opened(gw: TelnyxGateway) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"ws://127.0.0.1:{s.getsockname()[1]}/telnyx/stream"
        result = await TelnyxCaller(gw.url, stream_url=closed).run()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert kinds(result) == [Violation.STREAM_CONNECT_FAILED]
    assert (result.started_at, result.closed_by, result.stream_url) == (None, None, closed)


async def test_broken_websocket_framing_is_caught(gw: TelnyxGateway) -> None:
    async def bad_utf8(ws: ServerConnection) -> None:
        await ws.recv()  # connected
        ws.transport.write(b"\x81\x02\xff\xfe")  # a text frame that is not UTF-8
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    async with serve(bad_utf8, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        caller = TelnyxCaller(gw.url, linger_s=1.0, stream_url=f"ws://127.0.0.1:{port}")
        result = await caller.run()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert kinds(result) == [Violation.WEBSOCKET_PROTOCOL]
    assert "1007" in result.violations[0]
    assert result.closed_by == "gateway"


# === Call Control ===============================================================================


def cc(api: TelnyxApiSimulator, **options: Any) -> dict[str, Any]:
    return {"mode": "call-control", "api": api, "signing_key": KEY} | options


async def test_call_control_dance_with_a_gateway_hangup(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    async def talk_and_hang_up(call: ServerCall) -> None:
        await call.at(0.1)
        await call.media(encode("L16", analysis.sine_pcm16(6000, 0.1, 16000, dbfs=-12.0)))
        await call.mark("bye")
        await call.at(0.4)
        assert await call.api("hangup") == 200

    b = gw.behaviour
    b.codec, b.inbound, b.public_key = "L16", "PCMU", KEY.public_key()  # PCMU in, L16 back
    b.scenario, b.hangup_after_close = talk_and_hang_up, False
    events: list[CallEvent] = []
    result, call = await place_call(
        gw, **cc(api, speech=[Tone(440, 0.2)], linger_s=3.0, on_event=events.append)
    )
    assert call is not None
    assert result.violations == [], result.violations
    assert all(call.signatures_ok)
    assert len(call.signatures_ok) == 5
    assert [(w.event, w.status) for w in result.webhooks] == [
        ("call.initiated", 200),
        ("call.answered", 200),
        ("streaming.started", 200),
        ("streaming.stopped", 200),
        ("call.hangup", 200),
    ]
    initiated = call.webhook("call.initiated")
    assert initiated == {
        "call_control_id": result.call_control_id,
        "call_leg_id": initiated["call_leg_id"],
        "call_session_id": result.call_session_id,
        "connection_id": initiated["connection_id"],
        "from": "+13122010094",
        "to": "+13122123456",
        "direction": "incoming",
        "state": "parked",
        "client_state": None,
    }
    event = call.webhooks[0][1]
    assert set(event) == {"data", "meta"}
    assert set(event["data"]) == {"event_type", "id", "occurred_at", "record_type", "payload"}
    assert event["meta"] == {"attempt": 1, "delivered_to": result.webhook_url}
    assert call.webhook("call.answered")["client_state"] == B64_ANSWERED
    assert call.webhook("call.answered")["state"] == "answered"
    assert call.webhook("streaming.started")["stream_url"] == gw.stream_url
    hangup = call.webhook("call.hangup")
    assert (hangup["hangup_source"], hangup["hangup_cause"]) == ("callee", "normal_clearing")
    assert hangup["client_state"] == B64_STREAMING
    assert result.api_actions() == ["answer", "streaming_start", "hangup"]
    assert [r.status for r in result.api_requests] == [200, 200, 200]
    start = call.of("start")[0]["start"]
    assert start["client_state"] == B64_STREAMING  # from streaming_start
    assert start["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert (result.codec, result.bidirectional_codec, result.heard_rate) == ("PCMU", "L16", 16000)
    assert {len(base64.b64decode(m["media"]["payload"])) for m in call.of("media")} == {160}
    # The gateway hung up: Telnyx sends stop and closes the socket itself.
    assert call.events()[-1] == "stop"
    assert (result.closed_by, call.disconnect_code) == ("gateway", 1000)
    assert result.ended_at is not None
    assert result.started_at is not None
    assert result.ended_at - result.started_at >= 0.4
    assert 0 <= result.ended_at - result.api_requests[-1].time < 0.02 + 0.03
    heard = result.heard_between(0.15, 0.2)
    assert analysis.tone_dbfs(heard, 16000, 6000) == pytest.approx(-12.0, abs=0.5)
    assert [e.name for e in result.mark_echoes] == ["bye"]
    kinds_seen = [e.kind for e in events]
    assert kinds_seen.count("api_command") == 3
    assert kinds_seen.count("webhook") == 5


async def test_caller_hangs_up_and_a_late_gateway_hangup_gets_90018(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    result, call = await place_call(gw, **cc(api, linger_s=0.15))
    assert call is not None
    assert result.violations == []
    assert result.closed_by == "caller"
    assert call.events()[-1] == "stop"
    assert result.api_actions() == ["answer", "streaming_start", "hangup"]
    assert result.api_requests[-1].status == 422
    assert call.api_answers[-1][2]["errors"][0]["code"] == "90018"
    assert call.webhook("call.hangup")["hangup_source"] == "caller"


@pytest.mark.parametrize("codec", ["G722", "L16"])
async def test_stream_requested_on_answer(
    gw: TelnyxGateway, api: TelnyxApiSimulator, tmp_path: Path, codec: str
) -> None:
    gw.behaviour.stream = "on_answer"
    gw.behaviour.codec = codec
    gw.behaviour.echo = True
    result, call = await place_call(
        gw,
        **cc(api, speech=[Tone(6500, 0.2)], linger_s=0.2, g722_start_rate=16000, call_codec=codec),
    )
    assert call is not None
    assert result.violations == []
    assert result.api_actions() == ["answer", "hangup"]
    assert call.webhook("call.answered")["stream_url"] == gw.stream_url
    assert result.bidirectional_codec == codec
    media_format = call.of("start")[0]["start"]["media_format"]
    assert media_format == {"encoding": codec, "sample_rate": 16000, "channels": 1}
    assert analysis.dominant_frequency(result.heard_pcm(), 16000) == pytest.approx(6500, abs=20)
    path = tmp_path / "heard.wav"
    result.write_wav(path)
    assert read_wav(path, 16000) == result.heard_pcm()
    summary = result.summary()
    assert f"telnyx call-control: caller sends {codec}, gateway must send {codec}" in summary
    assert "no protocol violations" in summary


async def test_streaming_before_answer_is_refused(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    gw.behaviour.stream = "before_answer"
    result, call = await place_call(gw, **cc(api, linger_s=0.1))
    assert call is not None
    assert kinds(result) == [Violation.CALL_CONTROL_ORDER]
    assert result.api_actions() == ["streaming_start", "answer", "streaming_start", "hangup"]
    assert result.api_requests[0].status == 422
    assert result.closed_by == "caller"  # the second attempt streamed


async def test_a_gateway_that_never_answers(gw: TelnyxGateway, api: TelnyxApiSimulator) -> None:
    gw.behaviour.answer = False
    result, call = await place_call(gw, **cc(api, command_timeout_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.CALL_CONTROL_MISSING]
    assert "no answer within 0.2 s of call.initiated" in result.violations[0]
    assert result.started_at is None
    hangup = call.webhook("call.hangup")
    assert (hangup["hangup_source"], hangup["hangup_cause"]) == ("caller", "originator_cancel")


async def test_a_gateway_that_never_streams(gw: TelnyxGateway, api: TelnyxApiSimulator) -> None:
    gw.behaviour.stream = "never"
    result, call = await place_call(gw, **cc(api, command_timeout_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.CALL_CONTROL_MISSING]
    assert "no streaming_start within 0.2 s of call.answered" in result.violations[0]
    assert [w.event for w in result.webhooks] == ["call.initiated", "call.answered", "call.hangup"]


async def test_closing_the_stream_without_hanging_up_leaves_the_call_up(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    async def close(call: ServerCall) -> None:
        await call.at(0.1)
        assert call.ws is not None
        await call.ws.close()

    gw.behaviour.scenario, gw.behaviour.hangup_after_close = close, False
    result, call = await place_call(gw, **cc(api, linger_s=2.0, hangup_grace_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.CALL_LEFT_UP]
    assert result.closed_by == "gateway"
    assert call.webhook("call.hangup")["hangup_source"] == "caller"


async def test_closing_the_stream_then_hanging_up_is_fine(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    async def close(call: ServerCall) -> None:
        await call.at(0.1)
        assert call.ws is not None
        await call.ws.close()

    gw.behaviour.scenario = close  # the handler then POSTs hangup
    result, call = await place_call(gw, **cc(api, linger_s=2.0))
    assert call is not None
    assert result.violations == []
    assert result.api_actions() == ["answer", "streaming_start", "hangup"]
    assert call.webhook("call.hangup")["hangup_source"] == "callee"


async def test_a_wrong_api_key_is_refused(gw: TelnyxGateway, api: TelnyxApiSimulator) -> None:
    gw.behaviour.api_key = "KEYwrong"
    result, call = await place_call(gw, **cc(api, command_timeout_s=0.2))
    assert call is not None
    assert kinds(result) == [Violation.API_UNAUTHORIZED, Violation.CALL_CONTROL_MISSING]
    assert call.api_answers[0][1] == 401


async def test_cancelling_a_call_closes_everything(
    gw: TelnyxGateway, api: TelnyxApiSimulator
) -> None:
    started = asyncio.Event()

    def on_event(event: CallEvent) -> None:
        if event.kind == "started":
            started.set()

    caller = TelnyxCaller(gw.url, **cc(api, linger_s=5.0, on_event=on_event))
    run = asyncio.create_task(caller.run())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert asyncio.all_tasks() == {asyncio.current_task()}
    call = gw.calls[-1]
    for _ in range(300):
        if call.done.is_set():
            break
        await asyncio.sleep(0.01)
    assert call.disconnect_code is not None  # the socket was torn down, not leaked
    assert call.api_answers[-1][1] == 422  # the API knows the call is over (90018)


def test_constructor_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="mode"):
        TelnyxCaller("http://x", mode="sip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs api"):
        TelnyxCaller("http://x", mode="call-control")
    with pytest.raises(ValueError, match="signature"):
        TelnyxCaller("http://x", signature="forged")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_codec"):
        TelnyxCaller("http://x", call_codec="OPUS")
    with pytest.raises(ValueError, match="reorder_window"):
        TelnyxCaller("http://x", reorder_window=-1)
    with pytest.raises(ValueError, match="DTMF digit"):
        TelnyxCaller("http://x", dtmf=[(0.0, "E")])
    with pytest.raises(ValueError, match="tone frequency"):
        TelnyxCaller("http://x", speech=[Tone(9000, 0.1)])
    TelnyxCaller("http://x", speech=[Tone(5000, 0.1)], dtmf=[(0.0, "A")])


async def test_speech_that_cannot_exist_on_the_negotiated_codec(gw: TelnyxGateway) -> None:
    caller = TelnyxCaller(gw.url, speech=[Tone(5000, 0.1)])  # the gateway asks for PCMU
    with pytest.raises(ValueError, match=r"tone frequency must be in \(0, 4000\) Hz"):
        await caller.run()
    assert asyncio.all_tasks() == {asyncio.current_task()}
