"""``gateway.records.delivery``: the outbox POSTed to a real HTTP receiver on a loopback port.

The receiver runs in its own thread (``ThreadedServer``), answering what each test scripts and
keeping every request it was sent; the gateway side is a real ``RecordStore`` on a SQLite file
(and, where restarts and replicas matter, on PostgreSQL too). Retries are 50 ms apart, so the
tests wait for what the receiver saw (``until``), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.aio import cancel_and_wait
from gateway.metrics import Metrics
from gateway.records.database import database_url as parse_database_url
from gateway.records.delivery import RecordDelivery, next_retry_delay, signature
from gateway.records.schema import deliveries
from gateway.records.store import RecordStore
from tests.conftest import StructuredLogs
from tests.databases import Clock, finished, record
from tests.servers import ThreadedServer, until

SECRET = "whsec-test-0123456789"
RETRY_S = 0.05


@dataclass(frozen=True)
class Seen:
    delivery_id: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A records receiver: answers each POST with the next scripted status (then 200)."""

    def __init__(self, statuses: list[int] | None = None, *, hold_until: int = 0) -> None:
        self.script = list(statuses or [])
        self.seen: list[Seen] = []
        self.elsewhere = 0
        #: Hold each answer until this many requests are in flight at once (0: answer now).
        self.hold_until = hold_until
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = ThreadedServer(
            Starlette(
                routes=[
                    Route("/records", self._post, methods=["POST"]),
                    Route("/elsewhere", self._elsewhere, methods=["POST"]),
                ]
            )
        )
        self.url = f"{self.server.url}/records"
        self._enough: asyncio.Event | None = None

    def ids(self) -> list[str]:
        return [s.delivery_id for s in self.seen]

    async def _post(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.seen.append(
                Seen(request.headers["x-callbridge-delivery"], dict(request.headers), body)
            )
            status = self.script.pop(0) if self.script else 200
        if self.hold_until:
            await self._hold()
        if status in (301, 302, 307, 308):
            return Response(status_code=status, headers={"Location": "/elsewhere"})
        return Response(status_code=status)

    async def _hold(self) -> None:
        if self._enough is None:
            self._enough = asyncio.Event()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.hold_until:
            self._enough.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._enough.wait()
        self.in_flight -= 1
        if self.in_flight == 0:
            self._enough = None

    async def _elsewhere(self, _request: Request) -> Response:
        self.elsewhere += 1
        return Response(status_code=200)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'calls.db'}"


@contextlib.asynccontextmanager
async def running(delivery: RecordDelivery) -> AsyncIterator[RecordDelivery]:
    task = asyncio.create_task(delivery.run())
    try:
        yield delivery
    finally:
        await cancel_and_wait(task)
        if task.done() and not task.cancelled():
            task.result()  # a deliverer that crashed fails the test


@contextlib.asynccontextmanager
async def started(url: str, **kwargs: Any) -> AsyncIterator[RecordStore]:
    """A started store (delivering interrupted records too), closed at the end."""
    store = RecordStore(url, **kwargs)
    try:
        await store.start(deliver=True)
        yield store
    finally:
        await store.aclose()


def deliverer(store: RecordStore, url: str, metrics: Metrics, **kwargs: Any) -> RecordDelivery:
    kwargs.setdefault("retry_s", RETRY_S)
    kwargs.setdefault("poll_s", 0.05)
    return RecordDelivery(store, url, SECRET, metrics=metrics, **kwargs)


async def finish(store: RecordStore, call_id: str, **extra: Any) -> str:
    doc = finished(
        record(call_id, **extra),
        ended_at="2026-12-06T09:01:00.000Z",
        duration_s=60.0,
        reason="hangup",
    )
    delivery_id = await store.call_finished(doc, deliver=True)
    assert delivery_id is not None
    return delivery_id


def count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_call_record_deliveries_total", {"result": result}
    )
    return value or 0.0


def rows(url: str) -> dict[str, Any]:
    """The outbox rows by delivery id, read straight from the database."""
    engine = create_engine(parse_database_url(url).render_as_string(hide_password=False))
    try:
        with engine.connect() as connection:
            return {r.delivery_id: r for r in connection.execute(select(deliveries)).all()}
    finally:
        engine.dispose()


# --- the pure parts -------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_the_body_in_hex() -> None:
    # RFC 4231-style known answer (the classic "quick brown fox" HMAC-SHA256 vector).
    assert signature(b"key", b"The quick brown fox jumps over the lazy dog") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )


def test_retries_start_at_the_first_delay_double_and_stop_growing_at_ten_minutes() -> None:
    assert [next_retry_delay(2.0, n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert next_retry_delay(2.0, 9) == 512.0
    assert next_retry_delay(2.0, 10) == 600.0
    assert next_retry_delay(0.05, 10_000) == 600.0


# --- against a receiver ---------------------------------------------------------------------------


async def test_a_delivery_is_signed_with_the_secret_and_carries_the_stored_record(
    sqlite_url: str, receiver: Receiver, structured_logs: StructuredLogs
) -> None:
    metrics = Metrics()
    async with started(sqlite_url) as store:
        secret_words = "my card number is 4111"
        delivery_id = await finish(
            store, "CA1", transcript=[{"role": "caller", "text": secret_words}]
        )
        async with running(deliverer(store, receiver.url, metrics)):
            await until(lambda: count(metrics, "delivered") == 1)
        (seen,) = receiver.seen
        expected = hmac.new(SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(seen.headers["x-callbridge-signature"], f"sha256={expected}")
        assert seen.headers["x-callbridge-delivery"] == delivery_id
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["user-agent"] == "callbridge-gateway"
        assert json.loads(seen.body) == await store.get("CA1")
    assert rows(sqlite_url)[delivery_id].delivered_at is not None
    # The log names the delivery, never the record nor the secret.
    delivered = structured_logs.events("records.delivered")
    assert [(e["delivery_id"], e["call_id"], e["status"], e["attempt"]) for e in delivered] == [
        (delivery_id, "CA1", 200, 1)
    ]
    assert secret_words not in structured_logs.text
    assert SECRET not in structured_logs.text


async def test_wake_delivers_a_just_finished_record_now_not_at_the_next_poll(
    sqlite_url: str, receiver: Receiver
) -> None:
    metrics = Metrics()
    async with (
        started(sqlite_url) as store,
        running(deliverer(store, receiver.url, metrics, poll_s=3600.0)) as delivery,
    ):
        # Let the deliverer ask for due rows first: the store's one thread answers in order,
        # so it finds none and sleeps for its hour-long poll.
        await asyncio.sleep(0)
        delivery_id = await finish(store, "CA1")
        delivery.wake()
        await until(lambda: count(metrics, "delivered") == 1)
    assert receiver.ids() == [delivery_id]


async def test_two_503s_then_200_is_three_identical_posts_and_then_no_more(
    sqlite_url: str, receiver: Receiver
) -> None:
    receiver.script = [503, 503, 200]
    metrics = Metrics()
    async with started(sqlite_url) as store:
        delivery_id = await finish(store, "CA1")
        async with running(deliverer(store, receiver.url, metrics)):
            await until(lambda: count(metrics, "delivered") == 1)
        assert receiver.ids() == [delivery_id] * 3
        assert len({s.body for s in receiver.seen}) == 1
        assert len({s.headers["x-callbridge-signature"] for s in receiver.seen}) == 1
        assert (count(metrics, "retried"), count(metrics, "abandoned")) == (2, 0)
        row = rows(sqlite_url)[delivery_id]
        assert (row.attempts, row.last_error, row.delivered_at is not None) == (3, None, True)
        # Settled for good: even a deliverer looking far in the future finds nothing due.
        later = RecordStore(sqlite_url, clock=lambda: row.created_at.replace(year=2099))
        try:
            await later.start(deliver=False)
            assert await later.due_deliveries(10) == []
        finally:
            await later.aclose()


async def test_a_redirect_is_a_failure_and_is_not_followed(
    sqlite_url: str, receiver: Receiver
) -> None:
    receiver.script = [307, 200]
    metrics = Metrics()
    async with started(sqlite_url) as store:
        delivery_id = await finish(store, "CA1")
        async with running(deliverer(store, receiver.url, metrics)):
            await until(lambda: count(metrics, "delivered") == 1)
    assert receiver.ids() == [delivery_id] * 2
    assert receiver.elsewhere == 0
    assert count(metrics, "retried") == 1


async def test_a_receiver_that_is_down_gets_the_delivery_once_it_is_up(sqlite_url: str) -> None:
    receiver = Receiver()  # its port is bound, not yet listening: connections are refused
    metrics = Metrics()
    try:
        async with started(sqlite_url) as store:
            delivery_id = await finish(store, "CA1")
            async with running(deliverer(store, receiver.url, metrics)):
                await until(lambda: count(metrics, "retried") >= 2)
                assert rows(sqlite_url)[delivery_id].last_error == "ConnectError"
                receiver.server.start()
                await until(lambda: count(metrics, "delivered") == 1)
        assert receiver.ids() == [delivery_id]
    finally:
        receiver.server.stop()


async def test_deliveries_in_flight_at_once_are_at_most_eight(sqlite_url: str) -> None:
    receiver = Receiver(hold_until=8)  # holds every answer until 8 requests are waiting
    receiver.server.start()
    metrics = Metrics()
    try:
        async with started(sqlite_url) as store:
            ids = [await finish(store, f"CA{n}") for n in range(16)]
            async with running(deliverer(store, receiver.url, metrics)):
                await until(lambda: count(metrics, "delivered") == 16, within_s=20)
        assert sorted(receiver.ids()) == sorted(ids)
        assert receiver.most_in_flight == 8
    finally:
        receiver.server.stop()


async def test_a_restarted_gateway_delivers_what_the_old_one_had_not_exactly_once(
    database_url: str,
    receiver: Receiver,
) -> None:
    """The old process finished one call (its delivery failed once: the receiver said 500) and
    was killed during another; the new one closes that as interrupted and delivers both."""
    receiver.script = [500]
    clock = Clock()
    old_metrics, new_metrics = Metrics(), Metrics()
    old = RecordStore(database_url, owner="old", clock=clock)
    await old.start(deliver=True)
    try:
        finished_id = await finish(old, "CA-finished")
        await old.call_started(record("CA-open"))
        # A first retry ten minutes away: the old process is killed before it comes.
        async with running(deliverer(old, receiver.url, old_metrics, retry_s=600)):
            await until(lambda: count(old_metrics, "retried") == 1)
    finally:
        await old.aclose()
    assert receiver.ids() == [finished_id]

    clock.advance(700)  # the restart, later: the retry is due, the open record's heartbeat old
    async with started(database_url, owner="new", clock=clock) as new:
        async with running(deliverer(new, receiver.url, new_metrics)):
            await until(lambda: count(new_metrics, "delivered") == 2)
        interrupted = next(s for s in receiver.seen if json.loads(s.body)["call_id"] == "CA-open")
        assert json.loads(interrupted.body) == await new.get("CA-open")
        assert json.loads(interrupted.body)["end_reason"] == "interrupted"
    assert receiver.ids().count(finished_id) == 2  # the old failed try, and the new one's
    assert len(receiver.ids()) == 3
    assert all(row.delivered_at is not None for row in rows(database_url).values())


async def test_a_delivery_failing_after_24_hours_is_abandoned(
    sqlite_url: str, receiver: Receiver
) -> None:
    receiver.script = [500, 500]
    clock = Clock()
    metrics = Metrics()
    async with started(sqlite_url, clock=clock) as store:
        old_id = await finish(store, "CA-old")
        clock.advance(23 * 3600)
        young_id = await finish(store, "CA-young")
        clock.advance(3600 + 1)  # CA-old is 24 h and 1 s old, CA-young 1 h and 1 s
        async with running(deliverer(store, receiver.url, metrics)):
            await until(lambda: count(metrics, "abandoned") + count(metrics, "retried") == 2)
        assert (count(metrics, "abandoned"), count(metrics, "retried")) == (1, 1)
        outbox = rows(sqlite_url)
        assert outbox[old_id].abandoned_at is not None
        assert (outbox[young_id].abandoned_at, outbox[young_id].attempts) == (None, 1)
        clock.advance(7 * 24 * 3600)
        assert [d.delivery_id for d in await store.due_deliveries(10)] == [young_id]
