"""Databases for the call-record tests: a fresh SQLite file, or a fresh PostgreSQL database.

PostgreSQL comes from ``CALLBRIDGE_TEST_POSTGRES_URL`` (a server the tests may create and drop
databases on; ``.ci/run`` starts one). Without it the PostgreSQL cases are skipped, unless
``CALLBRIDGE_REQUIRE_POSTGRES=1`` says this run must cover PostgreSQL: then they fail, so CI
cannot go green by quietly testing SQLite alone.

``conftest.py`` loads this module as a plugin, so the fixtures are there for every test
(``database_url`` runs a test on each database); only the record tests use them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "CALLBRIDGE_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "CALLBRIDGE_REQUIRE_POSTGRES"


def _libpq_url(url: str) -> str:
    """``url`` as psycopg itself takes it (no SQLAlchemy ``+driver``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test PostgreSQL server's URL, checked to answer."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_URL_ENV} is not set")
        pytest.skip(f"no PostgreSQL: set {POSTGRES_URL_ENV}")
    try:
        psycopg.connect(_libpq_url(url), connect_timeout=10).close()
    except psycopg.Error as exc:
        pytest.fail(f"{POSTGRES_URL_ENV} does not answer: {type(exc).__name__}")
    return url


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A new, empty database on the test server for one test (dropped after it)."""
    name = f"cb_test_{uuid.uuid4().hex[:16]}"
    admin = _libpq_url(postgres_server)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a new SQLite file and on a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


class Clock:
    """A settable clock for ``RecordStore(clock=...)``: heartbeats, staleness and retries are
    decided on it, so tests move time instead of waiting for it."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 12, 6, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def record(
    call_id: str,
    *,
    started_at: str = "2026-12-06T09:00:00.000Z",
    from_: str = "+15550100",
    to: str = "+15550199",
    agents: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An open call's record document, as the bridge builds it."""
    return {
        "call_id": call_id,
        "carrier": "twilio",
        "direction": "inbound",
        "from": from_,
        "to": to,
        "started_at": started_at,
        "ended_at": None,
        "duration_s": None,
        "end_reason": "",
        "agents": agents if agents is not None else ["triage"],
        "handoffs": [],
        "transcript": [],
        **extra,
    }


def finished(
    doc: dict[str, Any], *, ended_at: str, duration_s: float, reason: str
) -> dict[str, Any]:
    """``doc`` as the bridge finishes it."""
    return {**doc, "ended_at": ended_at, "duration_s": duration_s, "end_reason": reason}
