"""Carrier websockets: read without a pause per message (paused when messages pile up), and
media frames cut out of the bytes without websockets' parser, which still gets everything else."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.frames import Close, Frame, Opcode

from gateway.connections import (
    MAX_QUEUED_MESSAGES,
    MEDIA_LANE,
    MEDIA_SEND,
    MediaWebSocketProtocol,
)


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


# ---------------------------------------------------------------------- the fast parse


class _Counted(_Observed):
    """Also counts the bytes that reach ``websockets``' own parser after the handshake."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.parsed_by_websockets = 0
        receive_data = self.conn.receive_data

        def counted(data: bytes) -> None:
            if self.handshake_complete:
                self.parsed_by_websockets += len(data)
            receive_data(data)

        self.conn.receive_data = counted  # type: ignore[method-assign]


class _RawClient:
    """A websocket client at the byte level: the test decides every byte and every write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): its opcode and payload."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _frame(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=mask)


@contextlib.asynccontextmanager
async def _echo_server(max_size: int = 1 << 20) -> AsyncIterator[tuple[int, list[Any]]]:
    """A server whose app keeps every message it receives (text or bytes) and the disconnect."""
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            got.append(message.get("text", message.get("bytes")))
        got.append(("disconnect", message.get("code")))

    config = uvicorn.Config(
        app, port=0, ws=_Counted, lifespan="off", log_config=None, ws_max_size=max_size
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 -- uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1], got
    finally:
        server.should_exit = True
        await task


async def _write_cut(
    client: _RawClient, texts: list[str], pings: list[bool], cuts: list[int]
) -> None:
    """Each text as a frame, a ping after those ``pings`` marks, the bytes cut at ``cuts``
    (taken modulo the stream's length) into separate writes."""
    stream = b""
    for text, ping in zip(texts, pings, strict=True):
        stream += _frame(Opcode.TEXT, text.encode())
        if ping:
            stream += _frame(Opcode.PING, b"p")
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        await client.write(stream[start:end])


async def _expect_pongs(client: _RawClient, pings: list[bool]) -> None:
    for _ in range(sum(pings)):
        assert await client.frame() == (Opcode.PONG, b"p")


_TEXTS = st.lists(
    st.one_of(
        st.text(max_size=300),  # media-message sizes, any Unicode
        st.sampled_from([125, 126, 65535]).map(lambda n: "x" * n),  # the length encodings
        st.just("é" * 40000),  # 80,000 bytes: the 64-bit length, uvicorn's path
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=_TEXTS, cuts=st.lists(st.integers(min_value=0), max_size=20), data=st.data())
async def test_any_split_of_text_and_ping_frames_delivers_every_message_in_order(
    texts: list[str], cuts: list[int], data: st.DataObject
) -> None:
    # Frames in any mix, cut into writes anywhere (a byte at a time included): the app gets
    # each message whole and in order, and each ping its pong, whichever path read it.
    pings = data.draw(st.lists(st.booleans(), min_size=len(texts), max_size=len(texts)))
    async with _echo_server() as (port, got):
        client = await _RawClient.open(port)
        try:
            await _write_cut(client, texts, pings, cuts)
            await _until(lambda: len(got) == len(texts))
            assert got == texts
            await _expect_pongs(client, pings)
        finally:
            client.close()


async def test_media_messages_never_reach_the_websockets_parser_but_control_frames_do() -> None:
    _Observed.instances.clear()
    async with _echo_server() as (port, got):
        client = await _RawClient.open(port)
        (protocol,) = _Observed.instances
        assert isinstance(protocol, _Counted)
        media = [f'{{"event":"media","n":{n}}}' for n in range(50)]
        await client.write(b"".join(_frame(Opcode.TEXT, m.encode()) for m in media))
        await _until(lambda: len(got) == 50)
        assert protocol.parsed_by_websockets == 0
        ping = _frame(Opcode.PING, b"keepalive")
        await client.write(ping)
        assert await client.frame() == (Opcode.PONG, b"keepalive")
        assert protocol.parsed_by_websockets == len(ping)
        # Past the ping the parser is between frames again: media is read fast once more.
        await client.write(_frame(Opcode.TEXT, b'{"after":"ping"}'))
        await _until(lambda: len(got) == 51)
        assert got[-1] == '{"after":"ping"}'
        assert protocol.parsed_by_websockets == len(ping)
        client.close()


async def test_bytes_inside_a_frame_the_parser_is_reading_are_never_cut_as_media() -> None:
    # A ping whose payload is itself a whole masked text frame (its own mask all zeros, so
    # those bytes go on the wire as they are), cut right after the ping's header: the second
    # write starts with a media frame's first byte, but it is the middle of the ping, which
    # the websockets parser is reading. It must get those bytes, not the fast path.
    inner = _frame(Opcode.TEXT, b"not a message")
    ping_head = bytes((0x89, 0x80 | len(inner))) + b"\0\0\0\0"
    async with _echo_server() as (port, got):
        client = await _RawClient.open(port)
        try:
            await client.write(_frame(Opcode.TEXT, b"first") + ping_head)
            await _until(lambda: len(got) == 1)
            await client.write(inner)
            assert await client.frame() == (Opcode.PONG, inner)
            await client.write(_frame(Opcode.TEXT, b"last"))
            await _until(lambda: len(got) == 2)
            assert got == ["first", "last"]
        finally:
            client.close()


async def test_fragments_and_binary_frames_go_to_uvicorn_and_arrive_whole() -> None:
    async with _echo_server() as (port, got):
        client = await _RawClient.open(port)
        await client.write(
            _frame(Opcode.TEXT, b'{"a":', fin=False)
            + _frame(Opcode.CONT, b'"b"}')
            + _frame(Opcode.BINARY, b"\x00\x01")
            + _frame(Opcode.TEXT, b'{"c":1}')
        )
        await _until(lambda: len(got) == 3)
        assert got == ['{"a":"b"}', b"\x00\x01", '{"c":1}']
        client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_frame(Opcode.TEXT, b'{"bad":"\xff"}'), 1007),  # invalid UTF-8
        (_frame(Opcode.TEXT, b"x" * 2000), 1009),  # over ws_max_size
        (_frame(Opcode.TEXT, b'{"unmasked":1}', mask=False), 1002),
    ],
    ids=["invalid-utf8", "too-big", "unmasked"],  # stable: the frames' masking keys are random
)
async def test_a_bad_frame_closes_the_socket_as_uvicorn_would(frame: bytes, code: int) -> None:
    async with _echo_server(max_size=1000) as (port, got):
        client = await _RawClient.open(port)
        await client.write(_frame(Opcode.TEXT, b'{"ok":1}') + frame + _frame(Opcode.TEXT, b"{}"))
        opcode, payload = await client.frame()
        assert opcode == Opcode.CLOSE
        assert int.from_bytes(payload[:2], "big") == code
        await _until(lambda: len(got) == 2)
        assert got[0] == '{"ok":1}'  # what came before the bad frame was delivered
        assert got[1][0] == "disconnect"  # and nothing after it
        client.close()


async def test_a_close_frame_is_answered_and_ends_the_stream() -> None:
    async with _echo_server() as (port, got):
        client = await _RawClient.open(port)
        close = Close(1000, "bye").serialize()
        await client.write(_frame(Opcode.TEXT, b'{"last":1}') + _frame(Opcode.CLOSE, close))
        assert await client.frame() == (Opcode.CLOSE, close)
        await _until(lambda: len(got) == 2)
        assert got == ['{"last":1}', ("disconnect", 1000)]
        client.close()


# ---------------------------------------------------------------------- the media lane


@contextlib.asynccontextmanager
async def _lane_server(
    takes: Any = lambda text: '"media"' in text,
) -> AsyncIterator[tuple[int, list[Any]]]:
    """A server whose app offers a media lane taking what ``takes`` accepts, and keeps every
    message it sees, by either way, in the order it saw them: ("lane" | "queue", text)."""
    got: list[Any] = []

    def lane(raw: bytes) -> bool:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return False  # the lane's contract: take only valid UTF-8 (the queue checks it)
        if not takes(text):
            return False
        got.append(("lane", text))
        return True

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        scope["extensions"][MEDIA_LANE](lane)
        while (message := await receive())["type"] == "websocket.receive":
            got.append(("queue", message.get("text", message.get("bytes"))))
        got.append(("disconnect", message.get("code")))

    async with _server(app) as port:
        yield port, got


_LANE_TEXTS = st.lists(
    st.one_of(
        st.integers(0, 999).map(lambda n: f'{{"event":"media","n":{n}}}'),
        st.sampled_from(['{"event":"mark"}', '{"event":"dtmf"}', "x" * 200]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=_LANE_TEXTS, cuts=st.lists(st.integers(min_value=0), max_size=20), data=st.data())
async def test_the_media_lane_keeps_the_order_messages_were_sent_in(
    texts: list[str], cuts: list[int], data: st.DataObject
) -> None:
    """The lane takes a message only while none waits in the queue ahead of it: whatever the
    mix and however the bytes are cut, the app sees every message once, in order, by either
    way; pings still get their pongs."""
    pings = data.draw(st.lists(st.booleans(), min_size=len(texts), max_size=len(texts)))
    async with _lane_server() as (port, got):
        client = await _RawClient.open(port)
        try:
            await _write_cut(client, texts, pings, cuts)
            await _until(lambda: len(got) == len(texts))
            assert [text for _, text in got] == texts
            for way, text in got:
                assert way == "queue" or '"media"' in text
            await _expect_pongs(client, pings)
        finally:
            client.close()


async def test_media_goes_by_the_lane_while_the_app_waits() -> None:
    async with _lane_server() as (port, got):
        client = await _RawClient.open(port)
        for n in range(20):  # one at a time: the app is waiting for each
            await client.write(_frame(Opcode.TEXT, f'{{"event":"media","n":{n}}}'.encode()))
            await _until(lambda n=n: len(got) == n + 1)
        await client.write(_frame(Opcode.TEXT, b'{"event":"stop"}'))
        await _until(lambda: len(got) == 21)
        assert [way for way, _ in got] == ["lane"] * 20 + ["queue"]
        client.close()


async def test_invalid_utf8_still_closes_with_1007_when_a_lane_is_offered() -> None:
    async with _lane_server(takes=lambda text: True) as (port, got):
        client = await _RawClient.open(port)
        await client.write(
            _frame(Opcode.TEXT, b'{"event":"media"}') + _frame(Opcode.TEXT, b'{"media":"\xff"}')
        )
        opcode, payload = await client.frame()
        assert (opcode, int.from_bytes(payload[:2], "big")) == (Opcode.CLOSE, 1007)
        await _until(lambda: len(got) == 2)
        assert got == [("lane", '{"event":"media"}'), ("disconnect", 1007)]
        client.close()


async def test_a_lane_that_raises_is_withdrawn_and_its_message_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken(text: str) -> bool:
        calls.append(text)
        raise ValueError("a bug in the handler")

    async with _lane_server(takes=broken) as (port, got):
        client = await _RawClient.open(port)
        await client.write(_frame(Opcode.TEXT, b'{"n":1}'))
        await _until(lambda: len(got) == 1)
        await client.write(_frame(Opcode.TEXT, b'{"n":2}'))
        await _until(lambda: len(got) == 2)
        assert got == [("queue", '{"n":1}'), ("queue", '{"n":2}')]
        assert calls == ['{"n":1}']  # withdrawn after the failure
        assert "media lane's handler failed" in caplog.text
        client.close()


async def test_the_lane_is_withdrawn_with_none() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        scope["extensions"][MEDIA_LANE](lambda raw: seen.append(("lane", raw.decode())) or True)
        message = await receive()  # the lane takes the first message: this is the second
        seen.append(("queue", message["text"]))

    _Observed.instances.clear()
    async with _server(app) as port:
        client = await _RawClient.open(port)
        (protocol,) = _Observed.instances
        await client.write(_frame(Opcode.TEXT, b'{"n":1}'))
        await _until(lambda: len(seen) == 1)
        protocol.offer_media_lane(None)
        await client.write(_frame(Opcode.TEXT, b'{"n":2}'))
        await _until(lambda: len(seen) == 2)
        assert seen == [("lane", '{"n":1}'), ("queue", '{"n":2}')]
        client.close()


async def test_texts_written_at_once_arrive_in_order_with_the_asgi_ones() -> None:
    """``send_text_now`` (the playout's media) writes the frame ``websocket.send`` would, in
    order with the ASGI sends around it; once the app has closed it declines, so the ASGI way
    reports the send as it always did."""
    results: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        send_now = scope["extensions"][MEDIA_SEND]
        texts = ["é" * n for n in (0, 1, 125, 126, 70000)]
        for n, text in enumerate(texts):
            if n % 2:
                await send({"type": "websocket.send", "text": text})
            else:
                results.append(send_now(text))
        await send({"type": "websocket.close", "code": 1000})
        results.append(send_now("too late"))

    async with _server(app) as port:
        client = await _RawClient.open(port)
        got = [await client.frame() for _ in range(6)]
        assert got[:5] == [(Opcode.TEXT, ("é" * n).encode()) for n in (0, 1, 125, 126, 70000)]
        assert got[5][0] == Opcode.CLOSE
        await _until(lambda: len(results) == 4)
        assert results == [True, True, True, False]
        client.close()
