"""The outbox deliverer: each finished call's record POSTed to CALL_RECORDS_URL until taken.

The outbox rows are written by ``RecordStore.call_finished`` in the same transaction as the
record, so nothing here can lose one: a delivery survives restarts, database hiccups and a
receiver that is down for hours. What a receiver can rely on:

* the body is the record's JSON, byte for byte the same on every attempt;
* ``X-Callbridge-Signature: sha256=<hex>`` is the HMAC-SHA256 of exactly those bytes under
  CALL_RECORDS_SECRET: recompute it over the raw body before parsing, compare in constant time;
* ``X-Callbridge-Delivery`` is the same id on every attempt: a receiver that keeps the ids it
  has taken ignores a repeat. Repeats happen (at-least-once): a 2xx that is lost on the way
  back, or a gateway that dies between sending and recording the answer, means another try.

Any answer but 2xx (a redirect too: following one would send the records wherever the answer
says), a refused connection or no answer within 10 s is a failure: the delivery is tried again
``CALL_RECORDS_RETRY_S`` later, then twice as long each time (at most 10 minutes apart), and
abandoned by the first failure after it is 24 hours old. At most 8 are in flight at once.

The log says which delivery of which call was tried, the attempt and the HTTP status. Never
the body (records hold callers' numbers and words) and never the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import timedelta
from typing import Final

import httpx
import structlog

from gateway.metrics import Metrics
from gateway.records.store import Delivery, RecordStore

__all__ = ["RecordDelivery", "next_retry_delay", "signature"]

SIGNATURE_HEADER: Final = "X-Callbridge-Signature"
DELIVERY_HEADER: Final = "X-Callbridge-Delivery"
USER_AGENT: Final = "callbridge-gateway"
#: The longest wait between two attempts.
MAX_RETRY_DELAY_S: Final = 600.0
#: One attempt, whole (connect, send, answer): well inside the store's claim lease.
REQUEST_TIMEOUT_S: Final = 10.0
#: Deliveries POSTed at once: enough to catch up after an outage, not a flood for the receiver.
MAX_IN_FLIGHT: Final = 8


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Callbridge-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def next_retry_delay(first_s: float, attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``first_s``, then doubling, capped."""
    exponent = min(max(attempts - 1, 0), 64)  # past 2**64 the cap has long applied
    return min(MAX_RETRY_DELAY_S, first_s * 2.0**exponent)


class RecordDelivery:
    """Delivers the store's outbox to ``url``; :meth:`run` until cancelled.

    Several replicas may each run one on a shared database: the store's claims keep them
    from sending the same delivery at the same time. A client passed in (tests) is the
    caller's to close; the deliverer's own is closed when :meth:`run` ends.
    """

    def __init__(
        self,
        store: RecordStore,
        url: str,
        secret: str,
        *,
        retry_s: float,
        metrics: Metrics | None = None,
        client: httpx.AsyncClient | None = None,
        give_up_after_s: float = 24 * 3600,
        poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._url = url
        self._secret = secret.encode()
        self._retry_s = retry_s
        self._metrics = metrics
        self._client = client
        self._give_up_after = timedelta(seconds=give_up_after_s)
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        #: Loop time of the earliest retry this deliverer has scheduled: it looks then rather
        #: than at the next poll (a first retry is often sooner than a poll).
        self._soonest: float | None = None
        self._log = structlog.get_logger("gateway.records")

    def wake(self) -> None:
        """A record was just finished: look for due deliveries now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Claim due deliveries and POST them, forever (cancel to stop)."""
        client = self._client or httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_S, follow_redirects=False
        )
        try:
            while True:
                try:
                    batch = await self._store.due_deliveries(MAX_IN_FLIGHT)
                except Exception as exc:  # the database is away: the rows wait there
                    self._log.warning("records.outbox_unreadable", error=type(exc).__name__)
                    batch = []
                if batch:
                    await asyncio.gather(*(self._attempt(client, d) for d in batch))
                else:
                    await self._idle()
        finally:
            if self._client is None:
                await client.aclose()

    async def _idle(self) -> None:
        """Wait for :meth:`wake`, the poll interval or the soonest scheduled retry."""
        loop = asyncio.get_running_loop()
        timeout = self._poll_s
        if self._soonest is not None:
            timeout = max(0.0, min(timeout, self._soonest - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()
        if self._soonest is not None and loop.time() >= self._soonest:
            self._soonest = None

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        """One POST of ``delivery`` and its outcome recorded; never raises but cancellation
        (a row whose outcome cannot be stored is tried again when its claim runs out)."""
        attempt = delivery.attempts + 1
        status, error = await self._post(client, delivery)
        fields = {
            "delivery_id": delivery.delivery_id,
            "call_id": delivery.call_id,
            "attempt": attempt,
            "status": status,
        }
        try:
            if error is None:
                await self._store.delivered(delivery.delivery_id)
                self._count("delivered")
                self._log.info("records.delivered", **fields)
            elif self._store.now() - delivery.created_at >= self._give_up_after:
                await self._store.abandon(delivery.delivery_id, error)
                self._count("abandoned")
                self._log.error("records.delivery_abandoned", error=error, **fields)
            else:
                delay = next_retry_delay(self._retry_s, attempt)
                at = self._store.now() + timedelta(seconds=delay)
                await self._store.retry_later(delivery.delivery_id, at, error)
                self._count("retried")
                self._retry_in(delay)
                self._log.warning(
                    "records.delivery_retried", error=error, retry_in_s=delay, **fields
                )
        except Exception as exc:
            self._log.warning(
                "records.delivery_unsettled", store_error=type(exc).__name__, **fields
            )

    async def _post(
        self, client: httpx.AsyncClient, delivery: Delivery
    ) -> tuple[int | None, str | None]:
        """POST the delivery; returns the status (None: no answer) and what went wrong (None:
        it was taken). The error names a status or an exception type, never a message (an
        exception's message may quote the URL, and a URL may carry a token)."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, delivery.body),
            DELIVERY_HEADER: delivery.delivery_id,
            "User-Agent": USER_AGENT,
        }
        try:
            async with (
                asyncio.timeout(REQUEST_TIMEOUT_S),
                client.stream(
                    "POST",
                    self._url,
                    content=delivery.body,
                    headers=headers,
                    follow_redirects=False,
                ) as response,
            ):
                status = response.status_code  # the answer's body is never read: not needed
        except TimeoutError:
            return None, "timeout"
        except Exception as exc:  # refused, reset, a bad URL: tried again like any failure
            return None, type(exc).__name__
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    def _retry_in(self, delay: float) -> None:
        due = asyncio.get_running_loop().time() + delay
        self._soonest = due if self._soonest is None else min(self._soonest, due)

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.call_record_deliveries.labels(result).inc()
