"""The call-record tables as SQLAlchemy Core objects: what the store's queries are written
against. The migrations in ``migrations/versions`` create the same tables (a test compares the
migrated database with this module, so one cannot change without the other).

* ``calls``: one row per call. The columns are what is searched and what start-up and the
  sweep need (owner, heartbeat); ``document`` is the whole record as JSON, returned as is.
* ``call_agents``: which agents took part in a call, one row each, so "calls agent X took part
  in" is an indexed lookup on either database (no JSON operators, no ``LIKE`` on a list).
* ``deliveries``: the outbox. A row is written in the same transaction that finishes the call,
  with the exact bytes to POST, so a record is never finished without its delivery, nor
  delivered twice with different bodies.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.types import DateTime, TypeDecorator

from gateway.records.times import as_utc


class UtcDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; on SQLite, which has no zones, a UTC time without one.
    Either way Python sees an aware UTC datetime, so values compare and subtract the same on
    both databases."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("call_id", Text, primary_key=True),
    Column("carrier", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("from_number", Text),
    Column("to_number", Text),
    Column("started_at", UtcDateTime, nullable=False),
    #: NULL while the call is open (or its process died before closing it).
    Column("ended_at", UtcDateTime),
    Column("end_reason", Text, nullable=False),
    #: The process running the call (``RecordStore.owner``).
    Column("owner", Text, nullable=False),
    #: When the owner last wrote the open record: where an interrupted call is taken to end.
    Column("heartbeat_at", UtcDateTime, nullable=False),
    Column("document", Text, nullable=False),
)
# Newest first, and the keyset paging that order needs.
Index("ix_calls_started", calls.c.started_at, calls.c.call_id)
Index("ix_calls_from", calls.c.from_number, calls.c.started_at)
Index("ix_calls_to", calls.c.to_number, calls.c.started_at)
# Start-up and the sweep look only at open records: a handful among millions.
Index(
    "ix_calls_open",
    calls.c.heartbeat_at,
    postgresql_where=calls.c.ended_at.is_(None),
    sqlite_where=calls.c.ended_at.is_(None),
)

call_agents = Table(
    "call_agents",
    metadata,
    Column("call_id", Text, ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True),
    Column("agent_id", Text, primary_key=True),
)
Index("ix_call_agents_agent", call_agents.c.agent_id, call_agents.c.call_id)

deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", Text, primary_key=True),
    Column("call_id", Text, ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False),
    #: The JSON to POST, fixed when the row is written: every attempt sends the same bytes.
    Column("body", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    #: When the row is next due; pushed forward while a deliverer holds it (its lease).
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    Column("abandoned_at", UtcDateTime),
    Column("last_error", Text),
)
_pending = deliveries.c.delivered_at.is_(None) & deliveries.c.abandoned_at.is_(None)
Index(
    "ix_deliveries_due",
    deliveries.c.next_attempt_at,
    postgresql_where=_pending,
    sqlite_where=_pending,
)
Index("ix_deliveries_call", deliveries.c.call_id)
