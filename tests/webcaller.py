"""A scripted browser call over ``/web/stream`` for the tests: what the console's page does,
in Python, so the protocol is tested with plain messages as well as in a real browser."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tests.harness import ADMIN_TOKEN, Harness

FRAME_BYTES = 640  # 20 ms of PCM16 at 16 kHz
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class WebCall:
    """A browser call in progress: what it sent and what the gateway sent it."""

    ws: ClientConnection
    call_id: str
    stream_id: str
    received: bytearray = field(default_factory=bytearray)
    #: (monotonic time, event, detail) of every message the gateway sent.
    events: list[tuple[float, str, str]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def named(self, event: str) -> list[tuple[float, str, str]]:
        return [e for e in self.events if e[1] == event]

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def speak(self, pcm: bytes, *, real_time: bool = True) -> None:
        """Send ``pcm`` (PCM16LE 16 kHz) as 20 ms media messages, paced like a microphone."""
        start = time.monotonic()
        for i in range(0, len(pcm), FRAME_BYTES):
            payload = base64.b64encode(pcm[i : i + FRAME_BYTES]).decode()
            await self.send({"event": "media", "media": {"payload": payload}})
            if real_time:
                delay = start + (i // FRAME_BYTES + 1) * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def read(self) -> None:
        """Take the gateway's messages: audio kept, marks echoed at once (as played)."""
        try:
            async for text in self.ws:
                msg = json.loads(text)
                event = msg["event"]
                if event == "media":
                    self.received += base64.b64decode(msg["media"]["payload"])
                    self.events.append((time.monotonic(), "media", ""))
                elif event == "mark":
                    name = msg["mark"]["name"]
                    self.events.append((time.monotonic(), "mark", name))
                    await self.send({"event": "mark", "mark": {"name": name}})
                else:
                    self.events.append((time.monotonic(), event, ""))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()


async def issue_call(h: Harness, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=h.gateway.url) as http:
        response = await http.post("/web/calls", json=body, headers=BEARER)
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    return issued


@contextlib.asynccontextmanager
async def web_call(
    h: Harness, *, phase: str | None = None, in_path: bool = True
) -> AsyncIterator[WebCall]:
    """Issue a call, open its stream with the bearer token, send ``start``; hang up after."""
    issued = await issue_call(h, **({"phase": phase} if phase else {}))
    url = issued["stream_url"] if in_path else h.gateway.url.replace("http", "ws") + "/web/stream"
    parameters = {} if in_path else {"token": issued["token"]}
    if phase:
        parameters["phase"] = phase
    async with websockets.connect(url, additional_headers=BEARER) as ws:
        call = WebCall(ws, issued["call_id"], issued["stream_id"])
        await call.send({
            "event": "start",
            "start": {
                "streamSid": call.stream_id,
                "callSid": call.call_id,
                "mediaFormat": {"encoding": "audio/pcm16le", "sampleRate": 16000, "channels": 1},
                "customParameters": parameters,
            },
        })  # fmt: skip
        reader = asyncio.create_task(call.read())
        try:
            yield call
        finally:
            with contextlib.suppress(websockets.ConnectionClosed):
                await call.send({"event": "stop"})
            await ws.close()
            await reader
