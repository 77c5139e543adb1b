"""``RecordStore``: the call records of every call this process runs, in SQLite or PostgreSQL.

SQLAlchemy Core on a synchronous engine, every database call made on one dedicated worker
thread: the event loop (and the audio it carries) never waits for the disk or the network,
and this process's writes happen one at a time, in the order they were asked for.

A record is written three times: when the call starts (:meth:`RecordStore.call_started`), at
each checkpoint while it runs (:meth:`RecordStore.checkpoint`: the document so far, and a
fresh heartbeat) and when it ends (:meth:`RecordStore.call_finished`). Until it ends, the
stored record already says ``end_reason: "interrupted"`` with no end time: if the process is
killed mid-call, that is exactly what is left.

**Interrupted records** are the open records (``ended_at`` NULL) of a process that is gone.
They are closed as having ended at their last heartbeat (``duration_s`` to match, end reason
``interrupted``), with an outbox row when delivery is on:

* at :meth:`RecordStore.start`, on SQLite, every open record of another owner: one gateway
  uses a SQLite file, so any open record found at start-up is a previous run's. The workers of
  one ``gateway serve`` share the file, so a worker's store is told when that gateway started
  (``siblings_since``) and closes only the open records from before it: a restarted worker
  leaves its live siblings' calls alone, and a killed worker's records are closed by the
  sweep (below) once their heartbeat is stale;
* at :meth:`RecordStore.start` on PostgreSQL, and at every :meth:`RecordStore.sweep` (the
  gateway's minute timer) on either database, the open records of other owners whose
  heartbeat is older than ``stale_after_s``: replicas share a PostgreSQL database, and a
  live replica's records have a recent heartbeat. ``stale_after_s`` must exceed the
  checkpoint interval plus any clock difference between the replicas.

Closing is a compare-and-set on the heartbeat read, so a replica that checkpoints at that
moment keeps its call open, and two replicas sweeping together close (and deliver) each
record once.

**The outbox** (``deliveries``) is read by ``gateway.records.delivery``. A deliverer claims due
rows with :meth:`RecordStore.due_deliveries`, which pushes each row's ``next_attempt_at``
a lease ahead with a compare-and-set UPDATE: a second deliverer (another replica) skips it,
and if the claimer dies the row is due again when the lease runs out (a receiver may thus
see a delivery twice, always with the same delivery id and body).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, ParamSpec, TypeVar

import structlog
from sqlalchemy import Connection, Engine, and_, delete, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.records import documents
from gateway.records.cursor import decode_cursor, encode_cursor
from gateway.records.database import database_url, for_writing, open_engine
from gateway.records.migrate import upgrade_to_head
from gateway.records.schema import call_agents, calls, deliveries
from gateway.records.times import as_utc, utc_now

__all__ = ["CLAIM_LEASE", "MAX_PAGE", "Delivery", "RecordStore"]

#: How long a claimed delivery is left to its claimer before it is due again: well over one
#: POST's timeout, so a live deliverer always finishes first.
CLAIM_LEASE: Final = timedelta(seconds=60)
#: The most records one search returns.
MAX_PAGE: Final = 500

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed outbox row: POST ``body`` as is (every attempt sends the same bytes)."""

    delivery_id: str
    call_id: str
    body: bytes
    #: Attempts made before this one.
    attempts: int
    created_at: datetime


def default_owner() -> str:
    """This process's name on its records: host and pid for people, a random part so a
    restarted process with a reused pid is still someone else."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RecordStore:
    """Call records and their outbox; every method is a coroutine run on the store's thread.

    The constructor only checks the URL (``ValueError`` for one the gateway cannot use);
    :meth:`start` connects and migrates, :meth:`aclose` lets go.
    """

    def __init__(
        self,
        url: str,
        *,
        owner: str | None = None,
        stale_after_s: float = 90.0,
        clock: Callable[[], datetime] = utc_now,
        siblings_since: datetime | None = None,
    ) -> None:
        self._url = database_url(url)
        self.owner = owner or default_owner()
        self._stale_after = timedelta(seconds=stale_after_s)
        self._clock = clock
        #: When the gateway whose other workers share this database started (None: alone).
        self._siblings_since = siblings_since
        self._engine: Engine | None = None
        #: The same engine for transactions that write (SQLite: they begin IMMEDIATE).
        self._writer: Engine | None = None
        #: Whether records this store closes as interrupted get an outbox row (start's flag).
        self._deliver_interrupted = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="call-records")
        self._closed = False
        self._log = structlog.get_logger("gateway.records")

    def now(self) -> datetime:
        """The store's clock, in UTC: the deliverer schedules retries on it too."""
        return as_utc(self._clock())

    @property
    def _is_sqlite(self) -> bool:
        return self._url.get_backend_name() == "sqlite"

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _connect(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("RecordStore.start() has not run")
        return self._engine

    def _write(self) -> AbstractContextManager[Connection]:
        """A transaction that writes (see ``gateway.records.database``)."""
        if self._writer is None:
            raise RuntimeError("RecordStore.start() has not run")
        return self._writer.begin()

    # --- life cycle -----------------------------------------------------------------------

    async def start(self, *, deliver: bool, close_interrupted: bool = True) -> list[str]:
        """Migrate the database to the newest schema, then close interrupted records (see the
        module docstring); returns their call ids. ``deliver``: closed records, now and at
        each sweep, also get an outbox row. ``close_interrupted=False`` (a reader such as
        ``gateway calls``, which may run beside a live gateway) leaves open records alone."""
        self._deliver_interrupted = deliver
        return await self._run(self._start, close_interrupted)

    def _start(self, close_interrupted: bool) -> list[str]:
        if self._engine is None:
            self._engine = open_engine(self._url)
            self._writer = for_writing(self._engine)
        upgrade_to_head(self._engine)
        if not close_interrupted:
            return []
        if not self._is_sqlite:
            closed = self._close_interrupted(before=self.now() - self._stale_after)
        else:
            closed = self._close_interrupted(before=self._siblings_since)
        if closed:
            self._log.warning("records.interrupted_closed", count=len(closed), at="start")
        return closed

    async def sweep(self) -> list[str]:
        """Close other owners' stale open records (see the module docstring)."""
        closed = await self._run(self._close_interrupted, before=self.now() - self._stale_after)
        if closed:
            self._log.warning("records.interrupted_closed", count=len(closed), at="sweep")
        return closed

    async def aclose(self) -> None:
        """Close the database connections and end the worker thread (after its queue). Once
        closed the store stays closed; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._engine is not None:
            await self._run(self._engine.dispose)
        self._executor.shutdown(wait=False)

    # --- records ------------------------------------------------------------------------

    async def call_started(self, doc: dict[str, Any]) -> None:
        """Insert the open record of a call that has just started. A call id already
        recorded is left as it is (logged): a record is never overwritten by another call's."""
        await self._run(self._call_started, doc)

    def _call_started(self, doc: dict[str, Any]) -> None:
        values = documents.columns(documents.opened(doc))
        try:
            with self._write() as connection:
                connection.execute(
                    insert(calls).values(**values, owner=self.owner, heartbeat_at=self.now())
                )
                _set_agents(connection, values["call_id"], doc, replace=False)
        except IntegrityError:
            self._log.warning("records.duplicate_call", call_id=values["call_id"])

    async def checkpoint(self, docs: list[dict[str, Any]]) -> None:
        """Store the open calls' documents so far and a fresh heartbeat, in one transaction.
        A record already closed (finished, or closed as interrupted by another replica that
        took this process for dead) stays closed."""
        if docs:
            await self._run(self._checkpoint, docs)

    def _checkpoint(self, docs: list[dict[str, Any]]) -> None:
        now = self.now()
        with self._write() as connection:
            for doc in docs:
                values = documents.columns(documents.opened(doc))
                call_id = values.pop("call_id")
                done = connection.execute(
                    update(calls)
                    .where(calls.c.call_id == call_id, calls.c.ended_at.is_(None))
                    .values(**values, heartbeat_at=now)
                )
                if done.rowcount:
                    _set_agents(connection, call_id, doc, replace=True)

    async def call_finished(self, doc: dict[str, Any], *, deliver: bool) -> str | None:
        """Complete the call's record (inserting it whole if its start was never stored) and,
        with ``deliver``, add its outbox row in the same transaction; returns that row's
        delivery id. A record already closed is left alone: None."""
        return await self._run(self._call_finished, doc, deliver)

    def _call_finished(self, doc: dict[str, Any], deliver: bool) -> str | None:
        values = documents.columns(doc)
        call_id = values["call_id"]
        with self._write() as connection:
            found = connection.execute(
                select(calls.c.ended_at).where(calls.c.call_id == call_id)
            ).first()
            if found is not None and found.ended_at is not None:
                return None
            changes = {**values, "heartbeat_at": self.now()}
            if found is None:
                connection.execute(insert(calls).values(**changes, owner=self.owner))
            else:
                done = connection.execute(
                    update(calls)
                    .where(calls.c.call_id == call_id, calls.c.ended_at.is_(None))
                    .values(**changes)
                )
                if not done.rowcount:  # closed by another replica in between
                    return None
            _set_agents(connection, call_id, doc, replace=True)
            return self._add_delivery(connection, call_id, values["document"]) if deliver else None

    def _close_interrupted(self, *, before: datetime | None) -> list[str]:
        """Close other owners' open records whose heartbeat is older than ``before`` (None:
        all of them)."""
        query = select(calls.c.call_id, calls.c.heartbeat_at, calls.c.document).where(
            calls.c.ended_at.is_(None), calls.c.owner != self.owner
        )
        if before is not None:
            query = query.where(calls.c.heartbeat_at < as_utc(before))
        closed: list[str] = []
        with self._write() as connection:
            for row in connection.execute(query.order_by(calls.c.call_id)).all():
                doc = documents.interrupted(documents.loads(row.document), row.heartbeat_at)
                body = documents.dumps(doc)
                done = connection.execute(
                    update(calls)
                    .where(
                        calls.c.call_id == row.call_id,
                        calls.c.ended_at.is_(None),
                        calls.c.heartbeat_at == row.heartbeat_at,
                    )
                    .values(
                        ended_at=row.heartbeat_at,
                        end_reason=documents.INTERRUPTED,
                        document=body,
                    )
                )
                if done.rowcount:
                    closed.append(row.call_id)
                    if self._deliver_interrupted:
                        self._add_delivery(connection, row.call_id, body)
        return closed

    def _add_delivery(self, connection: Connection, call_id: str, body: str) -> str:
        delivery_id = uuid.uuid4().hex
        now = self.now()
        connection.execute(
            insert(deliveries).values(
                delivery_id=delivery_id,
                call_id=call_id,
                body=body,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
        )
        return delivery_id

    # --- reading ------------------------------------------------------------------------

    async def get(self, call_id: str) -> dict[str, Any] | None:
        return await self._run(self._get, call_id)

    def _get(self, call_id: str) -> dict[str, Any] | None:
        with self._connect().connect() as connection:
            text = connection.execute(
                select(calls.c.document).where(calls.c.call_id == call_id)
            ).scalar()
        return None if text is None else documents.loads(text)

    async def search(
        self,
        *,
        from_: str | None = None,
        to: str | None = None,
        since: datetime | None = None,
        agent: str | None = None,
        end_reason: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records matching every filter given, newest first, ``limit`` (1 to 500) at a time.

        ``from_``, ``to`` and ``end_reason`` match exactly, ``since`` is a start time on or
        after it, ``agent`` is an agent that took part. Returns the page and the cursor of the
        next (None after the last); a malformed ``cursor`` raises ``ValueError``.
        """
        after = decode_cursor(cursor) if cursor is not None else None
        limit = max(1, min(MAX_PAGE, limit))
        query = select(calls.c.started_at, calls.c.call_id, calls.c.document)
        if from_ is not None:
            query = query.where(calls.c.from_number == from_)
        if to is not None:
            query = query.where(calls.c.to_number == to)
        if end_reason is not None:
            query = query.where(calls.c.end_reason == end_reason)
        if since is not None:
            query = query.where(calls.c.started_at >= as_utc(since))
        if agent is not None:
            query = query.where(
                exists().where(
                    call_agents.c.call_id == calls.c.call_id, call_agents.c.agent_id == agent
                )
            )
        if after is not None:
            started, call_id = after
            query = query.where(
                or_(
                    calls.c.started_at < started,
                    and_(calls.c.started_at == started, calls.c.call_id < call_id),
                )
            )
        query = query.order_by(calls.c.started_at.desc(), calls.c.call_id.desc())
        rows = await self._run(self._fetch, query.limit(limit + 1))
        page = rows[:limit]
        following = encode_cursor(page[-1][0], page[-1][1]) if len(rows) > limit else None
        return [documents.loads(row[2]) for row in page], following

    def _fetch(self, query: Any) -> list[tuple[Any, ...]]:
        with self._connect().connect() as connection:
            return [tuple(row) for row in connection.execute(query).all()]

    # --- the outbox -----------------------------------------------------------------------

    async def due_deliveries(self, limit: int) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries, oldest due first, for ``CLAIM_LEASE``."""
        return await self._run(self._due_deliveries, limit)

    def _due_deliveries(self, limit: int) -> list[Delivery]:
        now = self.now()
        d = deliveries.c
        pending = and_(d.delivered_at.is_(None), d.abandoned_at.is_(None))
        claimed: list[Delivery] = []
        with self._write() as connection:
            rows = connection.execute(
                select(
                    d.delivery_id, d.call_id, d.body, d.attempts, d.created_at, d.next_attempt_at
                )
                .where(pending, d.next_attempt_at <= now)
                .order_by(d.next_attempt_at, d.delivery_id)
                .limit(limit)
            ).all()
            for row in rows:
                done = connection.execute(
                    update(deliveries)
                    .where(
                        d.delivery_id == row.delivery_id,
                        d.next_attempt_at == row.next_attempt_at,
                        pending,
                    )
                    .values(next_attempt_at=now + CLAIM_LEASE)
                )
                if done.rowcount:
                    claimed.append(
                        Delivery(
                            delivery_id=row.delivery_id,
                            call_id=row.call_id,
                            body=row.body.encode(),
                            attempts=row.attempts,
                            created_at=row.created_at,
                        )
                    )
        return claimed

    async def delivered(self, delivery_id: str) -> None:
        await self._run(self._settle, delivery_id, delivered_at=self.now(), last_error=None)

    async def retry_later(self, delivery_id: str, at: datetime, error: str) -> None:
        await self._run(self._settle, delivery_id, next_attempt_at=as_utc(at), last_error=error)

    async def abandon(self, delivery_id: str, error: str) -> None:
        await self._run(self._settle, delivery_id, abandoned_at=self.now(), last_error=error)

    def _settle(self, delivery_id: str, **changes: Any) -> None:
        """Record one attempt's outcome (``changes``) on a pending row."""
        d = deliveries.c
        with self._write() as connection:
            connection.execute(
                update(deliveries)
                .where(
                    d.delivery_id == delivery_id, d.delivered_at.is_(None), d.abandoned_at.is_(None)
                )
                .values(attempts=d.attempts + 1, **changes)
            )


def _set_agents(
    connection: Connection, call_id: str, doc: dict[str, Any], *, replace: bool
) -> None:
    """The call's ``call_agents`` rows: the document's agents."""
    if replace:
        connection.execute(delete(call_agents).where(call_agents.c.call_id == call_id))
    ids = documents.agents(doc)
    if ids:
        connection.execute(insert(call_agents), [{"call_id": call_id, "agent_id": a} for a in ids])
