"""``gateway.records.store``: call records in a real SQLite file and a real PostgreSQL database.

Most tests run on both (``database_url``); the PostgreSQL-only ones are about what only several
replicas sharing one database can do. Time is a settable clock, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, make_url, select

from gateway.records import store as store_module
from gateway.records.cursor import encode_cursor
from gateway.records.database import database_url as parse_database_url
from gateway.records.database import open_engine
from gateway.records.migrate import alembic_config
from gateway.records.schema import deliveries, metadata
from gateway.records.store import RecordStore
from tests.databases import Clock, finished, record


@pytest.fixture
async def open_store(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """``await open_store(owner=..., clock=..., deliver=...)``: a started store on the test's
    database (closed after the test), and the call ids its start closed as interrupted."""
    opened: list[RecordStore] = []

    async def make(*, deliver: bool = False, **kwargs: Any) -> tuple[RecordStore, list[str]]:
        store = RecordStore(database_url, **kwargs)
        opened.append(store)
        return store, await store.start(deliver=deliver)

    yield make
    for store in opened:
        await store.aclose()


def _sync_url(url: str) -> str:
    return parse_database_url(url).render_as_string(hide_password=False)


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _count_deliveries(url: str) -> int:
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(deliveries)).scalar_one()
            )
    finally:
        engine.dispose()


# --- the schema ---------------------------------------------------------------------------------


async def test_start_migrates_an_empty_database_and_a_migrated_one_is_left_as_it_is(
    database_url: str,
    open_store: Callable[..., Any],
) -> None:
    first, closed = await open_store()
    assert closed == []
    await first.call_finished(
        finished(record("CA1"), ended_at="2026-12-06T09:01:00.000Z", duration_s=60.0, reason="x"),
        deliver=False,
    )
    await first.aclose()

    again, closed = await open_store()  # the schema is current: nothing to do, nothing lost
    assert closed == []
    assert (await again.get("CA1") or {})["end_reason"] == "x"

    engine = create_engine(_sync_url(database_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert context.get_current_revision() == _head() == "0001"
            # The migrations build exactly the tables the store's queries are written against.
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


async def test_two_replicas_starting_together_on_an_empty_postgres_both_come_up(
    postgres_database: str,
) -> None:
    """Without the migration lock, the second would fail to create tables the first is
    creating (PostgreSQL's catalog is unique per table name)."""
    stores = [RecordStore(postgres_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.start(deliver=False) for s in stores))
        assert results == [[], [], [], []]
    finally:
        for store in stores:
            await store.aclose()


def test_database_urls_pick_psycopg_and_refuse_what_cannot_keep_records() -> None:
    for given in ("postgres://u:pw@db/calls", "postgresql://u:pw@db/calls"):
        assert parse_database_url(given).drivername == "postgresql+psycopg"
    assert parse_database_url("sqlite:///calls.db").database == "calls.db"
    for bad in ("mysql://u:hunter2@db/calls", "sqlite://", "sqlite:///:memory:", "nonsense"):
        with pytest.raises(ValueError, match="DATABASE_URL") as raised:
            RecordStore(bad)
        assert "hunter2" not in str(raised.value)


async def test_a_relative_sqlite_path_is_in_the_working_directory_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = RecordStore("sqlite:///records.db")
    try:
        await store.start(deliver=False)
        await store.call_started(record("CA1"))
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "records.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT call_id FROM calls").fetchall() == [("CA1",)]


# --- one call's record ----------------------------------------------------------------------------


async def test_a_started_record_reads_interrupted_until_finished_then_as_finished(
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    doc = record("CA1", agents=["triage", "billing"], transcript=[{"role": "caller", "text": "hé"}])
    await store.call_started(doc)
    assert await store.get("CA1") == {**doc, "end_reason": "interrupted"}

    so_far = {**doc, "transcript": [*doc["transcript"], {"role": "agent", "text": "Hello"}]}
    await store.checkpoint([so_far])
    assert await store.get("CA1") == {**so_far, "end_reason": "interrupted"}

    done = finished(
        so_far, ended_at="2026-12-06T09:02:03.456Z", duration_s=123.456, reason="hangup"
    )
    assert await store.call_finished(done, deliver=False) is None
    assert await store.get("CA1") == done
    assert await store.get("CA-unknown") is None


async def test_a_second_finish_changes_nothing_and_delivers_nothing(
    database_url: str,
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    doc = record("CA1")
    await store.call_started(doc)
    done = finished(doc, ended_at="2026-12-06T09:01:00.000Z", duration_s=60.0, reason="hangup")
    assert await store.call_finished(done, deliver=True) is not None
    again = finished(doc, ended_at="2026-12-06T09:05:00.000Z", duration_s=300.0, reason="other")
    assert await store.call_finished(again, deliver=True) is None
    assert await store.get("CA1") == done
    assert _count_deliveries(database_url) == 1


async def test_a_finish_without_a_stored_start_keeps_the_whole_record(
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    done = finished(record("CA9"), ended_at="2026-12-06T09:00:05.000Z", duration_s=5.0, reason="x")
    assert await store.call_finished(done, deliver=True) is not None
    assert await store.get("CA9") == done


async def test_a_call_id_started_twice_keeps_the_first_record(
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    await store.call_started(record("CA1", from_="+15550001"))
    await store.call_started(record("CA1", from_="+15559999"))
    assert (await store.get("CA1") or {})["from"] == "+15550001"


# --- interrupted records --------------------------------------------------------------------------


async def test_a_killed_process_s_open_record_is_closed_at_its_last_heartbeat_by_the_next_start(
    open_store: Callable[..., Any],
) -> None:
    clock = Clock(datetime(2026, 12, 6, 9, 0, 0, tzinfo=UTC))
    killed, _ = await open_store(owner="killed", clock=clock)
    doc = record("CA1", started_at="2026-12-06T09:00:00.000Z")
    await killed.call_started(doc)
    clock.advance(42.5)
    said = {**doc, "transcript": [{"role": "caller", "text": "hello"}]}
    await killed.checkpoint([said])
    # The process dies here: it never finishes the call. A restart comes up much later.

    clock.advance(3600)
    _restarted, closed = await open_store(owner="restarted", clock=clock)
    assert closed == ["CA1"]
    assert await _restarted.get("CA1") == {
        **said,
        "ended_at": "2026-12-06T09:00:42.500Z",
        "duration_s": 42.5,
        "end_reason": "interrupted",
    }
    hits, _ = await _restarted.search(end_reason="interrupted")
    assert [h["call_id"] for h in hits] == ["CA1"]


async def test_at_start_sqlite_closes_every_open_record_postgres_only_stale_ones(
    database_url: str,
    open_store: Callable[..., Any],
) -> None:
    """One process per SQLite file: an open record there is always a previous run's. Replicas
    share PostgreSQL: a record with a fresh heartbeat belongs to a live one."""
    clock = Clock()
    other, _ = await open_store(owner="other", clock=clock)
    await other.call_started(record("CA-fresh"))
    clock.advance(10)

    _new, closed = await open_store(owner="new", clock=clock, stale_after_s=90.0)
    sqlite = database_url.startswith("sqlite")
    assert closed == (["CA-fresh"] if sqlite else [])
    expected = "2026-12-06T09:00:00.000Z" if sqlite else None
    assert (await _new.get("CA-fresh") or {})["ended_at"] == expected


async def test_the_sweep_closes_only_other_owners_records_older_than_stale_after(
    open_store: Callable[..., Any],
) -> None:
    clock = Clock()
    mine, _ = await open_store(owner="mine", clock=clock, stale_after_s=90.0)
    theirs, _ = await open_store(owner="theirs", clock=clock, stale_after_s=90.0)
    await mine.call_started(record("CA-mine"))
    await theirs.call_started(record("CA-theirs"))

    clock.advance(89)
    assert await mine.sweep() == []
    clock.advance(2)
    assert await mine.sweep() == ["CA-theirs"]
    assert await mine.sweep() == []  # closed once
    assert await theirs.sweep() == ["CA-mine"]  # and the other way round
    clock.advance(3600)
    assert await mine.sweep() == []


async def test_a_heartbeat_keeps_a_record_open_and_a_closed_one_stays_closed(
    database_url: str,
    open_store: Callable[..., Any],
) -> None:
    clock = Clock()
    slow, _ = await open_store(owner="slow", clock=clock)
    sweeper, _ = await open_store(owner="sweeper", clock=clock, deliver=True)
    doc = record("CA1")
    await slow.call_started(doc)
    clock.advance(60)
    await slow.checkpoint([doc])
    clock.advance(60)  # 120 s since the start, 60 s since the heartbeat
    assert await sweeper.sweep() == []

    clock.advance(31)
    assert await sweeper.sweep() == ["CA1"]
    # The "dead" process was only stalled: what it writes now cannot reopen or redo the record.
    await slow.checkpoint([{**doc, "transcript": [{"role": "agent", "text": "late"}]}])
    late = finished(doc, ended_at="2026-12-06T09:03:00.000Z", duration_s=180.0, reason="hangup")
    assert await slow.call_finished(late, deliver=True) is None
    stored = await sweeper.get("CA1") or {}
    assert (stored["end_reason"], stored["ended_at"], stored["transcript"]) == (
        "interrupted",
        "2026-12-06T09:01:00.000Z",
        [],
    )
    assert _count_deliveries(database_url) == 1  # the sweeper's, for the interrupted record


@pytest.mark.parametrize("deliver", [True, False])
async def test_records_closed_at_start_are_delivered_only_when_asked(
    open_store: Callable[..., Any], deliver: bool
) -> None:
    clock = Clock()
    killed, _ = await open_store(owner="killed", clock=clock)
    await killed.call_started(record("CA1"))
    clock.advance(1000)
    restarted, closed = await open_store(owner="restarted", clock=clock, deliver=deliver)
    assert closed == ["CA1"]
    due = await restarted.due_deliveries(10)
    assert [d.call_id for d in due] == (["CA1"] if deliver else [])
    if deliver:
        assert json.loads(due[0].body) == await restarted.get("CA1")


# --- search ---------------------------------------------------------------------------------------


async def _six_calls(store: RecordStore) -> None:
    """Six finished calls, 09:00 to 09:05 (CA3 and CA4 start at the same instant)."""
    calls = [
        ("CA0", "09:00", "+15550001", "+15550100", ["triage"], "hangup"),
        ("CA1", "09:01", "+15550001", "+15550100", ["triage", "billing"], "hangup"),
        ("CA2", "09:02", "+15550002", "+15550100", ["triage"], "transferred"),
        ("CA3", "09:03", "+15550002", "+15550200", ["triage", "billing"], "hangup"),
        ("CA4", "09:03", "+15550003", "+15550200", ["sales"], "max_duration"),
        ("CA5", "09:05", "+15550003", "+15550100", ["triage"], "hangup"),
    ]
    for call_id, hhmm, from_, to, agents, reason in calls:
        doc = record(
            call_id,
            started_at=f"2026-12-06T{hhmm}:00.000Z",
            from_=from_,
            to=to,
            agents=agents,
        )
        await store.call_finished(
            finished(doc, ended_at=f"2026-12-06T{hhmm}:30.000Z", duration_s=30.0, reason=reason),
            deliver=False,
        )


def _ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["call_id"] for d in docs]


async def test_search_filters_each_field_and_lists_newest_first(
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    await _six_calls(store)

    async def ids(**filters: Any) -> list[str]:
        found, following = await store.search(**filters)
        assert following is None
        return _ids(found)

    assert await ids() == ["CA5", "CA4", "CA3", "CA2", "CA1", "CA0"]
    assert await ids(from_="+15550002") == ["CA3", "CA2"]
    assert await ids(to="+15550200") == ["CA4", "CA3"]
    assert await ids(agent="billing") == ["CA3", "CA1"]
    assert await ids(agent="bill") == []  # an agent id, not a substring
    assert await ids(end_reason="hangup") == ["CA5", "CA3", "CA1", "CA0"]
    assert await ids(since=datetime(2026, 12, 6, 9, 3, tzinfo=UTC)) == ["CA5", "CA4", "CA3"]
    # The same instant written in another zone.
    paris = timezone(timedelta(hours=1))
    assert await ids(since=datetime(2026, 12, 6, 10, 3, tzinfo=paris)) == ["CA5", "CA4", "CA3"]
    assert await ids(from_="+15550001", agent="billing", end_reason="hangup") == ["CA1"]
    assert await ids(from_="+15550001", to="+15550200") == []


async def test_search_pages_through_every_record_once_with_its_cursors(
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    await _six_calls(store)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        found, cursor = await store.search(limit=2, cursor=cursor)
        pages.append(_ids(found))
        if cursor is None:
            break
        assert cursor.isascii() and all(c.isalnum() or c in "-_" for c in cursor)
    # CA4 and CA3 start at the same instant: the page boundary between them is on the call id.
    assert pages == [["CA5", "CA4"], ["CA3", "CA2"], ["CA1", "CA0"]]

    found, cursor = await store.search(limit=2, agent="triage")
    assert (_ids(found), cursor is not None) == (["CA5", "CA3"], True)
    found, cursor = await store.search(limit=2, agent="triage", cursor=cursor)
    assert (_ids(found), cursor is not None) == (["CA2", "CA1"], True)
    found, cursor = await store.search(limit=2, agent="triage", cursor=cursor)
    assert (_ids(found), cursor) == (["CA0"], None)


async def test_search_clamps_its_limit_and_refuses_a_malformed_cursor(
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    await _six_calls(store)
    found, cursor = await store.search(limit=0)
    assert (len(found), cursor is not None) == (1, True)
    found, _ = await store.search(limit=10_000)
    assert len(found) == 6
    for bad in ("", "!!!", "bm90IGpzb24", "WzFd", "WyJ4IiwieSJd", encode_cursor_of(42)):
        with pytest.raises(ValueError, match="cursor"):
            await store.search(cursor=bad)
    good = encode_cursor(datetime(2026, 12, 6, 9, 3, tzinfo=UTC), "CA4")
    found, _ = await store.search(cursor=good)
    assert _ids(found) == ["CA3", "CA2", "CA1", "CA0"]


def encode_cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# --- the outbox -----------------------------------------------------------------------------------


async def test_an_outbox_row_comes_only_with_deliver_and_holds_the_stored_record(
    database_url: str,
    open_store: Callable[..., Any],
) -> None:
    store, _ = await open_store()
    for call_id, deliver in (("CA-quiet", False), ("CA-sent", True)):
        doc = record(call_id)
        await store.call_started(doc)
        done = finished(doc, ended_at="2026-12-06T09:00:09.000Z", duration_s=9.0, reason="hangup")
        delivery_id = await store.call_finished(done, deliver=deliver)
        assert (delivery_id is not None) == deliver
    (due,) = await store.due_deliveries(10)
    assert (due.call_id, due.attempts) == ("CA-sent", 0)
    assert len(due.delivery_id) == 32 and int(due.delivery_id, 16) >= 0
    assert json.loads(due.body) == await store.get("CA-sent")
    assert _count_deliveries(database_url) == 1


async def test_a_finish_whose_outbox_row_fails_is_not_finished_either(
    database_url: str,
    open_store: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _ = await open_store()
    doc = record("CA1")
    await store.call_started(doc)

    def broken(*_args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_add_delivery", broken)
    done = finished(doc, ended_at="2026-12-06T09:00:09.000Z", duration_s=9.0, reason="hangup")
    with pytest.raises(RuntimeError, match="disk full"):
        await store.call_finished(done, deliver=True)
    assert (await store.get("CA1") or {})["ended_at"] is None  # rolled back with it
    assert _count_deliveries(database_url) == 0

    monkeypatch.undo()
    assert await store.call_finished(done, deliver=True) is not None
    assert await store.get("CA1") == done


async def test_due_deliveries_are_claimed_for_a_lease_and_settled_once(
    open_store: Callable[..., Any],
) -> None:
    clock = Clock()
    store, _ = await open_store(clock=clock)
    ids = {}
    for call_id in ("CA1", "CA2", "CA3"):
        done = finished(
            record(call_id), ended_at="2026-12-06T09:00:01.000Z", duration_s=1, reason="x"
        )
        ids[call_id] = await store.call_finished(done, deliver=True)
        clock.advance(1)
    claimed = await store.due_deliveries(10)
    assert [d.delivery_id for d in claimed] == [ids["CA1"], ids["CA2"], ids["CA3"]]
    assert await store.due_deliveries(10) == []  # claimed: nobody else gets them now

    await store.delivered(ids["CA1"])
    await store.retry_later(ids["CA2"], clock.now + timedelta(seconds=5), "HTTP 503")
    await store.abandon(ids["CA3"], "HTTP 410")
    clock.advance(4)
    assert await store.due_deliveries(10) == []
    clock.advance(1)
    (again,) = await store.due_deliveries(10)
    assert (again.delivery_id, again.attempts) == (ids["CA2"], 1)

    # A claimer that dies leaves the row to the next one once the lease is over.
    clock.advance(store_module.CLAIM_LEASE.total_seconds() - 1)
    assert await store.due_deliveries(10) == []
    clock.advance(1)
    assert [d.delivery_id for d in await store.due_deliveries(10)] == [ids["CA2"]]
    clock.advance(3600)
    await store.delivered(ids["CA2"])
    assert await store.due_deliveries(10) == []


async def test_two_replicas_never_claim_the_same_delivery(
    postgres_database: str,
) -> None:
    writer = RecordStore(postgres_database, owner="writer")
    replicas = [RecordStore(postgres_database, owner=f"replica-{i}") for i in range(2)]
    try:
        await writer.start(deliver=False)
        expected = set()
        for n in range(60):
            done = finished(
                record(f"CA{n}"), ended_at="2026-12-06T09:00:01.000Z", duration_s=1, reason="x"
            )
            expected.add(await writer.call_finished(done, deliver=True))
        for replica in replicas:
            await replica.start(deliver=False)

        claims: list[list[str]] = [[], []]

        async def drain(n: int) -> None:
            # A replica may find nothing in a round the other is claiming: go on until all are.
            for _ in range(200):
                if sum(map(len, claims)) >= len(expected):
                    return
                claims[n] += [d.delivery_id for d in await replicas[n].due_deliveries(3)]

        await asyncio.gather(drain(0), drain(1))
        assert set(claims[0]).isdisjoint(claims[1])
        assert sorted(claims[0] + claims[1]) == sorted(expected)
    finally:
        for store in (writer, *replicas):
            await store.aclose()


# --- the workers of one gateway on one SQLite file ---------------------------------------------


async def test_a_worker_s_start_closes_a_previous_run_s_records_and_not_its_siblings(
    tmp_path: Path,
) -> None:
    """``gateway serve --workers N`` on SQLite: a (re)starting worker closes what was open
    before the gateway started, never a live sibling's call; a killed sibling's call is the
    sweep's once its heartbeat is stale."""
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    clock = Clock(datetime(2026, 12, 6, 9, 0, tzinfo=UTC))
    stores: list[RecordStore] = []

    async def worker(owner: str, since: datetime) -> tuple[RecordStore, list[str]]:
        store = RecordStore(url, owner=owner, clock=clock, siblings_since=since)
        stores.append(store)
        return store, await store.start(deliver=False)

    try:
        previous, _ = await worker("previous-run", clock.now)
        await previous.call_started(record("CA-before"))
        clock.advance(60)
        gateway_started = clock.now
        sibling, closed = await worker("sibling", gateway_started)
        assert closed == ["CA-before"]
        await sibling.call_started(record("CA-live"))
        clock.advance(30)
        _restarted, closed = await worker("restarted", gateway_started)
        assert closed == []  # the sibling's call goes on
        assert (await sibling.get("CA-live") or {})["ended_at"] is None
        clock.advance(61)  # the sibling was killed: no checkpoint for 91 s
        assert await _restarted.sweep() == ["CA-live"]
    finally:
        for store in stores:
            await store.aclose()


def test_a_new_sqlite_file_being_written_is_switched_to_wal_once_the_writer_is_done(
    tmp_path: Path,
) -> None:
    """Another worker writing a new file (still in rollback mode) makes SQLite refuse the
    switch to WAL at once, busy timeout or not: the connection waits and retries instead."""
    path = tmp_path / "calls.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    done = threading.Timer(0.3, writer.execute, ("COMMIT",))
    done.start()
    engine = open_engine(make_url(f"sqlite:///{path}"))
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
    finally:
        done.join()
        engine.dispose()
        writer.close()


async def test_workers_writing_one_sqlite_file_at_once_wait_their_turn(tmp_path: Path) -> None:
    """Several processes' transactions that read and then write (finishing a record, claiming
    deliveries) would fail at once on SQLite if another wrote in between; they begin holding the
    write lock instead, and the busy timeout orders them. Stores with their own connections
    and threads stand in for the worker processes; they start (and migrate) together too."""
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    stores = [RecordStore(url, owner=f"worker-{n}") for n in range(3)]
    try:
        await asyncio.gather(*(store.start(deliver=True) for store in stores))

        async def calls(n: int, store: RecordStore) -> list[str]:
            claimed = []
            for i in range(15):
                doc = record(f"CA{n}-{i}")
                await store.call_started(doc)
                done = finished(doc, ended_at="2026-12-06T09:00:01.000Z", duration_s=1, reason="x")
                await store.call_finished(done, deliver=True)
                claimed += [d.delivery_id for d in await store.due_deliveries(2)]
            return claimed

        claims = await asyncio.gather(*(calls(n, s) for n, s in enumerate(stores)))
        found, _ = await stores[0].search(limit=100)
    finally:
        for store in stores:
            await store.aclose()
    assert len(found) == 45 and all(doc["end_reason"] == "x" for doc in found)
    every = [c for claimed in claims for c in claimed]
    assert len(every) == len(set(every)) == 45
