"""The gateway's own record of a call: who said what, under which agent, and the handoffs.

Gemini keeps the conversation inside its session, but a resumption handle only restores the
state *as of when it was issued*, and a rejected handle restores nothing. The gateway therefore
keeps its own transcript, assembled from Gemini's streaming transcription pieces, so that it
can tell a new agent what was said after the handle, or re-seed a fresh session entirely.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Speaker = Literal["caller", "agent", "handoff", "note"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One finished utterance or call event; ``at`` is seconds since the call started."""

    at: float
    speaker: Speaker
    agent_id: str
    text: str
    interrupted: bool = False


@dataclass(slots=True)
class Transcript:
    """Entries in call order, plus where the newest resumption handle was issued."""

    started: float = field(default_factory=time.monotonic)
    entries: list[Entry] = field(default_factory=list)
    #: ``len(entries)`` when the newest handle arrived: entries from here on are unknown to a
    #: session resumed with that handle.
    handle_index: int = 0
    _caller: list[str] = field(default_factory=list)
    _agent: list[str] = field(default_factory=list)
    _agent_id: str = ""

    def caller_piece(self, text: str, agent_id: str) -> Entry | None:
        """Add transcription of the caller; returns the agent's utterance if this ends it."""
        finished = self.finish_agent() if self._agent else None
        self._caller.append(text)
        self._agent_id = agent_id
        return finished

    def agent_piece(self, text: str, agent_id: str) -> Entry | None:
        """Add transcription of the agent; returns the caller's utterance if this ends it."""
        finished = self.finish_caller() if self._caller else None
        self._agent.append(text)
        self._agent_id = agent_id
        return finished

    def finish_caller(self) -> Entry | None:
        text = _join(self._caller)
        self._caller.clear()
        return self._add("caller", self._agent_id, text) if text else None

    def finish_agent(self, *, interrupted: bool = False) -> Entry | None:
        text = _join(self._agent)
        self._agent.clear()
        return self._add("agent", self._agent_id, text, interrupted) if text else None

    def finish_all(self) -> list[Entry]:
        """Close any open utterances, caller first (the caller spoke before the agent replied)."""
        return [e for e in (self.finish_caller(), self.finish_agent()) if e is not None]

    def note(self, speaker: Speaker, agent_id: str, text: str) -> Entry:
        return self._add(speaker, agent_id, text)

    def mark_handle(self) -> None:
        """A new handle arrived: everything recorded so far is inside the resumable state."""
        self.handle_index = len(self.entries)

    def since_handle(self) -> list[Entry]:
        return self.entries[self.handle_index :]

    def _add(self, speaker: Speaker, agent_id: str, text: str, interrupted: bool = False) -> Entry:
        entry = Entry(
            round(time.monotonic() - self.started, 3), speaker, agent_id, text, interrupted
        )
        self.entries.append(entry)
        return entry


def _join(pieces: list[str]) -> str:
    # Gemini's transcription pieces carry their own spacing ("Hel", "lo wor", "ld").
    return " ".join("".join(pieces).split())
