"""What every accepted websocket of a model simulator (``callsim.live``, ``callsim.realtime``)
has in common, whatever protocol it speaks: it owns the tasks it starts (cancelled and awaited
on shutdown), a server-side close is recorded with its code and reason before the frame goes
out, and when the connection is over its record says who closed it and how.

Both simulators' tests assert on ``closed_by``, ``close_code`` and ``close_reason``; one
implementation keeps the two reading a close the same way. Sending is not here: each protocol
frames, numbers and records its messages differently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Generic, Literal, Protocol, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.frames import EXTERNAL_CLOSE_CODES

from gateway.model.websocket import DirectReader, DirectSender

logger = logging.getLogger("callsim")

ABNORMAL_CLOSE = 1006


class CloseRecord(Protocol):
    """The fields of a connection record that say how the connection ended."""

    index: int
    closed_at: float | None
    close_code: int | None
    close_reason: str
    closed_by: Literal["client", "server"] | None


RecordT = TypeVar("RecordT", bound=CloseRecord)


class SimConnection(Generic[RecordT]):
    """One accepted simulator websocket: its record, its owned tasks and its closing."""

    def __init__(self, ws: ServerConnection, record: RecordT) -> None:
        self.ws = ws
        self.record = record
        #: ``ws.send``, written straight to the transport when it can go at once: the load
        #: benchmarks run one model simulator for fifty calls on the load generators' core.
        self._ws_send = DirectSender(ws)
        #: And the client's whole data frames cut from each read without websockets' parser.
        DirectReader.install(ws)
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set once the server started closing (a hook, an error, or the simulator stopping).
        self.server_closing = False

    def _note_server_close(self, code: int, reason: str) -> None:
        """Record a server-side close, unless the connection is already closing or closed."""
        if not self.server_closing and self.record.closed_at is None:
            self.server_closing = True
            self.record.closed_by = "server"
            self.record.close_code = code
            self.record.close_reason = reason

    async def send(self, message: dict[str, Any]) -> None:
        """Send one server message of the connection's protocol (and record it)."""
        raise NotImplementedError

    async def close(self, code: int, reason: str = "") -> None:
        self._note_server_close(code, reason)
        await self.ws.close(code, truncate_reason(reason))

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        """Cancel and await every task this connection started."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                await cancel_and_wait(task)


def record_close(connection: SimConnection[Any]) -> None:
    """Fill in how the connection ended, unless a server-side close already did."""
    record, protocol = connection.record, connection.ws.protocol
    record.closed_at = time.monotonic()
    if record.closed_by is not None:
        return
    if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent is not False:
        record.closed_by = "client"
        record.close_code = protocol.close_rcvd.code
        record.close_reason = protocol.close_rcvd.reason
    elif protocol.close_sent is not None:
        record.closed_by = "server"
        record.close_code = protocol.close_sent.code
        record.close_reason = protocol.close_sent.reason
    else:
        record.closed_by = "server" if connection.server_closing else "client"
        record.close_code = ABNORMAL_CLOSE


def check_close_code(code: int) -> None:
    if not (code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000):
        raise ValueError(f"{code} cannot be sent in a close frame")


def truncate_reason(reason: str) -> str:
    """A close reason fit for the frame: valid UTF-8 (client data may hold lone surrogates) and
    at most 123 bytes."""
    encoded = reason.encode("utf-8", errors="backslashreplace")
    if len(encoded) > 123:
        encoded = encoded[:120] + b"..."
    return encoded.decode("utf-8", errors="ignore")


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task``, wait until it has finished, and log an exception it ended with.

    Uses ``asyncio.wait`` so that a cancellation of the *caller* is not swallowed.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        logger.error("simulator task %s failed", task.get_name(), exc_info=task.exception())
