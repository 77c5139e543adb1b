"""Carrier websockets are read without a pause per message, and paused when messages pile up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import uvicorn
from websockets.asyncio.client import connect

from gateway.connections import MAX_QUEUED_MESSAGES, MediaWebSocketProtocol


class _Observed(MediaWebSocketProtocol):
    """The gateway's protocol, with its socket's pauses counted."""

    instances: ClassVar[list[_Observed]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.pauses = 0
        pause = transport.pause_reading

        def counted() -> None:
            self.pauses += 1
            pause()

        transport.pause_reading = counted  # type: ignore[method-assign]
        _Observed.instances.append(self)


@contextlib.asynccontextmanager
async def _server(app: Any) -> AsyncIterator[int]:
    config = uvicorn.Config(app, port=0, ws=_Observed, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 -- uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 -- polls the protocol's own state
            await asyncio.sleep(0.01)


async def test_reading_pauses_only_when_messages_pile_up_and_resumes_once_taken() -> None:
    release = asyncio.Event()
    taken: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()
        while (message := await receive())["type"] == "websocket.receive":
            taken.append(message["text"])

    _Observed.instances.clear()
    async with _server(app) as port, connect(f"ws://127.0.0.1:{port}/stream") as ws:
        (protocol,) = _Observed.instances
        for n in range(MAX_QUEUED_MESSAGES - 1):
            await ws.send(f'{{"n":{n}}}')
        await _until(lambda: protocol.queue.qsize() == MAX_QUEUED_MESSAGES - 1)
        assert protocol.pauses == 0  # uvicorn's own protocol: one pause per message
        await ws.send('{"n":"last"}')
        await _until(lambda: protocol.pauses == 1)
        assert not protocol.transport.is_reading()
        release.set()
        await _until(lambda: len(taken) == MAX_QUEUED_MESSAGES)
        assert protocol.transport.is_reading()  # all taken: reading again
        await ws.send('{"n":"again"}')
        await _until(lambda: len(taken) == MAX_QUEUED_MESSAGES + 1)
        assert taken[-2:] == ['{"n":"last"}', '{"n":"again"}']
        assert protocol.pauses == 1
