"""Serving a fake peer's ASGI app (a carrier's REST API) on a free loopback port, in the
caller's own event loop: what ``gateway demo`` and the tests run next to the real gateway."""

from __future__ import annotations

import asyncio
import contextlib
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
