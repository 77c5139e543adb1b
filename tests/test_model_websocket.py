"""The direct write path for model-bound messages, on a real websockets connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from gateway.model.websocket import DirectReader, DirectSender


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


def _spy(owner: Any, name: str, keep: Callable[[Any], Any]) -> list[Any]:
    """``owner.name``, a one-argument method, still called, after keeping ``keep(argument)``
    of each call in the list returned."""
    kept: list[Any] = []
    method = getattr(owner, name)

    def spy(data: Any) -> None:
        kept.append(keep(data))
        method(data)

    setattr(owner, name, spy)
    return kept


def _capture_writes(ws: Any) -> list[bytes]:
    """Every write ``ws`` makes to its transport from now on, in order."""
    return _spy(ws.transport, "write", bytes)


async def _drain(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def test_each_frame_has_its_own_masking_key() -> None:
    async with serve(_drain, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            written = _capture_writes(ws)
            send = DirectSender(ws)
            for n in range(3000):  # past the pool of 1024 keys, twice
                assert send.write_now(f'{{"n":{n}}}')
            keys = [frame[2:6] for frame in written]
            assert len(written) == 3000
            assert all(frame[0] == 0x81 and frame[1] & 0x80 for frame in written)
            # 3000 random 32-bit keys: a repeat or two is possible, a pattern is not.
            assert len(set(keys)) >= 2990


async def test_base64_messages_arrive_as_the_text_they_stand_for_each_with_its_own_key() -> None:
    """``write_base64`` (the model's audio messages, built in C): a real server reads the
    text ``prefix + base64url(data) + suffix``; every frame is masked, with a fresh key, also
    the first one and past the pool; a compressed connection still gets the same text."""
    pcms = [bytes([n % 256]) * (n % 700) for n in range(2100)]
    for compression in (None, "deflate"):
        handler = _Collector(len(pcms))
        async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=compression) as ws:
                written = _capture_writes(ws)
                send = DirectSender(ws)
                for pcm in pcms:
                    assert send.writable()
                    assert send.write_base64(b'{"audio":"', pcm, b'"}')
                await asyncio.wait_for(handler.done.wait(), 10)
        expected = ['{"audio":"' + base64.urlsafe_b64encode(p).decode() + '"}' for p in pcms]
        assert handler.received == expected
        if compression is None:
            written = written[: len(pcms)]  # then the close frame
            assert all(frame[0] == 0x81 and frame[1] & 0x80 for frame in written)
            keys = [frame[2:6] if frame[1] & 0x7F < 126 else frame[4:8] for frame in written]
            assert len(set(keys)) >= len(pcms) - 10


async def test_a_base64_message_the_transport_fails_to_write_aborts_the_connection() -> None:
    """The transport raising as ``write_base64`` writes: False, and the connection aborted,
    so the session treats it as lost (and journals the audio as unsent)."""
    async with serve(_drain, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            send = DirectSender(ws)
            assert send.writable()

            def broken(data: bytes) -> None:
                raise OSError("the socket broke")

            transport: Any = ws.transport
            transport.write = broken
            assert not send.write_base64(b'{"audio":"', b"pcm", b'"}')
            assert transport.is_closing()
            await asyncio.wait_for(ws.wait_closed(), 5)


async def test_a_servers_frames_go_unmasked_and_arrive_whole() -> None:
    # The simulators send through DirectSender on their server side: RFC 6455 forbids a
    # server to mask, and the websockets client fails the connection (1002) if one does.
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    # Text as text frames and bytes as binary ones, as ws.send sends them.
    sent: list[str | bytes] = [
        "y" * size if n % 2 else b"\xff" * size for n, size in enumerate(sizes)
    ]
    captured: list[list[bytes]] = []  # the server connection's writes

    async def handler(ws: ServerConnection) -> None:
        captured.append(_capture_writes(ws))
        send = DirectSender(ws)
        for message in sent:
            assert send.write_now(message)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            received = [await asyncio.wait_for(ws.recv(), 5) for _ in sizes]
    assert received == sent
    frames = captured[0][: len(sizes)]  # then the server's close frame, websockets' own
    assert [frame[0] for frame in frames] == [0x82, 0x81] * (len(sizes) // 2)
    assert not any(frame[1] & 0x80 for frame in frames)


# ------------------------------------------------------------------ DirectReader


def _counting_parser(ws: Any) -> list[int]:
    """Install a DirectReader on ``ws`` in front of a counter of the bytes websockets' own
    parser is given."""
    parsed = _spy(ws.protocol, "receive_data", len)
    assert DirectReader.install(ws)
    return parsed


async def test_whole_data_frames_skip_the_parser_and_everything_else_reaches_it() -> None:
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    messages: list[str | bytes] = [
        "t" * size if n % 2 else b"\x00" * size for n, size in enumerate(sizes)
    ]

    async def handler(ws: ServerConnection) -> None:
        assert await ws.recv() == "go"
        for message in messages:
            await ws.send(message)
        assert await ws.recv() == "more"
        await ws.ping(b"p")
        await ws.send(["frag", "ments"])  # a fragmented message: websockets' own
        await ws.send(b"after")
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            parsed = _counting_parser(ws)
            await ws.send("go")
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in messages]
            assert got == messages
            # Frames cut off by the end of a read go to the parser: the large ones do.
            big_reads = sum(parsed)
            await ws.send("more")
            assert await asyncio.wait_for(ws.recv(), 5) == "fragments"
            assert await asyncio.wait_for(ws.recv(), 5) == b"after"
            assert sum(parsed) > big_reads  # the ping and the fragments were websockets'
    assert big_reads < sum(len(m) for m in messages)  # most bytes were read directly


def _accept(key: bytes) -> bytes:
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest)


async def _until_client_close(reader: asyncio.StreamReader) -> None:
    """Read the client's frames (pongs, then its close) up to its close frame."""
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(4 + length)  # the mask and the payload
        if first & 0x0F == Opcode.CLOSE:
            return


_FRAMES = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["text", "binary"]), st.binary(max_size=300)),
        st.tuples(st.just("text"), st.sampled_from([126, 65535, 65536, 70000]).map(b"x".__mul__)),
        st.tuples(st.just("ping"), st.binary(max_size=20)),
        st.tuples(st.just("fragments"), st.lists(st.binary(max_size=40), min_size=2, max_size=3)),
    ),
    min_size=1,
    max_size=10,
)


def _frame_bytes(frames: list[tuple[str, Any]], *, mask: bool) -> tuple[bytes, list[bytes]]:
    """The frames as a server (unmasked) or a client (``mask``) sends them, and the messages
    the other side must get."""
    stream, expected = b"", []
    for kind, data in frames:
        if kind == "ping":
            stream += Frame(Opcode.PING, data).serialize(mask=mask)
            continue
        if kind == "fragments":
            for i, piece in enumerate(data):
                opcode = Opcode.BINARY if i == 0 else Opcode.CONT
                last = i == len(data) - 1
                stream += Frame(opcode, piece, fin=last).serialize(mask=mask)
            expected.append(b"".join(data))
            continue
        opcode = Opcode.TEXT if kind == "text" else Opcode.BINARY
        stream += Frame(opcode, data).serialize(mask=mask)
        expected.append(data)
    return stream, expected


def _any_split(test: Callable[..., Any]) -> Callable[..., Any]:
    """``test`` given any mix of frames (:data:`_FRAMES`) and where to cut them into writes."""
    cuts = st.lists(st.integers(min_value=0), max_size=12)
    slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    return slow(given(frames=_FRAMES, cuts=cuts)(test))


def _cut(
    frames: list[tuple[str, Any]], cuts: list[int], *, mask: bool
) -> tuple[list[bytes], list[bytes]]:
    """:func:`_frame_bytes`' stream cut into writes at ``cuts``, and the messages expected."""
    stream, expected = _frame_bytes(frames, mask=mask)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[start:end] for start, end in itertools.pairwise(points)], expected


@_any_split
async def test_any_split_of_a_servers_frames_reads_as_websockets_reads_it(
    frames: list[tuple[str, Any]], cuts: list[int]
) -> None:
    chunks, expected = _cut(frames, cuts, mask=False)
    async with (
        _raw_server(chunks) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None) as ws,
    ):
        assert DirectReader.install(ws)
        await ws.send("go")
        got = [await asyncio.wait_for(ws.recv(decode=False), 5) for _ in expected]
        assert got == expected
        assert ws.protocol.state is State.OPEN


@contextlib.asynccontextmanager
async def _raw_server(chunks: list[bytes]) -> AsyncIterator[int]:
    """A server at the byte level: after the handshake and the client's first message, it
    writes ``chunks`` one write each, then ends at the client's close frame."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n"
        )
        await reader.readexactly(2 + 4 + 2)  # the client's "go": header, mask, payload
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)  # its own read
        await _until_client_close(reader)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _unmasked(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=False)


async def test_bytes_inside_a_frame_the_parser_is_reading_are_never_cut_as_a_message() -> None:
    # A ping whose payload is itself a whole binary frame, cut right after the ping's header:
    # the second read starts as a message frame does, but it is the middle of the ping,
    # which websockets' parser is reading. The parser must get those bytes.
    inner = _unmasked(Opcode.BINARY, b"not a message")
    chunks = [
        _unmasked(Opcode.BINARY, b"first") + bytes((0x89, len(inner))),
        inner + _unmasked(Opcode.BINARY, b"last"),
    ]
    async with (
        _raw_server(chunks) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None) as ws,
    ):
        assert DirectReader.install(ws)
        await ws.send("go")
        assert await asyncio.wait_for(ws.recv(), 5) == b"first"
        assert await asyncio.wait_for(ws.recv(), 5) == b"last"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        # RFC 6455 5.1: a client fails the connection on a masked frame (1002). Read as
        # unmasked, its second byte would be a length of 134: what follows makes that fit.
        (Frame(Opcode.BINARY, b"masked").serialize(mask=True) + b"z" * 300, 1002),
        # Over the client's max_size (1000 here): websockets refuses it with 1009.
        (_unmasked(Opcode.BINARY, b"b" * 2000), 1009),
    ],
)
async def test_a_frame_websockets_refuses_is_still_refused(frame: bytes, code: int) -> None:
    async with (
        _raw_server([frame]) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None, max_size=1000) as ws,
    ):
        assert DirectReader.install(ws)
        await ws.send("go")
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as caught:
            await asyncio.wait_for(ws.recv(), 5)
        assert caught.value.sent is not None and caught.value.sent.code == code


def test_a_connection_of_another_shape_gets_no_reader() -> None:
    assert not DirectReader.install(object())


# ------------------------------------------------------- DirectReader on a server's side


@contextlib.asynccontextmanager
async def _reading_server(
    max_size: int | None = 2**20,
) -> AsyncIterator[tuple[int, asyncio.Queue[Any], list[list[int]]]]:
    """A websockets server whose connections read through a DirectReader; yields its port,
    a queue of what its one connection got (messages, then the close it sent) and, once it
    has connected, the sizes of the reads websockets' own parser was given."""
    got: asyncio.Queue[Any] = asyncio.Queue()
    parsed: list[list[int]] = []

    async def handler(ws: ServerConnection) -> None:
        parsed.append(_spy(ws.protocol, "receive_data", len))
        assert DirectReader.install(ws)
        try:
            while True:
                await got.put(await ws.recv(decode=False))
        except websockets.exceptions.ConnectionClosed as exc:
            await got.put(exc)

    async with serve(
        handler, "127.0.0.1", 0, compression=None, max_size=max_size, close_timeout=0.2
    ) as server:
        yield server.sockets[0].getsockname()[1], got, parsed


async def _raw_client(
    port: int, chunks: list[bytes]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client at the byte level: the handshake, then ``chunks``, one write each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(b"0123456789abcdef")
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101") and _accept(key) in response
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)  # its own read
    return reader, writer


@_any_split
async def test_any_split_of_a_clients_frames_reads_on_a_server_as_websockets_reads_it(
    frames: list[tuple[str, Any]], cuts: list[int]
) -> None:
    chunks, expected = _cut(frames, cuts, mask=True)
    async with _reading_server() as (port, got, _):
        _, writer = await _raw_client(port, chunks)
        assert [await asyncio.wait_for(got.get(), 5) for _ in expected] == expected
        assert got.empty()
        writer.close()


async def test_a_clients_whole_data_frames_skip_a_servers_parser() -> None:
    messages = [b"a", b"b" * 200, b"c" * 70000]
    frames = [Frame(Opcode.BINARY, m).serialize(mask=True) for m in messages]
    async with _reading_server() as (port, got, parsed):
        _, writer = await _raw_client(port, [b"".join(frames)])
        assert [await asyncio.wait_for(got.get(), 5) for _ in messages] == messages
        assert sum(parsed[0]) <= len(frames[-1])  # only the frame cut off by a read's end
        writer.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        # RFC 6455 5.1: a server fails the connection on an unmasked frame (1002).
        (_unmasked(Opcode.BINARY, b"unmasked"), 1002),
        # Over the server's max_size (1000 here): websockets refuses it with 1009.
        (Frame(Opcode.BINARY, b"b" * 2000).serialize(mask=True), 1009),
    ],
)
async def test_a_client_frame_websockets_refuses_is_still_refused_on_a_server(
    frame: bytes, code: int
) -> None:
    async with _reading_server(max_size=1000) as (port, got, _):
        ok = Frame(Opcode.TEXT, b"ok").serialize(mask=True)
        reader, writer = await _raw_client(port, [ok, frame])
        assert await asyncio.wait_for(got.get(), 5) == b"ok"
        first, _ = await asyncio.wait_for(reader.readexactly(2), 5)
        assert first == 0x88  # the server's close frame: the client hangs up on it
        writer.close()
        closed = await asyncio.wait_for(got.get(), 5)
        assert isinstance(closed, websockets.exceptions.ConnectionClosedError)
        assert closed.sent is not None and closed.sent.code == code
