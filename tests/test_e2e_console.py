"""The console's server side through the real server: the login and its session cookie, the
live feed of a real call (server-sent events), ending a call from the console, the agents
graph, the recording player's source; and what a stranger gets (the login form, nothing else).
The page itself, in a real browser, is tests/test_browser_console.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.web.auth import SESSION_COOKIE
from tests.harness import ADMIN_TOKEN, Harness, running
from tests.servers import until
from tests.webcaller import BEARER

SECRET_WORDS = "my account number is 4417"


class Feed:
    """The events of ``GET /console/api/live`` as they arrive."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == name]

    async def read(self, response: httpx.Response) -> None:
        name, data = "message", ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                self.events.append((name, json.loads(data)))
                name, data = "message", ""


@contextlib.asynccontextmanager
async def watching(h: Harness, headers: dict[str, str] = BEARER) -> AsyncIterator[Feed]:
    feed = Feed()
    async with (
        httpx.AsyncClient(base_url=h.gateway.url, timeout=30) as http,
        http.stream("GET", "/console/api/live", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(feed.read(response))
        try:
            await until(lambda: feed.named("snapshot"), 5)
            yield feed
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader


async def test_a_live_call_is_watched_as_it_happens_and_ended_from_the_console(
    tmp_path: Path,
) -> None:
    steps = [Step(on="caller", hear=SECRET_WORDS, say="Let me look that up.", seconds=0.6)]
    database = f"sqlite:///{tmp_path}/calls.db"
    async with (
        running(steps=steps, carrier_api=True, admin_api_token=ADMIN_TOKEN,
                database_url=database) as h,
        watching(h) as feed,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):  # fmt: skip
        assert feed.named("snapshot")[0] == {"calls": []}
        watched = (await http.get("/metrics")).text
        call = asyncio.create_task(h.call([Tone(700, 0.8), Silence(30)], linger_s=0.1))
        await until(lambda: feed.named("call"), 10)
        live = feed.named("call")[0]
        call_id = live["call_id"]
        await until(lambda: len(feed.named("transcript")) >= 2, 10)
        # A console that opens now gets the call, its transcript so far, in its snapshot.
        async with watching(h) as late:
            snapshot = late.named("snapshot")[0]["calls"]
        # Strangers get nothing from the feed.
        stranger = await http.get("/console/api/live")
        asked_at = asyncio.get_running_loop().time()
        ended = await http.post(f"/console/api/calls/{call_id}/end", headers=BEARER)
        result = await asyncio.wait_for(call, 10)
        took_s = asyncio.get_running_loop().time() - asked_at
        await until(lambda: feed.named("ended"), 5)
        gone = await http.post(f"/console/api/calls/{call_id}/end", headers=BEARER)
        records = h.gateway.state.records
        assert records is not None
        await until(lambda: not records.writing)
        record = (await http.get(f"/calls/{call_id}", headers=BEARER)).json()
    assert "gateway_console_watchers 1.0" in watched
    assert live["carrier"] == "twilio"
    assert live["direction"] == "inbound"
    assert live["from"] == "***0123"  # masked: the console shows no whole number
    assert live["to"] == "***0100"
    assert live["agent"] == "agent-triage"
    lines = [(t["role"], t["text"]) for t in feed.named("transcript")]
    assert ("caller", SECRET_WORDS) in lines
    assert ("agent", "Let me look that up.") in lines
    assert all(t["call_id"] == call_id for t in feed.named("transcript"))
    assert [c["call_id"] for c in snapshot] == [call_id]
    assert SECRET_WORDS in [t["text"] for t in snapshot[0]["transcript"]]
    assert stranger.status_code == 401
    assert ended.status_code == 202
    assert took_s < 5  # ended long before its 30 s of audio
    assert feed.named("ended")[0]["call_id"] == call_id
    assert feed.named("ended")[0]["end_reason"] == "operator_ended"
    assert gone.status_code == 404
    assert record["end_reason"] == "operator_ended"
    # The carrier hung up (Twilio's REST API, Status=completed): no fallback verbs played.
    (update,) = result.api_requests
    assert update.body == {"Status": "completed"} and update.status == 200
    assert result.after_stream == ["Hangup"]  # not the apology after </Connect>


async def test_the_login_form_sets_a_secure_session_cookie_and_strangers_see_no_data() -> None:
    async with (
        running(admin_api_token=ADMIN_TOKEN) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        form = await http.get("/console")
        bad = await http.post("/console/login", data={"token": "guess"})
        good = await http.post("/console/login", data={"token": ADMIN_TOKEN})
        cookie = good.headers["set-cookie"]
        value = cookie.split(";")[0].split("=", 1)[1]
        session = {"Cookie": f"{SESSION_COOKIE}={value}"}
        page = await http.get("/console", headers=session)
        scripted = await http.get("/console", headers=BEARER)
        agents = await http.get("/console/api/agents", headers=session)
        flipped = "1" if value.endswith("0") else "0"
        tampered = {"Cookie": f"{SESSION_COOKIE}={value[:-1]}{flipped}"}
        refused = await http.get("/console/api/agents", headers=tampered)
        # A cookie alone acts only with our own Origin (another site's page cannot).
        origin = {"Origin": h.gateway.url}
        no_origin = await http.post("/console/api/calls/CA1/end", headers=session)
        evil = {**session, "Origin": "https://evil.example"}
        foreign = await http.post("/console/api/calls/CA1/end", headers=evil)
        ours = await http.post("/console/api/calls/CA1/end", headers={**session, **origin})
        logout = await http.post("/console/logout", headers=session)
    assert form.status_code == 200
    assert 'name="token"' in form.text and "console.js" not in form.text
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert form.headers["cache-control"] == "no-store"
    assert bad.status_code == 401 and 'name="token"' in bad.text
    assert "not the admin token" in bad.text
    assert good.status_code == 303 and good.headers["location"] == "/console"
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert ADMIN_TOKEN not in cookie
    assert page.status_code == 200 and 'name="token"' not in page.text
    assert scripted.status_code == 200 and 'name="token"' not in scripted.text
    assert agents.status_code == 200
    assert refused.status_code == 401
    assert no_origin.status_code == 401
    assert foreign.status_code == 401
    assert ours.status_code == 404  # through: there is just no such call
    assert logout.status_code == 303
    assert f'{SESSION_COOKIE}=""' in logout.headers["set-cookie"]


async def test_failed_logins_are_limited() -> None:
    async with (
        running(admin_api_token=ADMIN_TOKEN) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        failures = [await http.post("/console/login", data={"token": f"guess-{i}"})
                        for i in range(10)]  # fmt: skip
        blocked = await http.post("/console/login", data={"token": ADMIN_TOKEN})
    assert {r.status_code for r in failures} == {401}
    assert blocked.status_code == 429
    assert "set-cookie" not in blocked.headers


async def test_the_agents_graph_and_the_console_files() -> None:
    async with (
        running(admin_api_token=ADMIN_TOKEN) as h,
        httpx.AsyncClient(base_url=h.gateway.url) as http,
    ):
        graph = (await http.get("/console/api/agents", headers=BEARER)).json()
        script = await http.get("/console/assets/console.js")
        again = await http.get(
            "/console/assets/console.js", headers={"If-None-Match": script.headers["etag"]}
        )
        template = await http.get("/console/assets/login.html")
        missing = await http.get("/console/assets/../server.py")
    assert [s["phase"] for s in graph["stages"]] == ["triage", "advising"]
    triage, advising = graph["stages"]
    assert triage["start"] and not advising["start"]
    assert triage["next"] == "advising" and advising["can_return_to"] == ["triage"]
    assert {a["id"] for a in graph["agents"]} == {"agent-triage", "agent-advisor"}
    assert graph["model"]
    assert isinstance(graph["warnings"], list)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert again.status_code == 304
    assert template.status_code == 404
    assert missing.status_code == 404


async def test_the_recording_is_served_to_the_admin_only(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    async with running(admin_api_token=ADMIN_TOKEN, recordings_dir=str(recordings),
                       database_url=f"sqlite:///{tmp_path}/calls.db") as h:  # fmt: skip
        result = await h.call([Tone(700, 0.5), Silence(0.5)], linger_s=0.1)
        records = h.gateway.state.records
        assert records is not None
        await until(lambda: not records.writing)
        path = f"/calls/{result.call_sid}/recording"
        async with httpx.AsyncClient(base_url=h.gateway.url) as http:
            whole = await http.get(path, headers=BEARER)
            part = await http.get(path, headers={**BEARER, "Range": "bytes=0-43"})
            stranger = await http.get(path)
            unknown = await http.get("/calls/CA404/recording", headers=BEARER)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/wav"
    assert whole.content[:4] == b"RIFF" and len(whole.content) > 8000
    assert part.status_code == 206 and len(part.content) == 44
    assert stranger.status_code == 401
    assert unknown.status_code == 404


async def test_no_console_without_the_admin_token() -> None:
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        for path in ("/console", "/console/api/live", "/console/api/agents"):
            assert (await http.get(path)).status_code == 404
