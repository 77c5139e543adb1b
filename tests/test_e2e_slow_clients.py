"""Slow and greedy clients: slowloris requests are closed at the deadline, floods are capped.

Raw TCP sockets against the real server (uvicorn with the gateway's guarded h11 protocol), so
what is measured is what a client on the internet would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.connections import REQUEST_TIMEOUT_S, guarded_h11
from tests.harness import running

#: Every test here also fails if anything in the log holds a traceback (a body cut short, say).
pytestmark = pytest.mark.usefixtures("structured_logs")

GET_HEAD = b"GET /healthz HTTP/1.1\r\nHost: gw.example.com\r\n"
POST_HEAD = (
    b"POST /twilio/voice HTTP/1.1\r\nHost: gw.example.com\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nCallSid=CA"
)


async def _closed_after(reader: asyncio.StreamReader, started: float, limit_s: float) -> float:
    """Seconds from ``started`` until the server closed the connection (EOF or reset)."""
    try:
        async with asyncio.timeout(limit_s):
            while await reader.read(4096):
                pass
    except (ConnectionError, TimeoutError):
        pass
    return time.monotonic() - started


async def _trickle(writer: asyncio.StreamWriter, head: bytes) -> None:
    """Send ``head``, then one more header byte a second, never finishing the request."""
    writer.write(head)
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            await asyncio.sleep(1.0)
            writer.write(b"X")
            await writer.drain()


async def test_slowloris_connections_are_closed_at_the_deadline_and_idle_keep_alive_is_not() -> (
    None
):
    async with running() as h:
        port = h.gateway.port
        started = time.monotonic()
        slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(10):  # never send a byte
            slow.append(await asyncio.open_connection("127.0.0.1", port))
        tricklers = []
        for head in [GET_HEAD] * 10 + [POST_HEAD] * 10:  # headers (or body) a byte a second
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            slow.append((reader, writer))
            tricklers.append(asyncio.create_task(_trickle(writer, head)))
        # A well-behaved keep-alive connection: one request, then idle past the deadline.
        ka_reader, ka_writer = await asyncio.open_connection("127.0.0.1", port)
        ka_writer.write(GET_HEAD + b"\r\n")
        first = await ka_reader.readuntil(b"}")
        closed = await asyncio.gather(
            *(_closed_after(reader, started, REQUEST_TIMEOUT_S + 10) for reader, _ in slow)
        )
        for task in tricklers:
            task.cancel()
        await asyncio.gather(*tricklers, return_exceptions=True)
        ka_writer.write(GET_HEAD + b"\r\n")  # still open, well past the request deadline
        second = await asyncio.wait_for(ka_reader.readuntil(b"}"), 5)
        for _, writer in [*slow, (ka_reader, ka_writer)]:
            writer.close()
        metrics = h.gateway.state.metrics.render().decode()
    assert all(REQUEST_TIMEOUT_S - 0.5 <= t <= REQUEST_TIMEOUT_S + 2 for t in closed), closed
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")
    assert 'gateway_errors_total{kind="request_timeout"} 30.0' in metrics


@contextlib.asynccontextmanager
async def _guarded_server(max_connections: int, timeout_s: float) -> AsyncIterator[int]:
    async def ok(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    refused: list[str] = []
    app = Starlette(routes=[Route("/", ok)])
    protocol = guarded_h11(
        max_connections=max_connections, request_timeout_s=timeout_s, on_refused=refused.append
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, http=protocol)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 -- uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_connections_over_the_cap_are_closed_as_they_are_accepted() -> None:
    async with _guarded_server(max_connections=5, timeout_s=30) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra_closed = await _closed_after(reader, time.monotonic(), 3)
        writer.close()
        for _, w in held[:2]:
            w.close()
        await asyncio.sleep(0.2)  # two slots free again: a new client is served
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(4096), 3)
        writer.close()
        for _, w in held[2:]:
            w.close()
    assert extra_closed < 1.0
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_complete_request_on_a_slow_start_is_served_within_the_deadline() -> None:
    """The deadline bounds the whole request, not each byte: a client that takes a while but
    finishes in time is served."""
    async with _guarded_server(max_connections=10, timeout_s=1.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            writer.write(part)
            await asyncio.sleep(0.2)
        answer = await asyncio.wait_for(reader.read(4096), 3)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
