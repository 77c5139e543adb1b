"""The seam between a call and its model: what the bridge uses of a model session.

Two implementations: :class:`gateway.live.session.LiveSession` (Gemini Live) and
:class:`gateway.realtime.session.RealtimeSession` (OpenAI Realtime), each with its reconnects
inside it. The bridge depends on this protocol instead, so a unit test can drive a whole call
with a plain fake object that hands out scripted events, and the bridge never knows which
provider it talks to. The only thing a provider shows the call is its audio formats
(:class:`ModelAudio`): the bridge transcodes to and from those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.audio.transcode import AudioFormat
from gateway.model.events import AudioOut, LiveEvent
from gateway.model.persona import AgentPersona
from gateway.model.turns import Conversation, TakeoverFactory


class ModelConnectError(Exception):
    """No connection could be opened; ``permanent`` when retrying cannot help."""

    def __init__(self, reason: str, *, code: int | None = None, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class ModelAudio:
    """The formats a session takes caller audio in and gives the agent's audio out in.

    ``tracks_playback``: the session acts on :meth:`ModelSession.playback_cut`, so the call
    should follow what the caller has heard (playback marks); otherwise it need not.
    """

    input: AudioFormat
    output: AudioFormat
    tracks_playback: bool = False


@dataclass(frozen=True, slots=True)
class AudioLaneState:
    """Where the bridge's compiled lane (``gateway/call/lane.py``) may write caller audio:
    connection ``generation``, whose next message is number ``next_index``, through
    ``target`` (:meth:`gateway.model.websocket.DirectSender.lane_target`)."""

    generation: int
    next_index: int
    target: tuple[Any, ...]


class ModelSession(Protocol):
    """One call's conversation with the model, across however many connections it takes.

    ``open`` and ``hand_off`` return (kept, milliseconds taken) — kept: the model still has the
    conversation (resumed, or updated in place) — and raise :class:`ModelConnectError` when no
    connection could be opened.
    """

    @property
    def audio(self) -> ModelAudio:
        """The formats of :meth:`send_audio` and of ``AudioOut``; a handoff may change them
        (an agent on another provider)."""
        ...

    @property
    def audio_dropped_ms(self) -> float:
        """Caller audio lost over the call (beyond what a reconnect could replay)."""
        ...

    async def open(
        self, persona: AgentPersona, takeover: TakeoverFactory | None = None
    ) -> tuple[bool, float]:
        """The first connection, opened with the greeting; or, when the call comes over from
        another provider's session, with ``takeover(False)`` (the history and the new agent's
        note)."""
        ...

    async def hand_off(
        self, persona: AgentPersona, takeover: TakeoverFactory
    ) -> tuple[bool, float]:
        """Move the conversation to ``persona``: whether it was kept, and the milliseconds the
        move took. When :attr:`audio` changes, the new formats hold from the moment this
        returns and not a task switch earlier: the caller rewires its transcoders right after,
        before anything else can send or deliver audio."""
        ...

    async def send_audio(self, audio: bytes) -> None:
        """Caller audio in ``audio.input``'s format."""
        ...

    def audio_writable(self) -> bool:
        """Whether :meth:`send_audio_now` would write this instant."""
        ...

    def audio_lane(self, settle: Callable[[], None]) -> AudioLaneState | None:
        """Where the bridge's compiled lane may write caller audio now, journalled as
        :meth:`send_audio_now` would journal it; None when it may not (a provider without
        one answers None always). ``settle`` is called before the session reads anything the
        lane changed."""
        ...

    def send_audio_now(self, audio: bytes, voiced: bool | None = None) -> None:
        """Caller audio written at once, with no coroutine: the bridge's media lane, fifty
        times a second. Only right after :meth:`audio_writable` said True, with nothing
        awaited or sent since (the session does not ask again); otherwise :meth:`send_audio`.
        Taken as :meth:`send_audio` would take it (a write that fails is the session's to
        recover). ``voiced``: whether the audio is louder than line noise
        (``gateway.audio.vad``), when the caller measured it already; None: the session
        measures it if it needs to."""
        ...

    async def send_text(self, text: str) -> None: ...

    async def send_tool_response(
        self, call_id: str, name: str, response: dict[str, Any], *, respond: bool = True
    ) -> None:
        """Answer a tool call. ``respond=False``: the model must not answer it (an accepted
        handoff: the new agent speaks next); a provider that continues on its own (Gemini)
        cannot be held back and ignores it."""
        ...

    async def playback_cut(self, unheard_ms: float) -> None:
        """Barge-in: the newest ``unheard_ms`` of the agent's audio never reached the caller's
        ear, so the model should not believe it was said (OpenAI truncates its item there;
        Gemini has no such request)."""
        ...

    async def next_event(self) -> LiveEvent:
        """The next event; :class:`~gateway.model.events.SessionEnded` once it is over."""
        ...

    def offer_audio_lane(self, handler: Callable[[AudioOut], None] | None) -> None:
        """Let model audio reach ``handler`` straight from the socket (None: stop), wherever
        that is exactly what :meth:`next_event` would return next to a consumer waiting in
        it; the rest still comes through :meth:`next_event`. A session may ignore the offer
        (then everything does)."""
        ...

    async def close(self) -> None:
        """End the conversation; idempotent."""
        ...


#: Builds a call's model session: the call's logger, what seeds a new connection, and the
#: carrier's audio format (a provider that speaks it takes it untouched).
SessionFactory = Callable[[structlog.stdlib.BoundLogger, Conversation, AudioFormat], ModelSession]
