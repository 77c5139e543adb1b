"""One accepted Live websocket on the simulator side: sends are serialised and recorded, the
tasks it starts are owned (and cancelled on close), and the close is recorded with who started it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import EXTERNAL_CLOSE_CODES

from callsim.live import messages
from callsim.live.model import ConversationEngine, cancel_and_wait
from callsim.live.protocol import CLOSE_INTERNAL_ERROR
from callsim.live.records import ConnectionRecord, SentMessage


class LiveConnection:
    """One live websocket: serialised sending with recording, and the tasks it owns."""

    def __init__(self, ws: ServerConnection, record: ConnectionRecord, binary: bool) -> None:
        self.ws = ws
        self.record = record
        self.engine: ConversationEngine | None = None
        self._binary = binary
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server_closing = False

    async def send(self, message: messages.JsonObject) -> None:
        kind = messages.server_message_kind(message)
        if kind is None:  # the SDK crashes on such a frame; never send one
            raise ValueError(f"server message without a known top-level key: {list(message)}")
        text = json.dumps(message, separators=(",", ":"))
        async with self._send_lock:
            sent_at = time.monotonic()
            await self.ws.send(text.encode("utf-8") if self._binary else text)
            self.record.sent.append(SentMessage(sent_at, kind, messages.summarise(message)))

    async def close(self, code: int, reason: str = "") -> None:
        if not self.server_closing and self.record.closed_at is None:
            self.server_closing = True
            self.record.closed_by = "server"
            self.record.close_code = code
            self.record.close_reason = reason
        await self.ws.close(code, truncate_reason(reason))

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """Cancel and await everything this connection started."""
        if self.engine is not None:
            await self.engine.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                await cancel_and_wait(task)


async def close_later(connection: LiveConnection, delay: float) -> None:
    await asyncio.sleep(delay)
    await connection.close(CLOSE_INTERNAL_ERROR, "GoAway deadline expired")


def record_close(connection: LiveConnection) -> None:
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
        record.close_code = 1006


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
