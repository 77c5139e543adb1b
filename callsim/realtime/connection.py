"""One accepted Realtime websocket on the simulator side: every server event gets an
``event_id``, is sent under one lock (events never interleave) and recorded; closes are recorded
with who started them (``callsim.simconnection``), and a close with code 1006 drops the TCP
connection without a close frame (what a network failure or a crashed front end looks like to
the client).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection

from callsim.jsontext import compact
from callsim.realtime.events import Ids, JsonObject
from callsim.realtime.records import RealtimeConnectionRecord
from callsim.simconnection import ABNORMAL_CLOSE, SimConnection, check_close_code

if TYPE_CHECKING:
    from callsim.realtime.model import RealtimeEngine


def check_hook_close_code(code: int) -> None:
    """Codes a hook may close with: any sendable one, and 1006 for a dropped connection."""
    if code != ABNORMAL_CLOSE:
        check_close_code(code)


class RealtimeConnection(SimConnection[RealtimeConnectionRecord]):
    """Serialised, recorded sending and owned tasks of one connection."""

    def __init__(self, ws: ServerConnection, record: RealtimeConnectionRecord, ids: Ids) -> None:
        super().__init__(ws, record)
        self.engine: RealtimeEngine | None = None
        self._ids = ids

    async def send(self, event: JsonObject) -> None:
        message = {"type": event["type"], "event_id": self._ids.new("event")}
        message.update((key, value) for key, value in event.items() if key != "type")
        text = compact(message)
        async with self._send_lock:
            await self._ws_send(text)
            self.record.sent_events.append((time.monotonic(), event["type"]))
            if event["type"] == "error":
                self.record.errors_sent.append(dict(event["error"]))

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (1006: drop the transport without a close frame)."""
        if code != ABNORMAL_CLOSE:
            await super().close(code, reason)
            return
        self._note_server_close(code, reason)
        self.ws.transport.abort()

    async def shutdown(self) -> None:
        """Close the engine, then cancel and await every task this connection started."""
        if self.engine is not None:
            await self.engine.close()
        await super().shutdown()
