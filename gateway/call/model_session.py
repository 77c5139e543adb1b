"""The seam between a call and its model: what the bridge uses of a Live session.

:class:`~gateway.live.session.LiveSession` is the one real implementation (Gemini Live over the
SDK, with reconnects and resumption inside it). The bridge depends on this protocol instead, so
a unit test can drive a whole call with a plain fake object that hands out scripted events. The
protocol lives on the caller's side of the seam: ``gateway.live`` knows nothing of calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog

from gateway.live.config import AgentPersona
from gateway.live.events import LiveEvent
from gateway.live.session import Conversation, LiveSession, TakeoverFactory


class ModelSession(Protocol):
    """One call's conversation with the model, across however many connections it takes.

    ``open`` and ``hand_off`` return (resumed, milliseconds taken) and raise
    :class:`~gateway.live.session.LiveConnectError` when no connection could be opened.
    """

    @property
    def audio_dropped_ms(self) -> float:
        """Caller audio lost over the call (beyond what a reconnect could replay)."""
        ...

    async def open(self, persona: AgentPersona) -> tuple[bool, float]: ...

    async def hand_off(
        self, persona: AgentPersona, takeover: TakeoverFactory
    ) -> tuple[bool, float]: ...

    async def send_audio(self, pcm16k: bytes) -> None:
        """Caller audio, PCM16 little-endian at 16 kHz."""
        ...

    async def send_text(self, text: str) -> None: ...

    async def send_tool_response(
        self, call_id: str, name: str, response: dict[str, Any]
    ) -> None: ...

    async def next_event(self) -> LiveEvent:
        """The next event; :class:`~gateway.live.events.SessionEnded` once it is over."""
        ...

    async def close(self) -> None:
        """End the conversation; idempotent."""
        ...


#: Builds the call's model session: the call's logger and what seeds a new connection.
LiveSessionFactory = Callable[[structlog.stdlib.BoundLogger, Conversation], ModelSession]


def _live_session_is_a_model_session(session: LiveSession) -> ModelSession:
    """Never called: mypy checks here that the real session still fits the seam."""
    return session
