"""What the call tells a new model connection, as plain turns each provider translates.

A new connection has to be told something: the greeting on a fresh call, the new agent's
takeover note on a handoff, the history when a session that remembers nothing replaces one that
did. The call builds these from its transcript (:mod:`gateway.call.conversation`) as
:class:`Turn` values; Gemini sends them as ``Content`` turns, OpenAI as conversation items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["user", "model"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One side's words: ``user`` (the caller, or the gateway's notes) or ``model``."""

    role: Role
    text: str


def user_turn(text: str) -> Turn:
    return Turn("user", text)


#: Builds a handoff's opening turns; the flag says whether the session kept the conversation
#: (resumed on Gemini, updated in place on OpenAI) or starts fresh and must be told the history.
TakeoverFactory = Callable[[bool], Sequence[Turn]]


class Conversation(Protocol):
    """What the call knows about its conversation: the one way a new connection is seeded."""

    def greeting(self) -> Sequence[Turn]:
        """The first agent's opening on a fresh call (empty: wait for the caller)."""
        ...

    def reseed(self, *, until_handle: bool) -> tuple[Sequence[Turn], bool]:
        """The history, for a fresh session that remembers nothing: up to the newest handle
        (as context only: what followed is replayed as it was sent) or all of it, and then
        "carry on"; and whether the model should answer now."""
        ...

    def recap(self, *, cut_off: bool) -> tuple[Sequence[Turn], bool]:
        """What was said since the newest handle, for a resumed session that lost it; and
        whether the model should answer now (it was cut off, or the caller is owed a reply)."""
        ...
