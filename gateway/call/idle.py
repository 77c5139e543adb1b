"""A call where nobody speaks: check on the caller, then say goodbye and end it.

A caller who put the phone down without hanging up, or who went quiet, keeps a line and a model
session busy. After ``IDLE_PROMPT_S`` with neither side speaking the agent is asked to check on
the caller ("Are you still there?"); if the caller still says nothing for ``IDLE_HANGUP_S``
after that check-in has *finished playing*, the agent is asked to say goodbye and the call ends
as with ``end_call``. Any caller speech starts the watch over.

"Nobody speaks" needs both sides: caller voice activity and the agent's audio, including audio
that has been sent but is still playing (the bridge reports that as ``busy``). Pure: the bridge
reports what happens and asks :meth:`IdleWatch.check` on its own clock.
"""

from __future__ import annotations

from enum import Enum

#: What the agent is told when the line has gone quiet (the caller does not hear it).
CHECK_IN_PROMPT = (
    "[The caller has not said anything for a while. Check briefly whether they are still "
    "there and whether you can help with anything else.]"
)
#: What the agent is told when the caller did not answer the check-in.
GOODBYE_PROMPT = (
    "[The caller has still not answered. Say a short, polite goodbye now; the call will end "
    "after it.]"
)


class IdleAction(Enum):
    CHECK_IN = "check_in"
    GOODBYE = "goodbye"


class IdleWatch:
    """One call's quiet-line watch."""

    __slots__ = ("_checked_in", "_done", "_hangup_s", "_prompt_s", "_quiet_since")

    def __init__(self, prompt_s: float, hangup_s: float, *, now: float) -> None:
        self._prompt_s = prompt_s
        self._hangup_s = hangup_s
        self._quiet_since = now
        self._checked_in = False
        self._done = False

    def caller_spoke(self, now: float) -> None:
        """The caller said something: the line is alive, the watch starts over."""
        self._quiet_since = now
        self._checked_in = False

    def check(self, now: float, *, agent_busy: bool) -> IdleAction | None:
        """What to do now, if anything. While the agent speaks (or its audio still plays) the
        quiet period does not run: it starts when the caller has heard the last word."""
        if self._done:
            return None
        if agent_busy:
            self._quiet_since = now
            return None
        quiet = now - self._quiet_since
        if not self._checked_in and quiet >= self._prompt_s:
            self._checked_in = True
            self._quiet_since = now  # a check-in the model does not voice still starts the wait
            return IdleAction.CHECK_IN
        if self._checked_in and quiet >= self._hangup_s:
            self._done = True
            return IdleAction.GOODBYE
        return None
