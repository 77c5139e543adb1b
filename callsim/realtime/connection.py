"""One accepted Realtime websocket on the simulator side: every server event gets an
``event_id``, is sent under one lock (events never interleave) and recorded; closes are recorded
with who started them, and a close with code 1006 drops the TCP connection without a close frame
(what a network failure or a crashed front end looks like to the client).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection

from callsim.live.connection import check_close_code, truncate_reason
from callsim.live.model import cancel_and_wait
from callsim.realtime.events import Ids, JsonObject
from callsim.realtime.records import RealtimeConnectionRecord

ABNORMAL_CLOSE = 1006


def check_hook_close_code(code: int) -> None:
    """Codes a hook may close with: any sendable one, and 1006 for a dropped connection."""
    if code != ABNORMAL_CLOSE:
        check_close_code(code)


class RealtimeConnection:
    """Serialised, recorded sending and owned tasks of one connection."""

    def __init__(self, ws: ServerConnection, record: RealtimeConnectionRecord, ids: Ids) -> None:
        self.ws = ws
        self.record = record
        self._ids = ids
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server_closing = False

    async def send(self, event: JsonObject) -> None:
        message = {"type": event["type"], "event_id": self._ids.new("event")}
        message.update((key, value) for key, value in event.items() if key != "type")
        text = json.dumps(message, separators=(",", ":"))
        async with self._send_lock:
            await self.ws.send(text)
            self.record.sent_events.append((time.monotonic(), event["type"]))
            if event["type"] == "error":
                self.record.errors_sent.append(dict(event["error"]))

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (1006: drop the transport without a close frame)."""
        if not self.server_closing and self.record.closed_at is None:
            self.server_closing = True
            self.record.closed_by = "server"
            self.record.close_code = code
            self.record.close_reason = reason
        if code == ABNORMAL_CLOSE:
            self.ws.transport.abort()
            return
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


def record_close(connection: RealtimeConnection) -> None:
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
