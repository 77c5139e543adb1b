"""A fake business API for an agent's HTTP tools: tests, and ``gateway demo``'s tool call.

An HTTP tool sends the model's arguments to the business's own API. :class:`ToolServer` stands
in for that API on 127.0.0.1: it records every request as it arrived (so a test can check the
body, the query and the headers the gateway sent) and answers each path from a table that a test
fills with :meth:`ToolServer.respond`, including the ways a real API misbehaves: slow, failing,
cut off, or answering far more than anyone asked for.

Out of the box it serves ``/orders/lookup``, which answers any ``order_id`` (in a JSON body or
the query) with a shipped order, so a demo agent has something to look up.

Like the fake Telnyx API, it serves from a thread with its own event loop: a slow answer then
holds nothing in the loop of the code under test, and a test can see that the caller's audio
went on while a tool waited.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from callsim.serving import ServerThread

__all__ = ["ORDERS_PATH", "Failure", "Reply", "ToolRequest", "ToolServer"]

ORDERS_PATH: Final = "/orders/lookup"
Failure = Literal["drop", "oversize"]
"""``drop``: the status line and headers, then the connection closes before the body (uvicorn
answers 500 itself when an app closes without starting an answer, so this is as close to "no
answer" as an ASGI app gets). ``oversize``: a body of ``size`` bytes (1 MB by default)."""
_CHUNK: Final = 16 * 1024
_METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True, slots=True)
class Reply:
    """How one path answers. With neither ``json`` nor ``text``, the body is empty."""

    status: int = 200
    json: Any = None
    #: A body that is not JSON (``text/plain``); wins over ``json``.
    text: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Waited before answering (the request is recorded on arrival, before the wait).
    delay_s: float = 0.0
    failure: Failure | None = None
    #: The body size of an ``oversize`` answer, and the pause between its 16 KB chunks (a slow
    #: trickle shows whether a client reads the whole of it).
    size: int = 1024 * 1024
    trickle_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """One request as the server received it."""

    #: ``time.monotonic()`` at arrival (the same clock in every thread of the process).
    time: float
    method: str
    path: str
    #: Every value of each key, in order (a list argument arrives as a repeated key).
    query: dict[str, list[str]]
    #: Lower-cased names; a repeated header's values joined with ", ".
    headers: dict[str, str]
    #: The body parsed as JSON; None when empty or not JSON.
    body: Any
    raw: bytes


class ToolServer:
    """The fake API; use as ``async with ToolServer() as server: ...`` and point a tool at
    ``server.url + path``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: dict[str, Reply] = {}
        self._requests: list[ToolRequest] = []
        self._closing = False
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=_METHODS)])
        # log_config=None: the server leaves the process's logging as it found it (in
        # `gateway demo`, the gateway's).
        self._serving = ServerThread(app, name="tool server", log_config=None)

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (known once entered)."""
        return f"http://127.0.0.1:{self._serving.port}"

    @property
    def requests(self) -> list[ToolRequest]:
        """Every request received, in order of arrival."""
        with self._lock:
            return list(self._requests)

    def respond(
        self,
        path: str,
        json: Any = None,
        *,
        status: int = 200,
        text: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
        failure: Failure | None = None,
        size: int = 1024 * 1024,
        trickle_s: float = 0.0,
    ) -> None:
        """Answer ``path`` (any method) this way from now on; replaces ``/orders/lookup`` too."""
        reply = Reply(status, json, text, dict(headers or {}), delay_s, failure, size, trickle_s)
        with self._lock:
            self._replies[path] = reply

    async def __aenter__(self) -> ToolServer:
        await self._serving.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True  # cuts delays and trickles short: uvicorn waits for open answers
        await self._serving.stop()

    # --- HTTP (runs in the server thread) -------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        query: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = ToolRequest(
            time.monotonic(), request.method, request.url.path, query, headers, _json(raw), raw
        )
        with self._lock:
            self._requests.append(record)
            reply = self._replies.get(record.path)
        if reply is None and record.path == ORDERS_PATH:
            reply = _order(record)
        elif reply is None:
            reply = Reply(404, {"error": "no such route"})
        await self._pause(reply.delay_s)
        if reply.failure == "drop":
            return _Dropped(reply.status)
        if reply.failure == "oversize":
            return StreamingResponse(
                self._filler(reply.size, reply.trickle_s),
                reply.status,
                dict(reply.headers),
                media_type="application/json",
            )
        if reply.text is not None:
            return Response(reply.text, reply.status, dict(reply.headers), "text/plain")
        if reply.json is None:
            return Response(b"", reply.status, dict(reply.headers))
        return JSONResponse(reply.json, reply.status, dict(reply.headers))

    async def _pause(self, seconds: float) -> None:
        """Sleep, in short steps, so that a closing server does not wait out a long delay."""
        until = time.monotonic() + seconds
        while not self._closing and (left := until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, 0.05))  # _closing is set from the test's thread

    async def _filler(self, size: int, trickle_s: float) -> AsyncIterator[bytes]:
        """``{"padding": "xxx…"}``, ``size`` bytes of JSON (valid only if read to the end)."""
        head, tail = b'{"padding": "', b'"}'
        body_left = max(size - len(head) - len(tail), 0)
        yield head
        while body_left > 0 and not self._closing:
            chunk = min(body_left, _CHUNK)
            body_left -= chunk
            yield b"x" * chunk
            await self._pause(trickle_s)
        yield tail


class _Dropped(Response):
    """Status line and headers promising a body, then nothing: uvicorn closes the connection."""

    def __init__(self, status: int) -> None:
        super().__init__(status_code=status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})


def _order(request: ToolRequest) -> Reply:
    """The default ``/orders/lookup``: every order has shipped and arrives tomorrow."""
    order_id: Any = None
    if isinstance(request.body, dict):
        order_id = request.body.get("order_id")
    if order_id is None and request.query.get("order_id"):
        order_id = request.query["order_id"][0]
    if order_id is None:
        return Reply(400, {"error": "order_id is required"})
    return Reply(200, {"order_id": order_id, "status": "shipped", "eta": "tomorrow"})


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
