"""Logical Live sessions and their resumption handles: the rules for which connection may join
which session, and what state a resume restores. No I/O; "is that other connection still open"
is asked through a callback.

* a setup without ``sessionResumption`` starts a session that never gets handles;
* ``sessionResumption: {}`` starts a resumable session;
* ``sessionResumption: {handle}`` re-attaches to the session that issued the handle. An unknown
  (or forgotten) handle is refused with 1008; a model different from the session's with 1007;
  a session still attached to an open connection with 1011 (the real service refuses a resume
  while the old socket is open) unless that check is turned off.

Handles look like ``sim-{session}-{n}``; every handle issued stays valid until forgotten.

**A handle restores the session as of that handle**, as the real service does: each handle maps
to a :class:`~callsim.live.records.HandlePoint` (the history length, the per-session
counters such as ``caller_utterances``, and the last client message whose effect is included).
Resuming with it rolls the session back to that point: history entries recorded after it are
flagged ``lost`` (kept for tests, unknown to the model), the counters are reset, and the
connection records ``resumed_from`` and ``rolled_back``. Whatever the client sent after the
handle (caller audio, text, tool responses) and whatever the model said after it is gone; a
client that wants it kept must buffer and replay it. Resuming an older handle restores exactly
that older state (entries lost since may come back). Script steps consumed on lost turns stay
consumed: the script is the test's scenario, not the model's memory. Whatever an old connection
still adds after another connection resumed the session (a turn finishing as its socket closes,
or anything at all with the open-connection check turned off) is recorded as lost at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from callsim.live import protocol as proto
from callsim.live.records import ConnectionRecord, HandlePoint, SessionRecord


class SessionRegistry:
    """Every logical session of a simulator, and the handles that lead to them."""

    def __init__(self) -> None:
        self.sessions: dict[int, SessionRecord] = {}
        self._handles: dict[str, int] = {}
        self._ids = itertools.count(1)

    def attach(
        self,
        record: ConnectionRecord,
        setup: proto.SetupInfo,
        *,
        is_open: Callable[[int], bool],
        reject_while_open: bool,
    ) -> SessionRecord:
        """Find or create the session for a new connection, or raise :class:`ProtocolError`.

        ``is_open(index)`` tells whether the connection with that index is still open. A resume
        rolls the session back to the handle's point (see the module docstring).
        """
        if setup.handle is None:
            session = SessionRecord(
                id=next(self._ids),
                model=setup.model,
                resumable=setup.resumption_requested,
            )
            self.sessions[session.id] = session
        else:
            session_id = self._handles.get(setup.handle)
            if session_id is None:
                raise proto.ProtocolError(
                    "unknown session resumption handle", proto.CLOSE_POLICY_VIOLATION
                )
            session = self.sessions[session_id]
            if not proto.same_model(session.model, setup.model):
                raise proto.ProtocolError("the model cannot change on session resumption")
            if reject_while_open and any(
                index != record.index and is_open(index) for index in session.connection_indexes
            ):
                raise proto.ProtocolError(
                    "session is still attached to an open connection",
                    proto.CLOSE_INTERNAL_ERROR,
                )
            record.resumed = True
            record.resumed_from = setup.handle
            record.rolled_back = session.restore(session.points[setup.handle])
        session.connection_indexes.append(record.index)
        record.session_id = session.id
        return session

    def issue_handle(
        self, session: SessionRecord, *, connection_index: int, last_consumed_index: int
    ) -> HandlePoint:
        """A new handle for ``session`` (after a completed or interrupted turn) that restores
        the session as it is now, minus the effects of the client messages on
        ``connection_index`` after ``last_consumed_index``."""
        handle = f"sim-{session.id}-{len(session.handles) + 1}"
        point = session.snapshot(handle, connection_index, last_consumed_index)
        session.handles.append(handle)
        session.points[handle] = point
        self._handles[handle] = session.id
        return point

    def forget_handles(self) -> None:
        """Invalidate every handle issued so far."""
        self._handles.clear()
