"""A call whose agents run on more than one provider: one session at a time, switched on handoff.

An agents file may put one agent on OpenAI and the rest on Gemini (``provider:`` per agent).
Neither service can take over the other's session, so a handoff across providers opens a fresh
session at the new provider, told the history and the new agent's note (``takeover(False)``),
and closes the old one. Its audio formats may differ: the bridge rebuilds its transcoders when
``audio`` changes, right as :meth:`ProviderSwitch.hand_off` returns, so the switch makes the new
session current only then, and the old one's close runs behind. Within one provider the
session's own handoff applies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from gateway.agents import Provider
from gateway.aio import cancel_and_wait
from gateway.model.events import AudioOut, LiveEvent
from gateway.model.persona import AgentPersona
from gateway.model.session import AudioLaneState, ModelAudio, ModelSession
from gateway.model.turns import TakeoverFactory


class ProviderSwitch:
    """A :class:`ModelSession` over one session per provider, made when first needed."""

    def __init__(self, sessions: Mapping[Provider, Callable[[], ModelSession]]) -> None:
        self._make = sessions
        self._provider: Provider | None = None
        self._session: ModelSession | None = None
        #: Caller audio the sessions already closed lost.
        self._dropped_before = 0.0
        #: The consumer's audio lane, offered to each session as it becomes the current one.
        self._lane: Callable[[AudioOut], None] | None = None
        #: Closes of the sessions handed off from, still under way (owned: awaited by close).
        self._retiring: list[asyncio.Task[None]] = []

    @property
    def current(self) -> ModelSession:
        assert self._session is not None, "the call has not opened its session"
        return self._session

    @property
    def audio(self) -> ModelAudio:
        return self.current.audio

    @property
    def audio_dropped_ms(self) -> float:
        now = self._session.audio_dropped_ms if self._session is not None else 0.0
        return self._dropped_before + now

    async def open(
        self, persona: AgentPersona, takeover: TakeoverFactory | None = None
    ) -> tuple[bool, float]:
        self._provider = _provider(persona)
        self._session = self._make[self._provider]()
        self._session.offer_audio_lane(self._lane)
        return await self._session.open(persona, takeover)

    async def hand_off(
        self, persona: AgentPersona, takeover: TakeoverFactory
    ) -> tuple[bool, float]:
        provider = _provider(persona)
        if provider == self._provider:
            return await self.current.hand_off(persona, takeover)
        new = self._make[provider]()
        try:
            kept, elapsed = await new.open(persona, takeover)
        except BaseException:
            await new.close()
            raise
        # From here to the return nothing awaits: the bridge's transcoders are still the old
        # provider's, and a caller frame sent to the new session meanwhile (G.711 read as
        # PCM16, or PCM16 as G.711: a roar) or the new session's first audio played through
        # the old downlink would be heard. So the old session closes behind, in a task.
        self._retire(self.current)
        self._provider, self._session = provider, new
        new.offer_audio_lane(self._lane)
        return kept, elapsed

    def _retire(self, old: ModelSession) -> None:
        """Detach ``old`` and close it in the background (its close handshake can take a
        round trip or more); :meth:`close` awaits it."""
        self._dropped_before += old.audio_dropped_ms
        old.offer_audio_lane(None)
        self._retiring.append(asyncio.create_task(old.close(), name="model-session-retire"))

    async def send_audio(self, audio: bytes) -> None:
        await self.current.send_audio(audio)

    def audio_writable(self) -> bool:
        session = self._session
        return session is not None and session.audio_writable()

    def audio_lane(self, settle: Callable[[], None]) -> AudioLaneState | None:
        session = self._session
        return None if session is None else session.audio_lane(settle)

    def send_audio_now(self, audio: bytes, voiced: bool | None = None) -> None:
        self.current.send_audio_now(audio, voiced)

    async def send_text(self, text: str) -> None:
        await self.current.send_text(text)

    async def send_tool_response(
        self, call_id: str, name: str, response: dict[str, Any], *, respond: bool = True
    ) -> None:
        await self.current.send_tool_response(call_id, name, response, respond=respond)

    async def playback_cut(self, unheard_ms: float) -> None:
        await self.current.playback_cut(unheard_ms)

    async def next_event(self) -> LiveEvent:
        return await self.current.next_event()

    def offer_audio_lane(self, handler: Callable[[AudioOut], None] | None) -> None:
        self._lane = handler
        if self._session is not None:
            self._session.offer_audio_lane(handler)

    async def close(self) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        finally:
            retiring, self._retiring = self._retiring, []
            await _finish(retiring)


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """Let the retiring sessions' closes end (each is bounded by its client's close timeout);
    cancelled meanwhile, cancel them. An error in one surfaces once all are done."""
    if not tasks:
        return
    try:
        await asyncio.wait(tasks)
    finally:
        await cancel_and_wait(*tasks)
    for task in tasks:
        task.result()


def _provider(persona: AgentPersona) -> Provider:
    """The agent's provider (the agents file fills it in for every agent)."""
    provider = persona.agent.provider
    assert provider is not None, "agents come from an AgentGraph, which sets their provider"
    return provider


def _fits_the_seam(session: ProviderSwitch) -> ModelSession:
    """Never called: mypy checks here that the switch still fits the seam."""
    return session
