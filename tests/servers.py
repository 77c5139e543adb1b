"""Serving test apps on free loopback ports, and waiting for what they record.

Two ways to serve, for two kinds of test: :func:`serving` runs uvicorn in the test's own event
loop (a fake carrier API next to the real gateway), :class:`ThreadedServer` in a thread and loop
of its own (a fake gateway that a caller simulator calls: the test's loop then holds nothing of
the server, so whatever the caller leaves running shows).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from callsim.serving import serving as serving  # fake carrier APIs next to the real gateway
from gateway.model.events import LiveEvent, SessionEnded
from gateway.model.session import ModelSession


class ThreadedServer:
    """An ASGI app on 127.0.0.1 in a background thread with its own event loop.

    The socket is bound at construction, so the URL is known before the app is started (a fake
    gateway's webhook answer names its own stream URL).
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, lifespan="off", log_level="warning", ws="websockets-sansio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve([self._sock]))
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


async def until(predicate: Callable[[], object], within_s: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail the test if it does not within ``within_s``."""
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def next_of(session: ModelSession, kind: type[LiveEvent], within_s: float = 5.0) -> LiveEvent:
    """The session's next event of ``kind``, skipping others; fail on the session's end."""
    async with asyncio.timeout(within_s):
        while True:
            event = await session.next_event()
            if isinstance(event, kind):
                return event
            assert not isinstance(event, SessionEnded), event
