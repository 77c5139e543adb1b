"""The direct write path for model-bound messages, on a real websockets connection."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.model.websocket import DirectSender


async def test_messages_arrive_whole_and_in_order_and_a_closed_socket_raises() -> None:
    received: list[str] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            received.append(message)
            if len(received) == 201:  # the first, then the loop's 200
                done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            send = DirectSender(ws)
            assert send.write_now('{"first":true}')  # open and idle: written at once
            sent = [f'{{"n":{i},"pad":"{"é" * (i % 7)}"}}' for i in range(200)]
            for message in sent:
                await send(message)
            await asyncio.wait_for(done.wait(), 5)
            assert received == ['{"first":true}', *sent]
            await ws.close()
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await send('{"late":true}')


async def test_a_paused_transport_waits_for_the_drain_as_send_does() -> None:
    """Under back-pressure the message goes through Connection.send, which waits."""
    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            send = DirectSender(ws)
            ws.pause_writing()  # what the transport does when its buffer is full
            assert not send.write_now("{}")
            pending = asyncio.create_task(send("{}"))
            await asyncio.sleep(0.05)
            assert not pending.done()
            ws.resume_writing()
            await asyncio.wait_for(pending, 2)


async def test_a_socket_of_another_shape_gets_its_own_send() -> None:
    class Plain:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, message: str) -> None:
            self.sent.append(message)

    plain = Plain()
    sender = DirectSender(plain)
    assert not sender.write_now("{}")
    await sender('{"a":1}')
    assert plain.sent == ['{"a":1}']
