"""Plain fakes for driving a call without sockets or network: the carrier's websocket and the
model session, each recording what the code under test did to it.

They stand in for peers, never for the code under test: the bridge, the carrier codecs, the
playout and the transcoders stay real. Each fake wakes its waiters on every change, so a test
waits for a condition (``await fake.until(...)``) instead of sleeping for a guessed time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from gateway.audio.transcode import PCM16_16K, PCM16_24K, AudioFormat
from gateway.model.events import AudioOut, LiveEvent
from gateway.model.persona import AgentPersona
from gateway.model.session import AudioLaneState, ModelAudio, ModelConnectError
from gateway.model.turns import Conversation, TakeoverFactory, Turn

#: How long a test waits for something the code under test is about to do.
WAIT_S = 1.0


class _Recorder:
    """Wakes whoever waits for a condition on the fake whenever it records something."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def _touch(self) -> None:
        self._changed.set()

    async def until(self, condition: Callable[[], object]) -> None:
        """Wait until ``condition()`` is true (checked after each change); fail after WAIT_S."""
        async with asyncio.timeout(WAIT_S):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class FakeCarrierSocket(_Recorder):
    """A carrier websocket: the test queues what the carrier says, the gateway's sends and
    closes are kept. ``receive`` returns None once the test :meth:`disconnect`\\ s."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.sent: list[str] = []
        #: Every close, in order (the gateway may close an already closed socket).
        self.closes: list[tuple[int, str]] = []
        #: Set: sends fail, and this message (the carrier's ``stop``) and the disconnect arrive
        #: just after the failure, as when a carrier hangs up while the gateway is sending.
        self.hang_up_on_send: str | None = None
        #: The bridge's media lane while it offers one, and the messages it took.
        self.lane: Callable[[bytes], bool] | None = None
        self.laned = 0

    def feed(self, *messages: str | bytes | None) -> None:
        """What the carrier says, in order: each text message goes to the media lane first
        while the bridge offers one and nothing is queued, as the server's socket does."""
        for message in messages:
            if isinstance(message, str) and self._to_lane(message):
                continue
            self.inbox.put_nowait(message)

    def _to_lane(self, message: str) -> bool:
        if self.lane is None or not self.inbox.empty() or not self.lane(message.encode()):
            return False
        self.laned += 1
        return True

    def take_media(self, lane: Callable[[bytes], bool] | None) -> bool:
        self.lane = lane
        return True

    def disconnect(self) -> None:
        self.inbox.put_nowait(None)

    async def receive(self) -> str | bytes | None:
        return await self.inbox.get()

    async def send(self, text: str) -> None:
        if self.closes:
            raise ConnectionError("send on a closed socket")
        if self.hang_up_on_send is not None:
            # The stop is still on its way when the send fails: it is read a moment later.
            loop = asyncio.get_running_loop()
            loop.call_later(0.02, self.feed, self.hang_up_on_send, None)
            raise ConnectionError("the carrier closed the socket")
        self.sent.append(text)
        self._touch()

    def send_now(self, text: str) -> bool:
        """Taken at once, as an open server socket takes it; a closed or hanging-up one
        leaves it to :meth:`send`, which fails as the server's does."""
        if self.closes or self.hang_up_on_send is not None:
            return False
        self.sent.append(text)
        self._touch()
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes.append((code, reason))
        self._touch()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """What the gateway sent, parsed."""
        return [json.loads(text) for text in self.sent]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name]


class FakeModelSession(_Recorder):
    """A model session (the :class:`~gateway.model.session.ModelSession` protocol): the
    test pushes :mod:`gateway.model.events`, the session records what the call sent it.

    ``actions`` keeps the order of what the call did (``("tool_response", name)``,
    ``("hand_off", agent_id)``, ...), for tests about ordering.
    """

    def __init__(
        self,
        *,
        open_error: ModelConnectError | None = None,
        handoff_error: ModelConnectError | None = None,
        model_audio: ModelAudio | None = None,
    ) -> None:
        super().__init__()
        self.events: asyncio.Queue[LiveEvent] = asyncio.Queue()
        self.conversation: Conversation | None = None
        self.log: structlog.stdlib.BoundLogger | None = None
        self.audio_dropped_ms = 0.0
        self.opened: list[AgentPersona] = []
        self.audio_sent: list[bytes] = []
        #: What the bridge is told the model takes and gives (Gemini's formats by default).
        self.audio = model_audio or ModelAudio(PCM16_16K, PCM16_24K)
        self.cuts: list[float] = []
        self.responds: list[bool] = []
        self.carrier: AudioFormat | None = None
        self.texts: list[str] = []
        self.tool_responses: list[tuple[str, str, dict[str, Any]]] = []
        #: Each handoff's persona and the opening it would send to a resumed session.
        self.handoffs: list[tuple[AgentPersona, Sequence[Turn]]] = []
        self.actions: list[tuple[str, str]] = []
        self.close_calls = 0
        #: Whether the model's socket can take caller audio at once (the media lane).
        self.writable = True
        #: Caller audio that came through ``send_audio_now`` (also in ``audio_sent``).
        self.audio_sent_now = 0
        #: The bridge's audio lane while this session is offered one (the fake's own audio
        #: comes through next_event; a test may call the lane as a real session's reader does).
        self.lane: Callable[[AudioOut], None] | None = None
        #: Set: :meth:`close` waits for it, as a close handshake waits for the peer's answer;
        #: :meth:`open` waits for ``open_gate``, as a connect waits for the service.
        self.close_gate: asyncio.Event | None = None
        self.open_gate: asyncio.Event | None = None
        self._open_error = open_error
        self._handoff_error = handoff_error

    def factory(
        self, log: structlog.stdlib.BoundLogger, conversation: Conversation, carrier: AudioFormat
    ) -> FakeModelSession:
        """A ``SessionFactory`` that hands out this session."""
        self.log, self.conversation, self.carrier = log, conversation, carrier
        return self

    def push(self, *events: LiveEvent) -> None:
        for event in events:
            self.events.put_nowait(event)

    @property
    def audio_bytes(self) -> int:
        return sum(len(chunk) for chunk in self.audio_sent)

    async def open(
        self, persona: AgentPersona, takeover: TakeoverFactory | None = None
    ) -> tuple[bool, float]:
        self.opened.append(persona)
        self.actions.append(("open", persona.agent.id))
        self._touch()
        if self.open_gate is not None:
            await self.open_gate.wait()
        if self._open_error is not None:
            raise self._open_error
        return False, 12.5

    async def hand_off(
        self, persona: AgentPersona, takeover: TakeoverFactory
    ) -> tuple[bool, float]:
        self.actions.append(("hand_off", persona.agent.id))
        self._touch()
        if self._handoff_error is not None:
            raise self._handoff_error
        self.handoffs.append((persona, takeover(True)))
        return True, 7.5

    async def send_audio(self, audio: bytes) -> None:
        self.audio_sent.append(audio)
        self._touch()

    def audio_writable(self) -> bool:
        return self.writable

    def offer_audio_lane(self, handler: Callable[[AudioOut], None] | None) -> None:
        self.lane = handler

    def audio_lane(self, settle: Callable[[], None]) -> AudioLaneState | None:
        """None: no model socket for the compiled lane to write to (the bridge's own path
        takes every frame, as it does for OpenAI's sessions)."""
        return None

    def send_audio_now(self, audio: bytes, voiced: bool | None = None) -> None:
        """Taken at once, like a connected session's (the media lane); only while
        ``writable``, which the bridge must have asked just before."""
        assert self.writable, "send_audio_now without audio_writable()"
        self.audio_sent_now += 1
        self.audio_sent.append(audio)
        self._touch()

    async def send_text(self, text: str) -> None:
        self.texts.append(text)
        self.actions.append(("text", text))
        self._touch()

    async def send_tool_response(
        self, call_id: str, name: str, response: dict[str, Any], *, respond: bool = True
    ) -> None:
        self.tool_responses.append((call_id, name, response))
        self.responds.append(respond)
        self.actions.append(("tool_response", name))
        self._touch()

    async def playback_cut(self, unheard_ms: float) -> None:
        self.cuts.append(unheard_ms)
        self._touch()

    async def next_event(self) -> LiveEvent:
        return await self.events.get()

    async def close(self) -> None:
        self.close_calls += 1
        self.actions.append(("close", ""))
        self._touch()
        if self.close_gate is not None:
            await self.close_gate.wait()


class RecordingObserver(_Recorder):
    """A call observer (``CallObserver``) that keeps every call event, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, fields: Mapping[str, Any]) -> None:
        self.events.append((name, dict(fields)))
        self._touch()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def first(self, name: str) -> dict[str, Any]:
        """The fields of the first event called ``name``."""
        return next(fields for n, fields in self.events if n == name)

    def all(self, name: str) -> list[dict[str, Any]]:
        return [fields for n, fields in self.events if n == name]
