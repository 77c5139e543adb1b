"""The fake business API (callsim/tools.py): what it records, and each way it answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from callsim.tools import ORDERS_PATH, ToolServer


@pytest.fixture
async def served() -> AsyncIterator[tuple[ToolServer, httpx.AsyncClient]]:
    async with ToolServer() as server, httpx.AsyncClient(base_url=server.url) as http:
        yield server, http


async def test_the_default_route_looks_up_an_order_from_the_body_or_the_query(
    served: tuple[ToolServer, httpx.AsyncClient],
) -> None:
    server, http = served
    posted = await http.post(ORDERS_PATH, json={"order_id": "A-17"}, headers={"X-Key": "k1"})
    assert (posted.status_code, posted.json()) == (
        200,
        {"order_id": "A-17", "status": "shipped", "eta": "tomorrow"},
    )
    got = await http.get(ORDERS_PATH, params={"order_id": "B-2"})
    assert got.json()["order_id"] == "B-2"
    missing = await http.post(ORDERS_PATH, json={})
    assert (missing.status_code, missing.json()) == (400, {"error": "order_id is required"})
    first, second, _ = server.requests
    assert (first.method, first.path, first.body, first.raw) == (
        "POST",
        ORDERS_PATH,
        {"order_id": "A-17"},
        b'{"order_id":"A-17"}',
    )
    assert first.headers["x-key"] == "k1"
    assert (second.method, second.query, second.body) == ("GET", {"order_id": ["B-2"]}, None)
    assert first.time <= second.time <= time.monotonic()


async def test_a_repeated_query_key_is_recorded_with_every_value(
    served: tuple[ToolServer, httpx.AsyncClient],
) -> None:
    server, http = served
    response = await http.get("/anything?tag=a&tag=b&x=1")
    assert (response.status_code, response.json()) == (404, {"error": "no such route"})
    assert server.requests[0].query == {"tag": ["a", "b"], "x": ["1"]}


async def test_a_configured_answer_replaces_the_default(
    served: tuple[ToolServer, httpx.AsyncClient],
) -> None:
    server, http = served
    server.respond(ORDERS_PATH, {"error": "down"}, status=503)
    server.respond("/text", text="plain words", headers={"X-Extra": "1"})
    server.respond("/empty", status=204)
    server.respond("/moved", status=302, headers={"Location": "/elsewhere"})
    down = await http.post(ORDERS_PATH, json={"order_id": "A-17"})
    assert (down.status_code, down.json()) == (503, {"error": "down"})
    text = await http.get("/text")
    assert (text.text, text.headers["content-type"], text.headers["x-extra"]) == (
        "plain words",
        "text/plain; charset=utf-8",
        "1",
    )
    empty = await http.get("/empty")
    assert (empty.status_code, empty.content) == (204, b"")
    moved = await http.get("/moved")
    assert (moved.status_code, moved.headers["location"]) == (302, "/elsewhere")


async def test_a_delay_is_recorded_on_arrival_and_waited_in_the_servers_own_loop(
    served: tuple[ToolServer, httpx.AsyncClient],
) -> None:
    server, http = served
    server.respond("/slow", {"ok": True}, delay_s=0.5)
    started = time.monotonic()
    answer = asyncio.create_task(http.get("/slow"))
    ticks = 0
    while not answer.done():  # this loop is free while the server waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert (await answer).json() == {"ok": True}
    assert time.monotonic() - started >= 0.5
    assert ticks > 20
    assert server.requests[0].time - started < 0.3


async def test_an_oversize_answer_is_the_size_asked_for_and_json_when_whole(
    served: tuple[ToolServer, httpx.AsyncClient],
) -> None:
    server, http = served
    server.respond("/big", failure="oversize")
    big = await http.get("/big")
    assert len(big.content) == 1024 * 1024
    assert set(big.json()) == {"padding"}


async def test_a_dropped_answer_closes_the_connection_before_the_body(
    served: tuple[ToolServer, httpx.AsyncClient],
) -> None:
    server, http = served
    server.respond("/drop", failure="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get("/drop")


async def test_leaving_does_not_wait_out_a_long_delay() -> None:
    async with ToolServer() as server, httpx.AsyncClient(base_url=server.url) as http:
        server.respond("/slow", {"ok": True}, delay_s=30)
        pending = asyncio.create_task(http.get("/slow"))
        while not server.requests:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.__aexit__(None, None, None)
        assert time.monotonic() - started < 2
        await pending  # answered early, as the server closed
        with pytest.raises(RuntimeError, match="serves once"):
            await server.__aenter__()


async def test_the_url_is_known_only_once_entered() -> None:
    with pytest.raises(RuntimeError, match="enter the tool server first"):
        _ = ToolServer().url
