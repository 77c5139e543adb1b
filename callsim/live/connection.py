"""One accepted Live websocket on the simulator side: sends are serialised and recorded, the
tasks it starts are owned (and cancelled on close), and the close is recorded with who started it
(the protocol-independent part is ``callsim.simconnection``).
"""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.server import ServerConnection

from callsim.jsontext import compact
from callsim.live import messages
from callsim.live.model import ConversationEngine
from callsim.live.protocol import CLOSE_INTERNAL_ERROR
from callsim.live.records import ConnectionRecord, SentMessage
from callsim.simconnection import SimConnection


class LiveConnection(SimConnection[ConnectionRecord]):
    """One live websocket: serialised sending with recording, and the tasks it owns."""

    def __init__(self, ws: ServerConnection, record: ConnectionRecord, binary: bool) -> None:
        super().__init__(ws, record)
        self.engine: ConversationEngine | None = None
        self._binary = binary

    async def send(self, message: messages.JsonObject) -> None:
        kind = messages.server_message_kind(message)
        if kind is None:  # the SDK crashes on such a frame; never send one
            raise ValueError(f"server message without a known top-level key: {list(message)}")
        text = compact(message)
        async with self._send_lock:
            sent_at = time.monotonic()
            await self._ws_send(text.encode("utf-8") if self._binary else text)
            self.record.sent.append(SentMessage(sent_at, kind, messages.summarise(message)))

    async def shutdown(self) -> None:
        """Close the engine, then cancel and await everything this connection started."""
        if self.engine is not None:
            await self.engine.close()
        await super().shutdown()


async def close_later(connection: LiveConnection, delay: float) -> None:
    await asyncio.sleep(delay)
    await connection.close(CLOSE_INTERNAL_ERROR, "GoAway deadline expired")
