"""The browser-call simulator (:class:`~callsim.callers.web.WebCaller`, ``gateway call --carrier
web``): through the real server, the real SDK and the Live simulator, as the console's Talk
button would call; against a rude fake gateway for the checks the real one never trips; and as
a command against ``gateway serve --simulator``."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from callsim.callers.audio import Segment, Silence, Tone
from callsim.callers.web import DOWN_FRAME_BYTES, WebCaller, parse_gateway_frame
from callsim.live.audio import tone_pcm16
from callsim.live.script import Step
from tests.audio_checks import audible_s
from tests.harness import ADMIN_TOKEN, agents, running
from tests.servers import ThreadedServer, until
from tests.test_cli import ROOT, _env, _free_port, _wait_healthy

GREETING_HZ = 500.0
BYTES_PER_S = 24000 * 2  # what the caller hears: PCM16 at 24 kHz


def greeting(seconds: float) -> Step:
    return Step(on="text", say="Hello from the browser line.", seconds=seconds,
                tone_hz=GREETING_HZ)  # fmt: skip


GREETS = agents(agent_triage={"greeting": "Greet the caller."})


# --- through the real gateway -------------------------------------------------------------------


async def test_the_greeting_is_heard_as_sent_where_it_arrived_and_its_mark_echoed() -> None:
    """The model's 24 kHz audio is heard byte for byte, from the first 20 ms tick after it
    arrived; the turn's mark is echoed once the audio before it has played, not on arrival."""
    async with running(steps=[greeting(1.0)], graph=GREETS, admin_api_token=ADMIN_TOKEN) as h:
        caller = WebCaller(h.gateway.url, admin_token=ADMIN_TOKEN, linger_s=15.0)
        call = asyncio.create_task(caller.run())
        await until(lambda: caller.result.mark_echoes, 15)
        caller.hangup()
        result = await call
        await until(lambda: h.named("agent.playback_done"), 5)
    assert result.violations == []
    assert result.carrier == "web" and result.closed_by == "caller"
    assert result.call_sid == h.named("call.started")[-1]["call_id"]
    assert result.call_sid.startswith("WB")
    assert result.heard_rate == 24000 and result.heard_encoding == "pcm16"
    heard, tone = result.heard_pcm(), tone_pcm16(GREETING_HZ, 1.0, -12.0, 24000)
    at = heard.find(tone)
    late = result.playout_timing.max_ms  # a stall past the gateway's 240 ms lead cuts the tone
    assert at >= 0, f"the greeting was not heard whole (playout late by up to {late:.0f} ms)"
    assert heard[:at] == bytes(at)  # silence until then
    assert at % DOWN_FRAME_BYTES == 0  # it starts on a playout tick...
    assert result.first_media_time is not None
    arrived = result.call_time(result.first_media_time)
    assert arrived < at / BYTES_PER_S <= arrived + 0.021  # ...the first one after it arrived
    [echo] = result.mark_echoes
    assert not echo.cleared
    assert [m["mark"]["name"] for _, m in result.received if m["event"] == "mark"] == [echo.name]
    assert result.call_time(echo.time) >= (at + len(tone)) / BYTES_PER_S - 0.001
    assert {"event": "mark", "mark": {"name": echo.name}} in [m for _, m in result.sent]


async def test_speaking_over_the_greeting_clears_it() -> None:
    graph, steps = GREETS, [greeting(6.0)]
    speech: list[Segment] = [Silence(1.5), Tone(700, 0.6, -10)]  # the greeting starts sooner
    async with running(steps=steps, graph=graph, admin_api_token=ADMIN_TOKEN) as h:
        result = await WebCaller(
            h.gateway.url, admin_token=ADMIN_TOKEN, speech=speech, linger_s=1.0
        ).run()
        await h.calls_finished()
    assert result.violations == []
    assert result.clear_times
    cleared_at = result.call_time(result.clear_times[0])
    assert 1.5 < cleared_at < 1.5 + 2.0
    heard = result.heard_pcm()
    assert audible_s(heard[: int(cleared_at * 24000) * 2], 24000) > 0.5  # the greeting played
    after = result.heard_between(cleared_at + 0.02, cleared_at + 0.15)
    assert after == bytes(len(after))  # then stopped at once
    assert audible_s(heard, 24000) < 6.0 / 2  # far less than the greeting's 6 s
    assert h.named("agent.interrupted")


async def test_keys_reach_the_model_as_one_entry() -> None:
    keys = [(0.3, "1"), (0.5, "2"), (0.7, "#")]
    async with running(admin_api_token=ADMIN_TOKEN) as h:
        result = await WebCaller(
            h.gateway.url, admin_token=ADMIN_TOKEN, speech=[Silence(1.2)], dtmf=keys,
            linger_s=0.2,
        ).run()  # fmt: skip
        await h.calls_finished()
        conn = h.sim.connections[0]
    assert result.violations == []
    sent = [m for _, m in result.sent if m["event"] == "dtmf"]
    assert sent == [{"event": "dtmf", "dtmf": {"digit": d}} for _, d in keys]
    assert [(e["keys"], e["digits"]) for e in h.named("dtmf.entry")] == [(3, "12#")]
    texts = [p["text"] for c in conn.client_contents for t in c["turns"] for p in t["parts"]]
    assert texts + conn.realtime_texts == ["The caller pressed 1 2 # on the phone keypad."]


async def test_a_refused_issue_is_reported_with_the_status_and_the_gateways_reason() -> None:
    async with running(admin_api_token=ADMIN_TOKEN) as h:
        wrong = await WebCaller(h.gateway.url, admin_token="not-the-token", linger_s=0.1).run()
        stage = await WebCaller(
            h.gateway.url, admin_token=ADMIN_TOKEN, phase="nowhere", linger_s=0.1
        ).run()
        assert not h.sim.connections  # no call reached a model
    assert wrong.violation_kinds() == ["issue-refused"]
    assert "HTTP 401: a valid admin token is needed" in wrong.violations[0]
    assert wrong.webhook_status == 401 and wrong.call_sid == ""
    assert wrong.stream_url is None and wrong.closed_by is None and wrong.heard == b""
    assert stage.violation_kinds() == ["issue-refused"]
    assert "HTTP 422: phase 'nowhere' is not a stage" in stage.violations[0]


async def test_a_call_starts_at_its_phase_on_the_bare_path_and_may_end_with_a_bare_close() -> None:
    """With ``stream_url`` (the bare ``/web/stream``) the stream token rides in ``start``."""
    async with running(admin_api_token=ADMIN_TOKEN) as h:
        bare = h.gateway.url.replace("http", "ws") + "/web/stream"
        result = await WebCaller(
            h.gateway.url, admin_token=ADMIN_TOKEN, phase="advising", hangup="close",
            stream_url=bare, speech=[Silence(0.3)], linger_s=0.1,
        ).run()  # fmt: skip
        await h.calls_finished()
    assert result.violations == []
    assert result.stream_url == bare and result.twiml_stream_url != bare
    assert h.named("call.started")[-1]["agent"] == "agent-advisor"
    [start] = [m for _, m in result.sent if m["event"] == "start"]
    assert set(start["start"]["customParameters"]) == {"phase", "token"}
    assert not [m for _, m in result.sent if m["event"] == "stop"]
    assert result.closed_by == "caller"


# --- against a rude fake gateway ----------------------------------------------------------------


def _pcm_b64(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


#: 20 ms of a constant sample, and one byte too many.
ODD_FRAME = b"\x01\x02" * (DOWN_FRAME_BYTES // 2) + b"\x03"


RUDE_FRAMES = [
    "{not json",
    json.dumps({"event": "playAudio", "media": {"payload": _pcm_b64(960)}}),
    json.dumps({"event": "media", "media": {"payload": "***not base64***"}}),
    json.dumps({"event": "media", "media": {"payload": base64.b64encode(ODD_FRAME).decode()}}),
    json.dumps({"event": "mark", "mark": {}}),
    json.dumps({"event": "mark", "mark": {"name": "ok"}}),
]


@pytest.fixture
def rude_gateway() -> Iterator[tuple[str, dict[str, Any]]]:
    """``POST /web/calls`` and ``/web/stream/<token>`` as a careless gateway might serve them:
    the call is issued properly, then ``RUDE_FRAMES`` go down the stream and the socket stays
    open until the caller hangs up. Records what the caller sent."""
    seen: dict[str, Any] = {"messages": []}
    app = FastAPI()

    @app.post("/web/calls", status_code=201)
    async def issue(request: Request) -> dict[str, str]:
        seen["issue"] = (request.headers.get("authorization"), await request.json())
        host = request.headers["host"]
        return {"call_id": "WBrude", "stream_id": "WSrude", "token": "tok",
                "stream_url": f"ws://{host}/web/stream/tok"}  # fmt: skip

    @app.websocket("/web/stream/{token}")
    async def stream(websocket: WebSocket, token: str) -> None:
        seen["upgrade"] = (token, websocket.headers.get("authorization"))
        await websocket.accept()
        seen["messages"].append(json.loads(await websocket.receive_text()))
        for frame in RUDE_FRAMES:
            await websocket.send_text(frame)
        try:
            while True:
                seen["messages"].append(json.loads(await websocket.receive_text()))
        except WebSocketDisconnect:
            pass

    server = ThreadedServer(app)
    server.start()
    try:
        yield server.url, seen
    finally:
        server.stop()


async def test_what_the_page_would_choke_on_is_reported_and_the_wire_is_the_pages(
    rude_gateway: tuple[str, dict[str, Any]],
) -> None:
    url, seen = rude_gateway
    result = await WebCaller(
        url, admin_token="admin-token", phase="advising", speech=[Tone(440, 0.1)], linger_s=0.5
    ).run()
    assert result.violation_kinds() == [
        "invalid-json", "unknown-event", "bad-payload", "media-partial-frame", "missing-field",
    ]  # fmt: skip
    # The partial frame still played (its whole samples, as the page plays them); the named
    # mark after it was echoed once played; the nameless one was not acted on.
    assert result.odd_media_sizes == [961] and result.media_bytes_received == 961
    assert ODD_FRAME[:-1] in result.heard and len(result.heard) % 2 == 0
    assert [e.name for e in result.mark_echoes] == ["ok"]
    assert result.call_sid == "WBrude" and result.stream_sid == "WSrude"
    # The page's wire: bearer on the issue and the upgrade, start, 640-byte media, stop.
    assert seen["issue"] == ("Bearer admin-token", {"phase": "advising"})
    assert seen["upgrade"] == ("tok", "Bearer admin-token")
    start, *media, stop = seen["messages"]
    assert start == {
        "event": "start",
        "start": {
            "streamSid": "WSrude",
            "callSid": "WBrude",
            "customParameters": {"phase": "advising"},
            "mediaFormat": {"encoding": "audio/pcm16le", "sampleRate": 16000, "channels": 1},
        },
    }
    assert stop == {"event": "stop"}
    echoes = [m for m in media if m["event"] == "mark"]
    assert echoes == [{"event": "mark", "mark": {"name": "ok"}}]
    chunks = [base64.b64decode(m["media"]["payload"]) for m in media if m["event"] == "media"]
    assert len(chunks) == round((0.1 + 0.5) / 0.02) and {len(c) for c in chunks} == {640}
    assert chunks[0] == Tone(440, 0.1).pcm(16000)[:640]


@pytest.mark.parametrize(
    ("frame", "acts", "kinds"),
    [
        ('{"event":"clear"}', "clear", []),
        (json.dumps({"event": "media", "media": {"payload": _pcm_b64(1920)}}), "media", []),
        (json.dumps({"event": "media", "media": {"payload": ""}}), None, ["bad-payload"]),
        (json.dumps({"event": "media", "media": {"payload": 5}}), None, ["bad-field-type"]),
        (json.dumps({"event": "media"}), None, ["missing-field"]),
        (json.dumps({"event": "mark", "mark": {"name": 1}}), None, ["bad-field-type"]),
        (json.dumps({"event": "clear", "streamSid": "x"}), "clear", ["extra-field"]),
        ('{"event":"clear","event":"clear"}', None, ["duplicate-key"]),
        ("[1]", None, ["not-an-object"]),
        (b"\x00\x01", None, ["binary-frame"]),
    ],
)
def test_each_gateway_frame_is_checked_as_the_page_reads_it(
    frame: str | bytes, acts: str | None, kinds: list[str]
) -> None:
    parsed = parse_gateway_frame(frame)
    assert parsed.event == acts
    assert [v.partition(":")[0] for v in parsed.violations] == kinds


# --- the command --------------------------------------------------------------------------------


async def test_gateway_call_places_a_browser_call_and_writes_what_was_heard_at_24k(
    tmp_path: Path,
) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    port, token = _free_port(), "web-caller-token-0123456789abcdef"
    proc = subprocess.Popen(  # noqa: ASYNC220 -- a real server process, polled below
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=tmp_path, env=_env(ADMIN_API_TOKEN=token),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await _wait_healthy(http, url, proc)
        call = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "call", url, "--carrier", "web",
            "--audio", "silence:1", "--linger", "0.5", "--out", str(tmp_path / "x.wav"),
            cwd=tmp_path, env=_env(ADMIN_API_TOKEN=token),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(call.communicate(), 60)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.communicate, timeout=20)
    assert call.returncode == 0, out.decode() + err.decode()
    assert "carrier:     web" in out.decode() and "VIOLATION" not in out.decode()
    with wave.open(str(tmp_path / "x.wav"), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert wav.getnframes() >= 1.0 * 24000  # the whole call, on the call timeline


@pytest.mark.parametrize(
    ("extra", "env", "line"),
    [
        ((), {}, "error: --carrier web needs the admin token: --admin-token or ADMIN_API_TOKEN"),
        (("--admin-token", "t", "--reorder", "2"), {"TWILIO_AUTH_TOKEN": "only-in-env"},
         "error: --reorder: only for Twilio and Telnyx calls, not --carrier web"),
    ],
    ids=["no-admin-token", "a-phone-call-option"],
)  # fmt: skip
def test_gateway_call_web_refuses_in_one_line_what_it_cannot_do(
    tmp_path: Path, extra: tuple[str, ...], env: dict[str, str], line: str
) -> None:
    environ = {k: v for k, v in _env(**env).items() if k != "ADMIN_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "call", "http://127.0.0.1:9", "--carrier", "web",
         *extra],
        capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [line]
