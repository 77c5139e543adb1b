"""Serving a fake peer's ASGI app (a carrier's REST API, a business API) on a free loopback
port: in the caller's own event loop (:func:`serving`), or in a thread of its own
(:class:`ServerThread`). ``gateway demo`` and the tests run them next to the real gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) until the block ends; yields its base URL."""
    server = uvicorn.Server(
        # log_config=None: the process's logging stays as the gateway configured it.
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


class ServerThread:
    """An ASGI app served on 127.0.0.1 (a free port) by uvicorn in a thread with its own event
    loop, for a fake that must answer while the caller's loop is busy or blocked (a fake
    carrier API a gateway calls, a business API behind an HTTP tool). Serves once."""

    def __init__(self, app: Any, *, name: str, **config: Any) -> None:
        self._name = name
        self._server = uvicorn.Server(
            uvicorn.Config(app, lifespan="off", access_log=False, ws="none", **config)
        )
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if self._port is None:
            raise RuntimeError(f"enter the {self._name} first (async with): no port before")
        return self._port

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"the {self._name} serves once; create another")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"{self._name}-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"the {self._name} did not start")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop serving; returns once the thread has ended (at most 10 s)."""
        self._server.should_exit = True
        deadline = time.monotonic() + 10
        while self._thread and self._thread.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # a thread ending cannot set an asyncio.Event

    def _serve(self, sock: socket.socket) -> None:
        """The server thread: its own event loop, closed (with the socket) when it stops."""
        with sock:
            asyncio.run(self._server.serve([sock]))
