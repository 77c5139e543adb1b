"""Opening the records database from DATABASE_URL: which URLs are accepted, and how each kind
of database is set up.

* ``sqlite:///calls.db`` (relative to the working directory) or ``sqlite:////abs/path.db``.
  WAL journal, so readers (the admin API, an operator's ``sqlite3``) never block the writer;
  ``synchronous=NORMAL``, which in WAL mode survives a killed process (only a power cut can
  lose the newest transaction); a busy timeout, so a reader holding a lock delays a write
  instead of failing it; foreign keys enforced (SQLite leaves them off by default). SQLite's
  Python driver starts transactions only before data changes, so the schema's migrations
  would run unprotected: here every transaction begins explicitly, DDL included. A
  transaction that writes (an engine from :func:`for_writing`) begins ``IMMEDIATE``, holding
  the write lock from its first statement: the workers of one ``gateway serve`` write to one
  file, and a transaction that read first and then found another process had written since
  would fail at once (``SQLITE_BUSY_SNAPSHOT``: the busy timeout cannot help), where waiting
  for the lock at ``BEGIN`` lets the busy timeout order the writers.
* ``postgresql://``, ``postgres://`` or ``postgresql+psycopg://``: always psycopg 3, the one
  PostgreSQL driver the gateway depends on. Connections are checked before use, so a database
  restart costs one reconnection, not one failed write per pooled connection.

Statement parameters are hidden from SQLAlchemy's error messages: they are call records
(numbers, transcripts), and an error message ends up in a log.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: Milliseconds a write waits for another connection's lock before SQLite gives up.
SQLITE_BUSY_TIMEOUT_MS = 5000
#: The execution option :func:`for_writing` sets (any other database ignores it).
_WRITES = "callbridge_writes"

_POSTGRES_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg")


def database_url(text: str) -> URL:
    """DATABASE_URL as SQLAlchemy's URL with its driver chosen; ValueError when the database
    is not one the gateway supports. The message never repeats the URL (it holds a password)."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError("DATABASE_URL is not a database URL") from None
    if url.drivername == "sqlite":
        if not url.database or url.database == ":memory:":
            # Each pooled connection would get a database of its own, and every record would
            # be lost at exit: not what anyone asking for records means.
            raise ValueError("DATABASE_URL: sqlite needs a file (sqlite:///calls.db)")
        return url
    if url.drivername in _POSTGRES_DRIVERS:
        return url.set(drivername="postgresql+psycopg")
    raise ValueError(
        f"DATABASE_URL: unsupported database {url.drivername!r} (sqlite or postgresql)"
    )


def open_engine(url: URL) -> Engine:
    """A (not yet connected) engine for ``url``, set up as the module docstring says."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_connected)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, hide_parameters=True, pool_pre_ping=True)


def for_writing(engine: Engine) -> Engine:
    """``engine`` for transactions that write: on SQLite they take the write lock as they
    begin (see the module docstring); the connections are the same pool's."""
    return engine.execution_options(**{_WRITES: True})


def _sqlite_connected(dbapi_connection: Any, _record: object) -> None:
    # Autocommit at the driver level: SQLAlchemy's "begin" event then issues BEGIN itself, for
    # every transaction (the driver's own would skip DDL and reads).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enter_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _enter_wal(cursor: Any) -> None:
    """``journal_mode=WAL``, waiting as the busy timeout would. Switching a file that is still
    in rollback mode (a new one) needs its exclusive lock, and SQLite does not wait for that:
    while another connection writes (another worker migrating the same new file), the switch
    fails at once with "database is locked", busy timeout or not. Once the file is in WAL mode
    (it stays so), the switch asks for no lock. Runs on the records' thread, never the loop."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _sqlite_begin(connection: Any) -> None:
    writes = connection.get_execution_options().get(_WRITES, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
