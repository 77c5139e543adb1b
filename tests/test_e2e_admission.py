"""A socket is not a call until it proves itself: stream tokens in the URL path, pending sockets,
one stream per call, unserved carriers, capacity at stream time. All through the real server,
real websockets and the real SDK against the Live simulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.telnyx import TelnyxCaller
from callsim.callers.twilio import TwilioCaller
from callsim.twilio.api import TwilioApiSimulator
from callsim.twilio.webhook import twilio_signature
from gateway.carriers.telnyx import call_control_state
from tests.harness import Carrier, Harness, running, serving
from tests.servers import until

#: Every test here also fails if anything in the log holds a traceback.
pytestmark = pytest.mark.usefixtures("structured_logs")

AUTH_TOKEN = "twilio-auth-token-0123456789"
ACCOUNT = "AC" + "2" * 32


def twilio_form(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": ACCOUNT, "From": "+14155550100",
            "To": "+18005550199", "CallStatus": "ringing"}  # fmt: skip


def twilio_start(call_sid: str, token: str | None = None) -> str:
    sid = "MZ" + call_sid[2:]
    params = {"token": token} if token is not None else {}
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": sid,
        "start": {"accountSid": ACCOUNT, "streamSid": sid, "callSid": call_sid,
                  "tracks": ["inbound"], "customParameters": params,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                  "channels": 1}},
    })  # fmt: skip


def telnyx_start(call_id: str, **start: str) -> str:
    media_format = {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    return json.dumps({"event": "start", "stream_id": "s-" + call_id, "start": {
        "call_control_id": call_id, "media_format": media_format, **start}})  # fmt: skip


def stream_url_of(twiml: str) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


async def webhook(h: Harness, call_sid: str, *, signed: bool = False) -> httpx.Response:
    form = twilio_form(call_sid)
    headers = {}
    if signed:
        headers["X-Twilio-Signature"] = twilio_signature(
            AUTH_TOKEN, h.gateway.url + "/twilio/voice", form
        )
    async with httpx.AsyncClient(base_url=h.gateway.url) as http:
        return await http.post("/twilio/voice", data=form, headers=headers)


def signed_headers(url: str, *, auth_token: str | None) -> dict[str, str]:
    if auth_token is None:
        return {}
    return {"x-twilio-signature": twilio_signature(auth_token, url, {})}


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the gateway closes; its close code."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


# --- the token in the URL path --------------------------------------------------------------


async def test_the_twiml_puts_the_stream_token_in_the_url_path_and_a_parameter() -> None:
    async with running() as h:
        response = await webhook(h, "CA" + "1" * 32)
    url, params = stream_url_of(response.text)
    prefix = f"ws://127.0.0.1:{h.gateway.port}/twilio/stream/"
    assert url.startswith(prefix) and url[len(prefix) :] == params["token"]
    assert "?" not in url  # Twilio forbids query strings


async def test_a_path_token_makes_the_socket_a_call_at_the_upgrade() -> None:
    """Counted for capacity before it sends anything: a real caller is never crowded out."""
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        call_sid = "CA" + "3" * 32
        url, _ = stream_url_of((await webhook(h, call_sid)).text)
        async with websockets.connect(url) as ws:
            await until(lambda: len(h.gateway.state.calls) == 1)
            ready = (await http.get("/readyz")).json()
            assert h.sim.connections == []  # no Gemini session before start
            await ws.send(twilio_start(call_sid))  # no token parameter: the path was enough
            await h.sim.wait_for_connections(1, timeout=5)
        await h.calls_finished()
    assert ready["active_calls"] == 1


async def test_bare_paths_still_work_with_the_token_in_start() -> None:
    async with running() as h:
        call_sid = "CA" + "4" * 32
        _, params = stream_url_of((await webhook(h, call_sid)).text)
        async with websockets.connect(f"ws://127.0.0.1:{h.gateway.port}/twilio/stream") as ws:
            await asyncio.sleep(0.2)
            pending, calls = len(h.gateway.state.pending), len(h.gateway.state.calls)
            await ws.send(twilio_start(call_sid, params["token"]))
            await h.sim.wait_for_connections(1, timeout=5)
            assert len(h.gateway.state.calls) == 1 and not h.gateway.state.pending
        await h.calls_finished()
    assert (pending, calls) == (1, 0)


async def test_telnyx_texml_is_admitted_by_its_path_even_if_parameters_never_arrive() -> None:
    """Where Telnyx puts <Parameter>s in start is thinly documented: the path token does not
    depend on it."""
    async with running(carrier=Carrier("telnyx", "PCMU")) as h:
        result = await h.call([Silence(0.5)], linger_s=0.2, parameters_key=None)
    assert result.stream_url is not None and "/telnyx/stream/" in result.stream_url
    assert len(h.sim.connections) == 1
    assert h.named("call.ended")[0]["reason"] == "caller_hung_up"


async def test_telnyx_call_control_streams_carry_the_token_three_ways() -> None:
    async with running(carrier=Carrier("telnyx", "PCMU", "call-control")) as h:
        await h.call([Silence(0.5)], linger_s=0.2)
        # The same call's stream, had Telnyx dialled the bare path: the auth header admits it.
        assert h.telnyx_api is not None
    (start,) = [r for r in h.telnyx_api.requests if r.action == "streaming_start"]
    token = start.body["stream_auth_token"]
    assert start.body["stream_url"].endswith("/telnyx/stream/" + token)
    assert base64.b64decode(start.body["client_state"]).decode().endswith(token)


async def test_a_telnyx_stream_on_the_bare_path_is_admitted_by_its_auth_header() -> None:
    async with running(carrier=Carrier("telnyx", "PCMU", "call-control")) as h:
        bare = f"ws://127.0.0.1:{h.gateway.port}/telnyx/stream"
        seen: list[int] = []

        async def watch() -> None:
            await until(lambda: bool(h.gateway.state.calls), within_s=10)
            seen.append(len(h.gateway.state.pending))

        watcher = asyncio.create_task(watch())
        await h.call([Silence(0.5)], linger_s=0.2, stream_url=bare)
        await watcher
    assert seen == [0]  # a call from the upgrade on, never pending
    assert len(h.sim.connections) == 1


# --- pending sockets ------------------------------------------------------------------------


def _telnyx_keys() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


@contextlib.asynccontextmanager
async def _sockets(urls: list[tuple[str, dict[str, str]]]) -> AsyncIterator[dict[str, int]]:
    """Open every socket and hold it, sending nothing; yields how the upgrades went."""
    outcome: dict[str, int] = {}
    opened: list[ClientConnection] = []

    async def one(url: str, headers: dict[str, str]) -> None:
        try:
            # The bound is for failing, not a timing check: every upgrade shares the loop of
            # the in-process gateway, and a loaded machine (the CI's parallel run) takes seconds.
            opened.append(
                await websockets.connect(url, additional_headers=headers, open_timeout=60)
            )
            outcome["accepted"] = outcome.get("accepted", 0) + 1
        except InvalidStatus as exc:
            key = str(exc.response.status_code)
            outcome[key] = outcome.get(key, 0) + 1

    await asyncio.gather(*(one(url, headers) for url, headers in urls))
    try:
        yield outcome
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


async def test_idle_sockets_leave_a_signed_calls_admission_readyz_and_capacity_untouched() -> None:
    """100 idle sockets on each stream route, with every verification setting on, and a
    capacity of 2 calls: signed callers are still admitted, readyz stays 200.

    100 a route is past the 64 pending sockets allowed, and the flood's upgrades end within
    the 5 s a pending socket is given: 2.7 s on a quiet machine, 4.0 s beside two busy
    processes. 200 a route took 4.7 and 7.8 s, and in a full parallel run under load went
    past the client's default 10 s open timeout."""
    private, public = _telnyx_keys()
    async with (
        running(twilio_auth_token=AUTH_TOKEN, telnyx_public_key=public,
                max_concurrent_calls=2) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):  # fmt: skip
        base = f"ws://127.0.0.1:{h.gateway.port}"
        twilio_bare = base + "/twilio/stream"
        # A captured upgrade signature for the bare URL never changes: replaying it passes the
        # signature check, so these sockets are pending, the expensive kind.
        replayed = signed_headers(twilio_bare, auth_token=AUTH_TOKEN)
        junk = "v2.Q0ExMjM.9999999999." + "a" * 32
        urls = (
            [(twilio_bare, replayed)] * 100
            + [(base + "/telnyx/stream", {})] * 100
            + [(f"{base}/twilio/stream/{junk}", signed_headers(f"{base}/twilio/stream/{junk}",
                                                               auth_token=AUTH_TOKEN))] * 100
            + [(f"{base}/telnyx/stream/{junk}", {})] * 100
        )  # fmt: skip
        async with _sockets(urls) as outcome:
            state = h.gateway.state
            pending_while_flooded = len(state.pending)
            ready = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
            twilio = await TwilioCaller(
                h.gateway.url, audio=render([Silence(0.5)]), linger_s=0.2, auth_token=AUTH_TOKEN
            ).run()
            telnyx = await TelnyxCaller(
                h.gateway.url, speech=[Silence(0.5)], linger_s=0.2, signing_key=private
            ).run()
            await h.calls_finished()
            # Pending sockets get 5 s to send start, then the gateway closes them.
            await until(lambda: not state.pending, within_s=8)
    assert outcome == {"accepted": 64, "503": 136, "403": 200}
    assert pending_while_flooded == 64
    assert ready.status_code == 200 and ready.json()["active_calls"] == 0
    assert "gateway_active_calls 0.0" in metrics
    assert twilio.violations == [] and telnyx.violations == []
    assert len(h.sim.connections) == 2  # both signed callers reached Gemini, nobody else did


# --- one token, one stream ------------------------------------------------------------------


async def test_one_token_opens_one_stream_concurrently_or_later_and_by_any_path() -> None:
    async with running() as h:
        call_sid = "CA" + "5" * 32
        url, params = stream_url_of((await webhook(h, call_sid)).text)
        async with websockets.connect(url) as first:
            with pytest.raises(InvalidStatus) as concurrent:
                await websockets.connect(url)
            await first.send(twilio_start(call_sid))
            await h.sim.wait_for_connections(1, timeout=5)
        await h.calls_finished()
        with pytest.raises(InvalidStatus) as later:
            await websockets.connect(url)
        bare = f"ws://127.0.0.1:{h.gateway.port}/twilio/stream"
        async with websockets.connect(bare) as ws:
            await ws.send(twilio_start(call_sid, params["token"]))
            by_start = await close_code(ws)
        replayed = await webhook(h, call_sid)
        await h.calls_finished()
    assert concurrent.value.response.status_code == 403
    assert later.value.response.status_code == 403
    assert by_start == 1008
    assert replayed.status_code == 409  # a replayed webhook mints no fresh token either
    assert len(h.sim.connections) == 1


# --- unserved carriers ----------------------------------------------------------------------


@pytest.mark.parametrize(("served", "absent"), [("twilio", "telnyx"), ("telnyx", "twilio")])
async def test_an_unserved_carrier_has_no_routes(served: str, absent: str) -> None:
    async with running(carriers=served) as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        voice = await http.post(f"/{absent}/voice", data={"CallSid": "CA1"})
        served_voice = await http.post(f"/{served}/voice", data={"CallSid": "CA1"})
        cc = await http.post("/telnyx/call-control", json={"data": {}})
        refused = []
        for path in (f"/{absent}/stream", f"/{absent}/stream/v2.x.1.y"):
            with pytest.raises(InvalidStatus) as info:
                await websockets.connect(f"ws://127.0.0.1:{h.gateway.port}{path}")
            refused.append(info.value.response.status_code)
    assert voice.status_code == 404 and served_voice.status_code == 200
    assert cc.status_code == (404 if absent == "telnyx" else 400)
    assert refused == [403, 403]


# --- capacity at stream time ----------------------------------------------------------------


async def test_a_stream_with_no_room_plays_the_busy_message_and_counts_as_capacity() -> None:
    """Two webhooks answered while the gateway was empty, one room: the second stream finds
    the first call in it. Its caller hears the busy message (the call's TwiML replaced through
    the REST API, as the account the stream itself names), not the failure apology."""
    fake = TwilioApiSimulator(auth_token=AUTH_TOKEN)
    async with (
        serving(fake.app) as twilio_api,
        running(max_concurrent_calls=1, twilio_auth_token=AUTH_TOKEN,
                twilio_api_base=twilio_api) as h,
    ):  # fmt: skip
        second = "CA" + "7" * 32
        url, _ = stream_url_of((await webhook(h, second, signed=True)).text)
        first = asyncio.create_task(
            TwilioCaller(h.gateway.url, audio=render([Silence(2.0)]), linger_s=0.5,
                         auth_token=AUTH_TOKEN).run()
        )  # fmt: skip
        await until(lambda: bool(h.gateway.state.calls))
        async with websockets.connect(
            url, additional_headers=signed_headers(url, auth_token=AUTH_TOKEN)
        ) as ws:
            await ws.send(twilio_start(second))
            code = await close_code(ws)
        result = await first
        await h.calls_finished()
        metrics = h.gateway.state.metrics.render().decode()
    assert result.violations == []
    assert code == 1000
    (update,) = fake.requests
    assert update.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{second}.json"
    assert "All of our lines are busy" in update.body["Twiml"]
    assert 'gateway_calls_total{outcome="rejected_capacity"} 1.0' in metrics
    assert 'outcome="unauthorized"' not in metrics
    assert len(h.sim.connections) == 1  # the refused stream cost no Gemini session


async def test_without_an_api_a_stream_with_no_room_still_counts_as_capacity() -> None:
    async with running(carrier=Carrier("telnyx", "PCMU"), max_concurrent_calls=1) as h:
        async with httpx.AsyncClient(base_url=h.gateway.url) as http:
            texml = (await http.post("/telnyx/voice", data={"CallSid": "v3:second"})).text
        url, _ = stream_url_of(texml)
        first = asyncio.create_task(h.call([Tone(300, 1.0)], linger_s=0.5))
        await until(lambda: bool(h.gateway.state.calls))
        async with websockets.connect(url) as ws:
            await ws.send(telnyx_start("v3:second"))
            code = await close_code(ws)
        await first
    assert code == 1000  # closing runs the TeXML after </Connect>
    assert [e["reason"] for e in h.named("call.ended")].count("rejected_capacity") == 1
    assert len(h.sim.connections) == 1


async def test_call_control_streams_with_no_room_hear_the_busy_message_spoken() -> None:
    async with running(carrier=Carrier("telnyx", "PCMU", "call-control"),
                       max_concurrent_calls=1) as h:  # fmt: skip
        assert h.telnyx_api is not None
        first = asyncio.create_task(h.call([Tone(300, 1.0)], linger_s=1.0))
        await until(lambda: bool(h.gateway.state.calls))
        # Squeeze a second stream in: a real token for another call, admitted at the upgrade.
        token = h.gateway.state.tokens.mint("telnyx", "v3:second", time.time())
        h.telnyx_api.register("v3:second", lambda *_: None, answered=True)
        url = f"ws://127.0.0.1:{h.gateway.port}/telnyx/stream/{token}"
        async with websockets.connect(url) as ws:
            await ws.send(telnyx_start("v3:second", client_state=call_control_state(token)))
            await close_code(ws)
        await first
    speaks = [r for r in h.telnyx_api.requests if r.action == "speak"]
    assert [r.path for r in speaks] == ["/v2/calls/v3:second/actions/speak"]
    assert "All of our lines are busy" in speaks[0].body["payload"]
    assert len(h.sim.connections) == 1
