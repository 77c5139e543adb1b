"""The gateway's call records at run time: written as calls start and end, checkpointed while
they run, delivered from the outbox.

The bridge reports a call's record twice (started, finished) and must never wait on the
database for it: a slow disk or a PostgreSQL failover must not be heard on a call. So each
report becomes a write task owned here, the writes of one call are chained in order, and a
failed write is logged and counted, not raised into the call. Shutdown waits for the writes in
flight, so a drained gateway leaves every record complete.

While calls run, their records so far are checkpointed every :data:`CHECKPOINT_S` (with the
heartbeat that tells a replica's open records from a dead replica's), and records left open
by dead processes are swept (:meth:`RecordStore.sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from gateway.aio import cancel_and_wait
from gateway.metrics import Metrics
from gateway.records.delivery import RecordDelivery
from gateway.records.record import CallRecord
from gateway.records.store import RecordStore

#: Seconds between checkpoints of the open records (and their heartbeat).
CHECKPOINT_S = 30.0
#: Seconds between sweeps for records left open by processes that died.
SWEEP_S = 60.0


class CallRecords:
    """Owns the record store's writes, the checkpoints and the delivery outbox worker."""

    def __init__(
        self,
        store: RecordStore,
        *,
        delivery: RecordDelivery | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self._metrics = metrics
        self._open: dict[str, CallRecord] = {}
        #: The newest write of each call (a call's writes run in order).
        self._writes: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._log = structlog.get_logger("gateway.records")

    async def start(self) -> None:
        """Migrate the schema, close the records dead processes left open, start the loops."""
        await self.store.start(deliver=self.delivery is not None)  # it logs what it closed
        self._loops.append(asyncio.create_task(self._maintain(), name="records-maintenance"))
        if self.delivery is not None:
            self._loops.append(asyncio.create_task(self.delivery.run(), name="records-delivery"))

    @property
    def writing(self) -> bool:
        """Whether any record write is still in flight."""
        return bool(self._writes)

    def started(self, record: CallRecord) -> None:
        """A call began: its record exists from now on (``interrupted`` until finished)."""
        self._open[record.call_id] = record
        self._write(record.call_id, self.store.call_started(record.document()))

    def finished(self, record: CallRecord) -> None:
        """A call ended: complete its record, and queue its delivery in the same transaction."""
        self._open.pop(record.call_id, None)
        self._write(record.call_id, self._finish(record.document()))

    async def _finish(self, document: dict[str, Any]) -> None:
        delivery_id = await self.store.call_finished(document, deliver=self.delivery is not None)
        if delivery_id is not None and self.delivery is not None:
            self.delivery.wake()

    def _write(self, call_id: str, work: Coroutine[Any, Any, None]) -> None:
        previous = self._writes.get(call_id)
        task = asyncio.create_task(self._after(previous, work), name=f"record:{call_id}")
        self._writes[call_id] = task
        task.add_done_callback(lambda t: self._written(call_id, t))

    async def _after(
        self, previous: asyncio.Task[None] | None, work: Coroutine[Any, Any, None]
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        try:
            await work
        except Exception as exc:  # the call goes on; the operator hears of it
            if self._metrics is not None:
                self._metrics.errors.labels("call_record").inc()
            self._log.error("records.write_failed", error=f"{type(exc).__name__}: {exc}")

    def _written(self, call_id: str, task: asyncio.Task[None]) -> None:
        if self._writes.get(call_id) is task:
            del self._writes[call_id]

    async def _maintain(self) -> None:
        """Checkpoint the open records and sweep for dead processes' ones, forever."""
        since_sweep = 0.0
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            since_sweep += CHECKPOINT_S
            try:
                if self._open:
                    await self.store.checkpoint([r.document() for r in self._open.values()])
                if since_sweep >= SWEEP_S:
                    since_sweep = 0.0
                    await self.store.sweep()  # it logs what it closed
            except Exception as exc:
                self._log.error("records.maintenance_failed", error=f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        """Finish the writes in flight, stop the loops, close the database."""
        pending = list(self._writes.values())
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    await asyncio.wait(pending)
        await cancel_and_wait(*self._loops, *self._writes.values())
        await self.store.aclose()
