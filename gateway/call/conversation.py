"""What a new model connection is told, from the active agent and the call's transcript.

The model session dials new connections on its own (goAway, a dropped socket) and on a
handoff; each time it asks the call what to open with. The answers are plain
:class:`~gateway.model.turns.Turn` values, built from the gateway's transcript by
:mod:`gateway.call.handoff`, that each provider sends its own way.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.agents import Agent
from gateway.call.emitter import CallEvents
from gateway.call.handoff import (
    context_turns,
    greeting_turns,
    history_turns,
    recap_turns,
    takeover_prompt,
)
from gateway.call.transcript import Transcript
from gateway.model.persona import AgentPersona
from gateway.model.turns import TakeoverFactory, Turn, user_turn

#: Told to a fresh session that remembers nothing, after the history.
_CARRY_ON = (
    "[The connection was briefly interrupted.] Continue the conversation naturally "
    "from where it stands, without mentioning the interruption."
)


class CallConversation:
    """The call's side of :class:`~gateway.model.turns.Conversation`, plus the handoff's
    opening. Utterances it closes are reported as transcript events."""

    __slots__ = ("_events", "_persona", "_transcript")

    def __init__(
        self, transcript: Transcript, events: CallEvents, persona: Callable[[], AgentPersona]
    ) -> None:
        self._transcript = transcript
        self._events = events
        #: The active agent with the call's variables, asked each time: a handoff changes it.
        self._persona = persona

    def greeting(self) -> list[Turn]:
        return greeting_turns(self._persona().greeting())

    def reseed(self, *, until_handle: bool) -> tuple[list[Turn], bool]:
        """After a fault with no usable handle: the transcript, then "carry on"."""
        self._close_utterances(cut_off=False)
        transcript = self._transcript
        if until_handle:
            entries = transcript.entries[: transcript.handle_index]
            if not entries:
                return self.greeting(), True
            return context_turns(entries), False
        if not transcript.entries:
            return self.greeting(), True
        return history_turns(transcript.entries, _CARRY_ON), True

    def recap(self, *, cut_off: bool) -> tuple[list[Turn], bool]:
        self._close_utterances(cut_off=cut_off)
        return recap_turns(self._transcript.since_handle(), cut_off=cut_off)

    def takeover(
        self, previous: Agent, agent: Agent, *, reason: str, summary: str
    ) -> TakeoverFactory:
        """Note a handoff from ``previous`` to ``agent``; returns the new agent's opening.

        A resumed session is told only the takeover prompt (it remembers the call up to its
        handle; the prompt quotes what followed); a fresh one gets the whole history first.
        """
        transcript = self._transcript
        for entry in transcript.finish_all():
            self._events.record(entry)
        since = transcript.since_handle()
        note = f"{previous.id} -> {agent.id}: {reason}"
        self._events.record(transcript.note("handoff", agent.id, note))
        prompt = takeover_prompt(agent, reason=reason, summary=summary, since=since)

        def opening(resumed: bool) -> list[Turn]:
            if resumed:
                return [user_turn(prompt)]
            return history_turns(transcript.entries, prompt)

        return opening

    def _close_utterances(self, *, cut_off: bool) -> None:
        """The connection died mid-utterance: what was transcribed so far is all there is."""
        self._events.record(self._transcript.finish_caller())
        self._events.record(self._transcript.finish_agent(interrupted=cut_off))
