"""The console's live view: every call in progress, and what happens on it, as it happens.

:class:`LiveFeed` is one more observer of the calls' events (the same stream the log and the
records are built from), kept only when the console exists (ADMIN_API_TOKEN). It holds a small
picture of each live call (who, which agent, handoffs, the last transcript lines) and fans the
changes out to the console's subscribers (server-sent events, :mod:`gateway.web.console`).

Back-pressure is explicit: each subscriber has a bounded queue. A browser that stops reading
(a laptop lid closed on a busy gateway) does not make the gateway buffer without end and never
slows a call: when its queue is full it is marked behind, its queue is emptied, and the next
thing it reads is a fresh snapshot (the page replaces its state with it). The observer itself
only appends to lists and puts on queues; it never awaits, so the call's audio never waits for
a console.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.logs import mask_number
from gateway.records.times import format_time, utc_now

#: Transcript lines a live call keeps for a console that opens mid-call.
TRANSCRIPT_KEPT: Final = 100
#: Events a subscriber may fall behind by before it is resynchronised with a snapshot.
QUEUE_EVENTS: Final = 500
#: The longest transcript line sent (a model can talk at length; the record keeps it all).
MAX_TEXT: Final = 2000

#: One server-sent event: its name and its JSON-ready data.
FeedEvent = tuple[str, dict[str, Any]]
#: What a subscriber reads when it fell behind (its next event must be a snapshot) or when
#: the feed closed (the server is stopping).
RESYNC: Final[FeedEvent] = ("resync", {})
CLOSED: Final[FeedEvent] = ("closed", {})


@dataclass(slots=True)
class LiveCall:
    """What the console shows of one call in progress (numbers masked)."""

    call_id: str
    carrier: str
    direction: str
    caller: str
    called: str
    agent: str
    started_at: str
    handoffs: list[dict[str, Any]] = field(default_factory=list)
    transcript: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=TRANSCRIPT_KEPT)
    )

    def document(self) -> dict[str, Any]:
        """What the page gets: the fields by their names, the numbers as ``from``/``to``."""
        body = {name: getattr(self, name) for name in _SHOWN_AS_IS}
        body.update(
            {"from": self.caller, "to": self.called},
            handoffs=list(self.handoffs),
            transcript=list(self.transcript),
        )
        return body


_SHOWN_AS_IS: Final = ("call_id", "carrier", "direction", "agent", "started_at")


class Subscription:
    """One console's view of the feed: read it with :meth:`next`."""

    __slots__ = ("_queue", "behind")

    def __init__(self) -> None:
        self._queue: asyncio.Queue[FeedEvent] = asyncio.Queue(QUEUE_EVENTS)
        self.behind = False

    def put(self, event: FeedEvent) -> None:
        if self.behind:
            return  # a snapshot will replace whatever this would have told
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.behind = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    def close(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(CLOSED)

    async def next(self) -> FeedEvent:
        event = await self._queue.get()
        if event is RESYNC:
            self.behind = False
        return event


class LiveFeed:
    """Live calls and their events; :meth:`observe` is a call-event observer."""

    def __init__(self) -> None:
        self.calls: dict[str, LiveCall] = {}
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def snapshot(self) -> dict[str, Any]:
        return {"calls": [call.document() for call in self.calls.values()]}

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        if self._closed:
            subscription.close()
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close(self) -> None:
        """The server is stopping: end every subscriber's stream (an open event stream would
        otherwise hold the server's shutdown until its grace period ran out)."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def observe(self, name: str, payload: Mapping[str, Any]) -> None:
        if name == "call.started":
            self._started(payload)
            return
        call = self.calls.get(payload.get("call_id", ""))
        if call is None:
            return
        if name == "transcript":
            self._transcript(call, payload)
        elif name == "handoff.completed":
            call.agent = str(payload.get("to_agent", call.agent))
            call.handoffs.append({
                "from": payload.get("from_agent"), "to": call.agent, "at": _now(),
            })  # fmt: skip
            self._publish("call", call.document())
        elif name == "call.ended":
            del self.calls[call.call_id]
            self._publish("ended", {
                "call_id": call.call_id,
                "end_reason": payload.get("reason"),
                "duration_s": payload.get("duration_s"),
            })  # fmt: skip

    def _started(self, payload: Mapping[str, Any]) -> None:
        call_id = payload.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            return
        call = self.calls[call_id] = LiveCall(
            call_id=call_id,
            carrier=str(payload.get("carrier", "")),
            direction=str(payload.get("direction", "")),
            caller=_masked(payload.get("from")),
            called=_masked(payload.get("to")),
            agent=str(payload.get("agent", "")),
            started_at=_now(),
        )
        self._publish("call", call.document())

    def _transcript(self, call: LiveCall, payload: Mapping[str, Any]) -> None:
        text = payload.get("text")
        if not isinstance(text, str) or not text:
            return
        entry = {
            "role": payload.get("speaker"),
            "agent_id": payload.get("agent_id"),
            "text": text[:MAX_TEXT],
            "at": _now(),
            "interrupted": bool(payload.get("interrupted")),
        }
        call.transcript.append(entry)
        self._publish("transcript", {"call_id": call.call_id, **entry})

    def _publish(self, name: str, data: dict[str, Any]) -> None:
        event = (name, data)
        for subscription in self._subscriptions:
            subscription.put(event)


def _masked(number: object) -> str:
    """A number as the console shows it: the browser, a SIP name's kind, or the last 4 digits."""
    if number == "browser":
        return "browser"
    return mask_number(number)


def _now() -> str:
    return format_time(utc_now())
