"""The console: one page to watch calls live, read past ones and talk to the agents.

Routes (registered only with ADMIN_API_TOKEN, like the rest of the admin API):

- ``GET /console``: the page for an admin (session cookie or bearer token), else the login
  form, which shows no call data at all.
- ``POST /console/login`` (form field ``token``) sets the session cookie
  (:mod:`gateway.web.auth`) and goes back to ``/console``; ``POST /console/logout`` clears it.
  Failed logins are limited per client address, so the token cannot be guessed at speed.
- ``GET /console/assets/<file>``: the page's script, style, AudioWorklets and icon. Static
  files shipped in the package and served from memory: no build step, no CDN, nothing
  fetched from anywhere else (the page's Content-Security-Policy forbids it), so the console
  works on a gateway with no internet.
- ``GET /console/api/live``: server-sent events from :class:`~gateway.web.feed.LiveFeed`
  (a ``snapshot``, then ``call``, ``transcript`` and ``ended`` events).
- ``POST /console/api/calls/{call_id}/end``: ends a live call, as the agent's ``end_call``
  would (the carrier hangs up; nothing after ``</Connect>`` plays).
- ``GET /console/api/agents``: the agents file in force, as the graph the page draws.

Past calls come from the records API (``GET /calls``, ``GET /calls/{id}``,
``GET /calls/{id}/recording``), which takes the same session cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import Gauge

from gateway.agents import AgentGraph
from gateway.startup import call_action_gaps
from gateway.web.auth import SESSION_COOKIE, AdminAuth
from gateway.web.feed import LiveFeed
from gateway.web.httputil import CLIENT_GONE, read_form, request_origin
from gateway.web.state import GatewayState

#: What the console's pages may load and talk to: this gateway, nothing else. No inline
#: script or style, so an injected string can never run.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; worker-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",  # the answer depends on who asks
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_ASSET_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
#: Consoles watching at once; each holds one open response.
MAX_SUBSCRIBERS: Final = 64
#: A comment line this often keeps proxies from closing a quiet event stream.
KEEPALIVE_S: Final = 15.0
#: Failed logins one client address may make per window before it must wait.
LOGIN_FAILURES: Final = 10
LOGIN_WINDOW_S: Final = 60.0
MAX_TOKEN_CHARS: Final = 1000


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The console's files, read once: a handful of kilobytes, served from memory."""
    assets: dict[str, Asset] = {}
    folder = resources.files("gateway.web").joinpath("console")
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _ASSET_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[entry.name] = Asset(body, _ASSET_TYPES[suffix], etag)
    return assets


class LoginThrottle:
    """Failed logins per client address in a sliding window; pure (the clock is passed in)."""

    def __init__(self, limit: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}

    def blocked(self, client: str, now: float) -> bool:
        recent = [t for t in self._failures.get(client, ()) if now - t < self.window_s]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return len(recent) >= self.limit

    def failed(self, client: str, now: float) -> None:
        self._failures.setdefault(client, []).append(now)
        if len(self._failures) > 10_000:  # a flood from many addresses: forget the oldest
            del self._failures[next(iter(self._failures))]


def add_console_routes(app: FastAPI, state: GatewayState, feed: LiveFeed) -> None:
    log = structlog.get_logger("gateway.console")
    auth = AdminAuth.of(state.settings)
    guard = Depends(auth.guard())
    assets = load_assets()
    throttle = LoginThrottle()

    def login_page(message: str = "", status: int = 200) -> HTMLResponse:
        template = assets["login.html"].body.decode()
        body = template.replace("{{message}}", html.escape(message))
        return HTMLResponse(body, status, headers=PAGE_HEADERS)

    @app.get("/console", response_model=None)
    async def console(request: Request) -> Response:
        if auth.credential(request) is None:
            return login_page(_insecure_notice(request))
        return HTMLResponse(assets["console.html"].body, headers=PAGE_HEADERS)

    @app.post("/console/login", response_model=None)
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        if throttle.blocked(client, now):
            state.log_refusal(log, "console.login_throttled", client=client)
            return login_page("Too many failed attempts: wait a minute and try again.", 429)
        form = await read_form(request)
        if form is None:
            return CLIENT_GONE
        token = form.get("token")
        if (
            not isinstance(token, str)
            or len(token) > MAX_TOKEN_CHARS
            or not auth.token_valid(token.strip())
        ):
            throttle.failed(client, now)
            state.log_refusal(log, "console.login_failed", client=client)
            return login_page("That is not the admin token.", 401)
        log.info("console.login", client=client)
        response = RedirectResponse("/console", 303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            SESSION_COOKIE,
            auth.sessions.issue(time.time()),
            max_age=int(auth.sessions.ttl_s),
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.post("/console/logout", response_model=None)
    async def logout() -> Response:
        response = RedirectResponse("/console", 303, headers={"Cache-Control": "no-store"})
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True)
        return response

    @app.get("/console/assets/{name}", response_model=None)
    async def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None or name.endswith(".html"):
            raise HTTPException(404, "no such file")
        headers = {
            "ETag": found.etag,
            "Cache-Control": "no-cache",  # revalidate: an upgrade changes the files
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    @app.get("/console/api/live", dependencies=[guard], response_model=None)
    async def live() -> Response:
        if feed.subscribers >= MAX_SUBSCRIBERS:
            raise HTTPException(503, f"at most {MAX_SUBSCRIBERS} consoles can watch at once")
        return StreamingResponse(
            _events(feed, state.metrics.console_watchers),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post("/console/api/calls/{call_id}/end", dependencies=[guard], status_code=202)
    async def end_call(call_id: str) -> JSONResponse:
        for bridge in list(state.calls.values()):
            if bridge.events.call_id == call_id:
                bridge.log.info("call.operator_end")
                bridge.request_end("operator_ended")
                return JSONResponse({"call_id": call_id, "ending": True}, 202)
        raise HTTPException(404, "no live call with that id")

    @app.get("/console/api/agents", dependencies=[guard])
    async def agents() -> JSONResponse:
        graph = state.graph
        body = graph_document(graph, state.model_for(graph))
        body["warnings"] += call_action_gaps(state.settings, graph)
        return JSONResponse(body)


def graph_document(graph: AgentGraph, model: str) -> dict[str, Any]:
    """The agents file as the page draws it: stages in pipeline order, their handoffs, where
    calls start (the first stage, and each route's), and the file's warnings."""
    starts = {graph.first_stage.phase} | {route.phase for route in graph.spec.routes}
    return {
        "provider": graph.provider,
        "model": model,
        "source": graph.source,
        "agents": [
            {
                "id": agent.id,
                "role": agent.role,
                "provider": agent.provider,
                "voice": agent.voice,
                "greeting": bool(agent.greeting),
                "tools": list(agent.tools),
            }
            for agent in graph.spec.agents
        ],
        "stages": [
            {
                "phase": stage.phase,
                "agent_id": stage.agent_id,
                "next": stage.next,
                "can_return_to": list(stage.can_return_to),
                "start": stage.phase in starts,
            }
            for stage in graph.spec.pipeline
        ],
        "routes": [{"number": r.number, "phase": r.phase} for r in graph.spec.routes],
        "warnings": list(graph.warnings),
    }


async def _events(feed: LiveFeed, watchers: Gauge) -> AsyncIterator[str]:
    """One console's event stream: a snapshot, then every change, until it leaves or the
    server stops."""
    subscription = feed.subscribe()
    watchers.inc()
    try:
        yield "retry: 2000\n" + _event("snapshot", feed.snapshot())
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    name, data = await subscription.next()
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if name == "closed":
                return
            if name == "resync":
                yield _event("snapshot", feed.snapshot())
                continue
            yield _event(name, data)
    finally:
        feed.unsubscribe(subscription)
        watchers.dec()


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _insecure_notice(request: Request) -> str:
    """Why logging in cannot work here, if it cannot: the session cookie is ``Secure``, so a
    browser keeps it only over HTTPS or from a loopback address."""
    secure, host = request_origin(request)
    if secure:
        return ""
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost" or _loopback(hostname):
        return ""
    return (
        "This page was not loaded over HTTPS: the browser will not keep the session cookie. "
        "Open the console through your HTTPS address (or http://127.0.0.1 on the machine)."
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
