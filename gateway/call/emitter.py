"""A call's events: logged for the operator, handed to the observers, personal data kept apart.

Every call event is one structured log line and one observer callback with the same name and
fields. Some fields are personal data (what the caller said, what the model wrote about the
caller): the observers always get them, the log only with ``LOG_TRANSCRIPTS=true``. Keeping
that rule in one place is why every event of a call goes through :meth:`CallEvents.emit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gateway.call.transcript import Entry

#: Receives every call event (also logged); the demo prints them, tests assert on them.
CallObserver = Callable[[str, Mapping[str, Any]], None]


class CallEvents:
    """Emits one call's events, naming the call and its active agent in each."""

    __slots__ = ("_log_transcripts", "agent_id", "call_id", "log", "observers")

    def __init__(
        self,
        log: structlog.stdlib.BoundLogger,
        observers: tuple[CallObserver, ...],
        *,
        agent_id: str,
        log_transcripts: bool,
    ) -> None:
        #: The call's logger; rebound with the call and agent as they become known.
        self.log = log
        self.observers = observers
        #: What the observers' payload names: empty until the stream became a call.
        self.call_id = ""
        self.agent_id = agent_id
        self._log_transcripts = log_transcripts

    def bind(self, **fields: Any) -> None:
        """Add context to every later log line of the call."""
        self.log = self.log.bind(**fields)

    def call_began(self, call_id: str, stream_id: str) -> None:
        """The stream became a call: name it in every later line and payload."""
        self.call_id = call_id
        self.bind(call_id=call_id, stream_id=stream_id, agent=self.agent_id)

    def agent_changed(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.bind(agent=agent_id)

    def emit(self, name: str, _private: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Log a call event and tell the observers; ``_private`` fields are personal data."""
        private = _private or {}
        if self._log_transcripts:
            self.log.info(name, **fields, **private)
        else:
            self.log.info(name, **fields)
        if self.observers:
            payload = {"call_id": self.call_id, "agent": self.agent_id, **fields, **private}
            for observer in self.observers:
                observer(name, payload)

    def record(self, entry: Entry | None) -> None:
        """Report a finished transcript entry (its text is personal data)."""
        if entry is not None:
            self.emit(
                "transcript",
                speaker=entry.speaker,
                agent_id=entry.agent_id,
                at=entry.at,
                interrupted=entry.interrupted,
                chars=len(entry.text),
                _private={"text": entry.text},
            )
