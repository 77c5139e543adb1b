"""The direct write path for model-bound messages, on a real websockets connection."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.model.websocket import DirectSender


class _Collector:
    """A server handler keeping the text messages it gets; ``done`` once it has ``count``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.received: list[str] = []
        self.done = asyncio.Event()

    async def __call__(self, ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            self.received.append(message)
            if len(self.received) == self.count:
                self.done.set()


async def test_messages_arrive_whole_and_in_order_and_a_closed_socket_raises() -> None:
    handler = _Collector(201)  # the first, then the loop's 200
    received, done = handler.received, handler.done
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


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_every_length_encoding_arrives_whole_compressed_or_not(
    compression: str | None,
) -> None:
    # The frames DirectSender builds itself (no extension) and those it leaves to websockets
    # (permessage-deflate negotiated): a real server unmasks and checks them all.
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    handler = _Collector(len(sizes))
    received, done = handler.received, handler.done
    async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=compression) as ws:
            assert bool(ws.protocol.extensions) == (compression is not None)
            send = DirectSender(ws)
            sent = ["x" * size for size in sizes]
            for message in sent:
                assert send.write_now(message)
            await asyncio.wait_for(done.wait(), 5)
            assert received == sent


async def _drain(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def test_each_frame_has_its_own_masking_key() -> None:
    async with serve(_drain, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            written: list[bytes] = []
            write = ws.transport.write

            def capture(data: bytes) -> None:
                written.append(bytes(data))
                write(data)

            ws.transport.write = capture  # type: ignore[method-assign]
            send = DirectSender(ws)
            for n in range(3000):  # past the pool of 1024 keys, twice
                assert send.write_now(f'{{"n":{n}}}')
            keys = [frame[2:6] for frame in written]
            assert len(written) == 3000
            assert all(frame[0] == 0x81 and frame[1] & 0x80 for frame in written)
            # 3000 random 32-bit keys: a repeat or two is possible, a pattern is not.
            assert len(set(keys)) >= 2990


async def test_a_servers_frames_go_unmasked_and_arrive_whole() -> None:
    # The simulators send through DirectSender on their server side: RFC 6455 forbids a
    # server to mask, and the websockets client fails the connection (1002) if one does.
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    # Text as text frames and bytes as binary ones, as ws.send sends them.
    sent: list[str | bytes] = [
        "y" * size if n % 2 else b"\xff" * size for n, size in enumerate(sizes)
    ]
    written: list[bytes] = []

    async def handler(ws: ServerConnection) -> None:
        write = ws.transport.write

        def capture(data: bytes) -> None:
            written.append(bytes(data))
            write(data)

        ws.transport.write = capture  # type: ignore[method-assign]
        send = DirectSender(ws)
        for message in sent:
            assert send.write_now(message)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            received = [await asyncio.wait_for(ws.recv(), 5) for _ in sizes]
    assert received == sent
    frames = written[: len(sizes)]  # then the server's close frame, websockets' own
    assert [frame[0] for frame in frames] == [0x82, 0x81] * (len(sizes) // 2)
    assert not any(frame[1] & 0x80 for frame in frames)
