"""What the deployment and the carrier decide for a call, handed to the bridge as callables.

Admission (token, one stream per call, capacity), hanging up and fallbacks all need the
server's state or a carrier's REST API; the bridge only knows *when* to ask.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.agents import Fallback
from gateway.carriers.base import StreamStarted


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a stream's ``start`` does not make it a call."""

    #: The ``gateway_calls_total`` outcome: ``unauthorized`` or ``rejected_capacity``.
    outcome: str
    #: For the log.
    reason: str
    #: The ``gateway_errors_total`` kind an unauthorized stream counts as.
    error_kind: str = "stream_auth"


class CallActionError(Exception):
    """A carrier could not end or transfer the call (``end_call``, ``transfer``).

    The message is a short reason in plain words, fit for the model to tell the caller
    ("the transfer could not be placed"): never a key, a URL or a carrier's error body.
    """


def _admit_all(_: StreamStarted) -> Refusal | None:
    return None


@dataclass(frozen=True, slots=True)
class CallHooks:
    """Decisions that belong to the deployment and the carrier, not to the bridge."""

    #: Decides, before the model is dialled, whether the started stream becomes a call: None to
    #: bridge it (the hook has then counted it as a call), else why not.
    admit: Callable[[StreamStarted], Refusal | None] = _admit_all
    #: Ends the phone call when the gateway ends it and closing the stream alone would not.
    hang_up: Callable[[str], Awaitable[None]] | None = None
    #: Gives the caller a fallback (the active agent's when the model is gone for good, the busy
    #: message when there is no room) through the carrier's API; True if that also took care
    #: of ending the call (so ``hang_up`` must not cut it short), False if it could not.
    fallback: Callable[[StreamStarted, Fallback], Awaitable[bool]] | None = None
    #: Ends the phone call after the agent said goodbye (``end_call``), before the stream
    #: closes, so nothing placed after ``</Connect>`` plays. Raises :class:`CallActionError`.
    end_call: Callable[[StreamStarted], Awaitable[None]] | None = None
    #: Connects the caller to a number or SIP URI and leaves the call (``transfer_call``).
    #: Raises :class:`CallActionError` with a reason the agent can tell the caller.
    transfer: Callable[[StreamStarted, str], Awaitable[None]] | None = None
