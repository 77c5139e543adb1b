"""One simulated model response: the GA event sequence, paced audio, and how it ends when it is
cancelled (by the VAD or ``response.cancel``) or made to fail.

Sequence of a response that speaks and then calls a tool::

    response.created                                   (then think_ms)
    response.output_item.added  {message}   conversation.item.added
    response.content_part.added {type: audio}
    response.output_audio.delta + response.output_audio_transcript.delta ... (speed x real time)
    response.output_audio.done  response.output_audio_transcript.done {transcript}
    response.content_part.done  response.output_item.done  conversation.item.done
    response.output_item.added  {function_call}   conversation.item.added
    response.function_call_arguments.delta  response.function_call_arguments.done
    response.output_item.done   conversation.item.done
    response.done {status: completed, output, usage}   rate_limits.updated

The run is a task the engine cancels; :meth:`ResponseRun.finish_cancelled` then closes what was
open. It first sends up to ``late`` more audio deltas of the interrupted item: audio the service
had already generated arrives *after* ``speech_started``, and a client must drop it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from callsim.live.model import split_transcript
from callsim.realtime import events
from callsim.realtime.events import JsonObject
from callsim.realtime.formats import AudioFormat
from callsim.realtime.records import ItemRecord, RealtimeConnectionRecord, ResponseRecord

Send = Callable[[JsonObject], Awaitable[None]]


@dataclass(frozen=True)
class Speech:
    """A spoken part: text, audio length and tone."""

    text: str
    seconds: float
    hz: float
    level_dbfs: float


@dataclass(frozen=True)
class Call:
    """A function call part."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """Make the response fail: ``response.done`` with ``status: failed`` and no output."""

    error_type: str
    code: str | None


@dataclass
class _Open:
    """The output item being produced, for an orderly end when cancelled."""

    item: ItemRecord
    output_index: int
    chunks: list[bytes] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    sent: int = 0


class ResponseRun:
    """Produces one response; ``started`` is set once ``response.created`` was sent."""

    def __init__(
        self,
        *,
        record: ResponseRecord,
        connection: RealtimeConnectionRecord,
        session: JsonObject,
        parts: list[Speech | Call],
        fmt: AudioFormat,
        send: Send,
        new_id: Callable[[str], str],
        add_item: Callable[[ItemRecord], str | None],
        on_call: Callable[[str], None],
        speed: float,
        chunk_ms: int,
        think_ms: int,
        failure: Failure | None = None,
    ) -> None:
        self.record = record
        self._connection = connection
        self._session = session
        self._parts = parts
        self._fmt = fmt
        self._send = send
        self._new_id = new_id
        self._add_item = add_item
        self._on_call = on_call
        self._speed = speed
        self._chunk_ms = chunk_ms
        self._think_ms = think_ms
        self._failure = failure
        self._items: list[ItemRecord] = []
        self._open: _Open | None = None
        self._audio_seconds = 0.0
        self.started = asyncio.Event()
        self.audio_sent = False

    async def run(self) -> None:
        """The whole response, unless cancelled (see :meth:`finish_cancelled`)."""
        await self._send({"type": "response.created", "response": self._json("in_progress")})
        self.started.set()
        await asyncio.sleep(self._think_ms / 1000)
        if self._failure is not None:
            await self._fail(self._failure)
            return
        for part in self._parts:
            if isinstance(part, Speech):
                await self._speak(part)
            else:
                await self._call(part)
        self.record.status = "completed"
        await self._send({"type": "response.done", "response": self._done_json("completed")})
        await self._send(events.rate_limits())

    async def finish_cancelled(self, reason: str, late: int) -> None:
        """End a cancelled run: ``late`` more deltas, close the open item, ``response.done``."""
        opened, self._open = self._open, None
        if opened is not None:
            if opened.item.type == "message":
                for _ in range(min(late, len(opened.chunks) - opened.sent)):
                    await self._delta(opened, with_transcript=False)
                await self._end_message(opened, "incomplete")
            else:
                await self._end_item(opened, "incomplete")
        self.record.status = "cancelled"
        self.record.reason = reason
        details = {"type": "cancelled", "reason": reason}
        await self._send(
            {"type": "response.done", "response": self._done_json("cancelled", details)}
        )

    # --- parts ---------------------------------------------------------------------------------

    async def _speak(self, speech: Speech) -> None:
        item = ItemRecord(
            id=self._new_id("item"), type="message", source="model", role="assistant",
            status="in_progress",
        )  # fmt: skip
        opened = await self._begin(item)
        audio = self._fmt.speech(speech.hz, speech.seconds, speech.level_dbfs)
        step = self._fmt.chunk_bytes(self._chunk_ms)
        opened.chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        opened.pieces = split_transcript(speech.text, len(opened.chunks))
        await self._send(self._part_event("response.content_part.added", opened, ""))
        started = time.monotonic()
        while opened.sent < len(opened.chunks):
            await self._delta(opened, with_transcript=True)
            due = started + self._fmt.duration_ms(item.audio) / 1000 / self._speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        self._open = None
        await self._end_message(opened, "completed")

    async def _delta(self, opened: _Open, *, with_transcript: bool) -> None:
        chunk = opened.chunks[opened.sent]
        piece = opened.pieces[opened.sent] if with_transcript else ""
        opened.sent += 1
        opened.item.audio += chunk  # before the send: a cancel while sending keeps this true
        opened.item.text += piece
        self._audio_seconds += self._fmt.duration_ms(chunk) / 1000
        self.audio_sent = True
        await self._send(
            self._item_event("response.output_audio.delta", opened)
            | {"content_index": 0, "delta": events.b64(chunk)}
        )
        if piece:
            await self._send(
                self._item_event("response.output_audio_transcript.delta", opened)
                | {"content_index": 0, "delta": piece}
            )

    async def _end_message(self, opened: _Open, status: str) -> None:
        transcript = opened.item.text
        await self._send(self._item_event("response.output_audio.done", opened) | _c0())
        await self._send(
            self._item_event("response.output_audio_transcript.done", opened)
            | _c0()
            | {"transcript": transcript}
        )
        await self._send(self._part_event("response.content_part.done", opened, transcript))
        await self._end_item(opened, status)

    async def _call(self, call: Call) -> None:
        arguments = json.dumps(call.args)
        item = ItemRecord(
            id=self._new_id("item"), type="function_call", source="model",
            call_id=self._new_id("call"), name=call.name, arguments="", status="in_progress",
        )  # fmt: skip
        opened = await self._begin(item)
        call_id = item.call_id or ""
        await self._send(
            self._item_event("response.function_call_arguments.delta", opened)
            | {"call_id": call_id, "delta": arguments}
        )
        item.arguments = arguments
        await self._send(
            self._item_event("response.function_call_arguments.done", opened)
            | {"call_id": call_id, "name": call.name, "arguments": arguments}
        )
        self._open = None
        await self._end_item(opened, "completed")
        self._on_call(call_id)

    async def _begin(self, item: ItemRecord) -> _Open:
        opened = _Open(item=item, output_index=len(self._items))
        self._items.append(item)
        self.record.output_item_ids.append(item.id)
        previous = self._add_item(item)
        self._open = opened
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": self.record.id,
                "output_index": opened.output_index,
                "item": _fresh(item),
            }
        )
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": _fresh(item)}
        )
        return opened

    async def _end_item(self, opened: _Open, status: str) -> None:
        opened.item.status = status
        body = events.item_json(opened.item)
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": self.record.id,
                "output_index": opened.output_index,
                "item": body,
            }
        )
        await self._send({"type": "conversation.item.done", "item": body})

    async def _fail(self, failure: Failure) -> None:
        self.record.status = "failed"
        details = {
            "type": "failed",
            "error": {
                "type": failure.error_type,
                "code": failure.code,
                "message": "The server had an error while processing your request.",
            },
        }
        await self._send({"type": "response.done", "response": self._done_json("failed", details)})

    # --- event bodies --------------------------------------------------------------------------

    def _item_event(self, event_type: str, opened: _Open) -> JsonObject:
        return {
            "type": event_type,
            "response_id": self.record.id,
            "item_id": opened.item.id,
            "output_index": opened.output_index,
        }

    def _part_event(self, event_type: str, opened: _Open, transcript: str) -> JsonObject:
        return (
            self._item_event(event_type, opened)
            | _c0()
            | {"part": {"type": "audio", "transcript": transcript}}
        )

    def _json(self, status: str, details: JsonObject | None = None) -> JsonObject:
        return events.response_json(
            self.record.id, status=status, session=self._session, output=[], status_details=details
        )

    def _done_json(self, status: str, details: JsonObject | None = None) -> JsonObject:
        body = self._json(status, details)
        body["output"] = [events.item_json(item) for item in self._items]
        said = " ".join(item.text for item in self._items if item.type == "message")
        heard = " ".join(item.text for item in self._connection.items if item.source != "model")
        body["usage"] = events.usage(
            input_text=self._connection.instructions + heard,
            input_audio_s=self._connection.audio_in_seconds,
            output_text=said,
            output_audio_s=self._audio_seconds,
        )
        return body


def _c0() -> JsonObject:
    return {"content_index": 0}


def _fresh(item: ItemRecord) -> JsonObject:
    """An item as first announced: in progress and still empty."""
    body = events.item_json(item, status="in_progress")
    if item.type == "message":
        body["content"] = []
    return body
