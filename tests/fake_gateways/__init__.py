"""Fake gateways for the caller simulators' tests: small scripted apps that a Twilio or Telnyx
caller simulator calls, recording everything the caller sent.

What the carriers share lives here: the app served in its own thread (so after a call the test's
loop must hold no task but the test itself), the media stream's receive loop with its scenario and
echo knobs, the recorded server-side call and :func:`place_call`. The carriers' own webhooks and
message shapes are in :mod:`tests.fake_gateways.twilio` and :mod:`tests.fake_gateways.telnyx`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from callsim.callers.result import CallResult
from tests.servers import ThreadedServer, until

Scenario = Callable[[Any], Awaitable[None]]


@dataclass
class StreamBehaviour:
    """How a fake gateway answers on the media stream; a fresh one per test."""

    scenario: Scenario | None = None  # runs on the stream once `start` arrived
    echo: bool = False  # send every inbound media payload straight back


@dataclass(kw_only=True)
class ServerCall:
    """What a fake gateway saw of one call; written in the server's thread."""

    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    start_time: float = 0.0
    disconnect_code: int | None = None
    errors: list[BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    ws: WebSocket | None = None

    def events(self) -> list[str]:
        return [m["event"] for _, m in self.messages]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["event"] == event]

    def on_start(self, start: dict[str, Any]) -> None:
        """Note the stream's ids from the ``start`` message."""

    def outbound(self, event: str, **fields: object) -> dict[str, object]:
        """A message to the caller; carriers that address it to the stream add its id."""
        return {"event": event, **fields}

    async def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after ``start`` arrived."""
        await asyncio.sleep(max(0.0, self.start_time + seconds - time.monotonic()))

    async def send(self, message: object) -> None:
        assert self.ws is not None
        await self.ws.send_text(message if isinstance(message, str) else json.dumps(message))

    async def media(self, payload: bytes) -> None:
        await self.send(
            self.outbound("media", media={"payload": base64.b64encode(payload).decode()})
        )

    async def mark(self, name: str) -> None:
        await self.send(self.outbound("mark", mark={"name": name}))

    async def clear(self) -> None:
        await self.send(self.outbound("clear"))


CallT = TypeVar("CallT", bound=ServerCall)
BehaviourT = TypeVar("BehaviourT", bound=StreamBehaviour)


class Caller(Protocol):
    async def run(self) -> CallResult: ...


class FakeGateway(Generic[CallT, BehaviourT]):
    """A carrier's webhook and media stream on a free port, scripted per test by ``behaviour``."""

    caller_type: ClassVar[Callable[..., Caller]]

    def __init__(self, behaviour: BehaviourT) -> None:
        self.behaviour = behaviour
        self.calls: list[CallT] = []
        self._server = ThreadedServer(self.app())
        self.port = self._server.port
        self.url = self._server.url

    def app(self) -> FastAPI:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop()

    def reset(self, behaviour: BehaviourT) -> Self:
        """Forget earlier calls; answer the next ones as ``behaviour`` says."""
        self.behaviour = behaviour
        self.calls.clear()
        return self

    async def serve_stream(self, call: CallT, behaviour: StreamBehaviour) -> None:
        """Record every message until the caller disconnects; run the scenario once ``start``
        arrived, and echo media if asked to."""
        ws = call.ws
        assert ws is not None
        started = asyncio.Event()

        async def run_scenario() -> None:
            await started.wait()
            if behaviour.scenario is not None:
                await behaviour.scenario(call)

        scenario = asyncio.create_task(run_scenario())
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    call.disconnect_code = msg.get("code")
                    break
                now = time.monotonic()
                data = json.loads(msg["text"])
                call.messages.append((now, data))
                if data["event"] == "start":
                    call.start_time = now
                    call.on_start(data)
                    started.set()
                elif data["event"] == "media" and behaviour.echo:
                    # The caller may hang up while this media is in flight.
                    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                        await call.media(base64.b64decode(data["media"]["payload"]))
            if scenario.done() and not scenario.cancelled() and scenario.exception():
                call.errors.append(scenario.exception())  # type: ignore[arg-type]
        finally:
            scenario.cancel()
            await asyncio.gather(scenario, return_exceptions=True)


async def place_call(
    gw: FakeGateway[CallT, Any], **options: Any
) -> tuple[CallResult, CallT | None]:
    """Run one call; check the caller left nothing running and the gateway side finished."""
    t0 = time.monotonic()
    result = await gw.caller_type(gw.url, **options).run()
    assert asyncio.all_tasks() == {asyncio.current_task()}, "the caller left tasks running"
    assert time.monotonic() - t0 < 5
    if not gw.calls:
        return result, None
    call = gw.calls[-1]
    if result.stream_url is not None:
        await until(call.done.is_set, within_s=3.0)  # the gateway's stream handler finished
    assert call.errors == []
    return result, call
