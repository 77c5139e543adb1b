"""The simulated model behind one Realtime connection: applies client events to the session, the
input buffer and the conversation, and runs responses (``callsim.realtime.response``) as tasks
so the receive loop stays free to hear a barge-in or a ``response.cancel``.

A bad client event is answered with an ``error`` event carrying the client's ``event_id``; the
connection stays open, as the service's does.

Habits of the real service simulated here:

* barge-in: on a VAD onset during a response (``interrupt_response``, the default) the response
  is cancelled, but ``late_deltas`` audio deltas of it still arrive *after* ``speech_started``;
* the caller's transcript (``audio.input.transcription`` set) comes asynchronously, after the
  response to that utterance has started;
* a ``response.cancel`` with nothing to cancel (the VAD already did) is an ``error``
  (``response_cancel_not_active``), and so is a ``response.create`` while one is active;
* the voice cannot change once the conversation has assistant audio.

Script triggers (``callsim.live.script``): ``text`` when the conversation's last item is a
client-created user/system message or a ``function_call_output``, else ``caller``. A
``function_call_output`` answering a scripted ``tool_call`` makes the next ``response.create``
speak that step's ``then_say``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callsim.live.script import Script, Step, Trigger, default_step
from callsim.live.voices import voice_pitch_hz
from callsim.realtime import events
from callsim.realtime import session as sessions
from callsim.realtime.connection import RealtimeConnection
from callsim.realtime.events import Ids, JsonObject
from callsim.realtime.listener import InputBuffer, Onset
from callsim.realtime.records import ItemRecord, ResponseRecord, ResponseTrigger
from callsim.realtime.response import Call, Failure, ResponseRun, Speech
from callsim.simoptions import SimOptions

logger = logging.getLogger("callsim")

MIN_COMMIT_MS = 100


@dataclass(frozen=True)
class EngineOptions(SimOptions):
    """The shared knobs (``callsim.simoptions``) and how many audio deltas of a response
    cancelled by a barge-in still arrive after ``speech_started``."""

    late_deltas: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.late_deltas < 0:
            raise ValueError("late_deltas must not be negative")


class ClientEventError(Exception):
    """A client event the service would refuse: becomes one ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class RealtimeEngine:
    """Per-connection model state; feed it parsed client events with :meth:`handle`."""

    def __init__(
        self,
        *,
        connection: RealtimeConnection,
        options: EngineOptions,
        script: Script | None,
        ids: Ids,
        take_failure: Callable[[], Failure | None],
    ) -> None:
        self._connection = connection
        self._record = connection.record
        self._options = options
        self._script = script
        self._ids = ids
        self._take_failure = take_failure
        self._buffer = InputBuffer(
            options.vad_threshold_dbfs, options.vad_start_ms, options.vad_silence_ms
        )
        self._conversation: list[ItemRecord] = []  # live items, in order
        self._run: ResponseRun | None = None
        self._task: asyncio.Task[None] | None = None
        self._speech_item: str | None = None
        self._assistant_audio = False
        self._then: dict[str, Step] = {}  # call_id -> scripted step waiting for its output
        self._answered: dict[str, int] = {}  # caller turns answered per instructions
        self._heard: list[str] = []
        self._utterances = 0

    @property
    def session(self) -> JsonObject:
        return self._record.session

    async def send(self, event: JsonObject) -> None:
        await self._connection.send(event)

    async def handle(self, event: JsonObject) -> None:
        """Apply one client event; refused ones are answered with an ``error`` event."""
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        try:
            if handler is None:
                raise ClientEventError(
                    "invalid_value", f"Invalid value: {kind!r}. Unknown client event type.", "type"
                )
            await handler(self, event)
        except ClientEventError as exc:
            await self.send(events.error(exc.code, exc.message, param=exc.param, event_id=event_id))

    async def close(self) -> None:
        """Stop a running response (the connection is gone)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    # --- session -------------------------------------------------------------------------------

    async def _session_update(self, event: JsonObject) -> None:
        update = event.get("session")
        self._record.session_updates.append(update if isinstance(update, dict) else {})
        if update is None:
            raise ClientEventError(
                "missing_required_parameter", "Missing required parameter: 'session'.", "session"
            )
        try:
            merged = sessions.merge_update(
                self.session, update, assistant_audio_sent=self._assistant_audio
            )
        except sessions.SessionError as exc:
            raise ClientEventError(exc.code, str(exc), exc.param) from None
        self._record.session = merged
        await self.send({"type": "session.updated", "session": merged})

    # --- input audio ---------------------------------------------------------------------------

    async def _append(self, event: JsonObject) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ClientEventError(
                "missing_required_parameter", "Missing required parameter: 'audio'.", "audio"
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientEventError(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio"
            ) from None
        fmt = sessions.input_format(self.session)
        self._record.audio_in += data
        self._record.audio_in_seconds_total += fmt.duration_ms(data) / 1000
        detection = sessions.turn_detection(self.session)
        silence = detection.get("silence_duration_ms") if detection else None
        for vad_event in self._buffer.append(
            data,
            fmt,
            vad=detection is not None,
            silence_ms=silence if isinstance(silence, int) and silence > 0 else None,
        ):
            if isinstance(vad_event, Onset):
                await self._speech_started(vad_event.at_ms, detection or {})
            else:
                await self._speech_stopped(vad_event.at_ms, vad_event.seconds, detection or {})

    async def _speech_started(self, at_ms: int, detection: JsonObject) -> None:
        self._speech_item = item_id = self._ids.new("item")
        interrupt = detection.get("interrupt_response", True) is not False
        run = self._run if interrupt and self._active() else None
        if run is not None:
            await self._stop_task()
        self._record.speech_started_at.append(asyncio.get_running_loop().time())
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": at_ms,
                "item_id": item_id,
            }
        )
        if run is not None:
            await self._finish(run, "turn_detected", self._options.late_deltas)

    async def _speech_stopped(self, at_ms: int, seconds: float, detection: JsonObject) -> None:
        item_id = self._speech_item or self._ids.new("item")
        self._speech_item = None
        await self.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": at_ms, "item_id": item_id}
        )
        item, _ = await self._commit_audio(item_id)
        self._utterances += 1
        transcript = f"caller utterance {self._utterances} ({seconds:.1f} s)"
        run: ResponseRun | None = None
        if detection.get("create_response", True) is not False and not self._active():
            step = self._step("caller")
            transcript = step.hear or transcript
            run = self._start(self._parts(step), "vad", step)
        self._heard.append(transcript)
        if sessions.transcription_of(self.session) is not None:
            self._connection.spawn(
                self._transcribe(item, transcript, seconds, run), name=f"rtsim-transcribe-{item.id}"
            )

    async def _commit(self, event: JsonObject) -> None:
        if self._buffer.pending_ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {self._buffer.pending_ms:.2f}ms "
                "of audio.",
            )
        item, seconds = await self._commit_audio(self._ids.new("item"))
        self._utterances += 1
        self._heard.append(f"caller utterance {self._utterances} ({seconds:.1f} s)")
        if sessions.transcription_of(self.session) is not None:
            transcript = self._heard[-1]
            self._connection.spawn(
                self._transcribe(item, transcript, seconds, None),
                name=f"rtsim-transcribe-{item.id}",
            )

    async def _commit_audio(self, item_id: str) -> tuple[ItemRecord, float]:
        """Commit the pending audio as a user item; return it and its length in seconds."""
        seconds = self._buffer.pending_ms / 1000
        committed = self._buffer.take()
        previous = self._conversation[-1].id if self._conversation else None
        item = ItemRecord(id=item_id, type="message", source="caller_audio", role="user")
        item.audio += committed
        self._add(item)
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        body = events.item_json(item)
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": body}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": body}
        )
        return item, seconds

    async def _transcribe(
        self, item: ItemRecord, transcript: str, seconds: float, run: ResponseRun | None
    ) -> None:
        """The caller's transcript, late: after the response it caused has started."""
        if run is not None:
            await run.started.wait()
        await asyncio.sleep(max(self._options.think_ms / 2000, 0.01))
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item.id,
                "content_index": 0,
                "delta": transcript,
            }
        )
        item.text = transcript
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": round(seconds, 3)},
            }
        )

    async def _clear(self, event: JsonObject) -> None:
        self._buffer.clear()
        self._speech_item = None
        await self.send({"type": "input_audio_buffer.cleared"})

    # --- conversation --------------------------------------------------------------------------

    async def _item_create(self, event: JsonObject) -> None:
        raw = event.get("item")
        if not isinstance(raw, dict):
            raise ClientEventError(
                "missing_required_parameter", "Missing required parameter: 'item'.", "item"
            )
        item = item_from_client(raw, self._ids)
        if any(existing.id == item.id for existing in self._conversation):
            raise ClientEventError(
                "invalid_value", f"Item with id '{item.id}' already exists.", "item.id"
            )
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and self._find(previous) is None:
            raise ClientEventError(
                "invalid_value",
                f"Conversation item with id '{previous}' does not exist.",
                "previous_item_id",
            )
        position = len(self._conversation)
        if previous == "root":
            position = 0
        elif isinstance(previous, str):
            position = self._conversation.index(self._find(previous)) + 1  # type: ignore[arg-type]
        before = self._conversation[position - 1].id if position > 0 else None
        self._conversation.insert(position, item)
        self._record.items.append(item)
        if item.type == "function_call_output" and item.call_id not in self._then:
            logger.info(
                "connection %d: output for unknown call %r", self._record.index, item.call_id
            )
        body = events.item_json(item)
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": before, "item": body}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": before, "item": body}
        )

    async def _truncate(self, event: JsonObject) -> None:
        item_id, index, end_ms = (
            event.get("item_id"),
            event.get("content_index"),
            event.get("audio_end_ms"),
        )
        if not isinstance(item_id, str) or not isinstance(end_ms, int) or isinstance(end_ms, bool):
            raise ClientEventError(
                "missing_required_parameter",
                "Missing required parameter: 'item_id' and 'audio_end_ms' are required.",
            )
        item = self._find(item_id)
        if item is None:
            raise ClientEventError(
                "item_truncate_invalid_item_id",
                f"Item with item_id '{item_id}' not found.", "item_id",
            )  # fmt: skip
        if item.role != "assistant" or not item.audio:
            raise ClientEventError(
                "invalid_value",
                "Only assistant messages with audio can be truncated.", "item_id",
            )  # fmt: skip
        duration = sessions.output_format(self.session).duration_ms(item.audio)
        if end_ms < 0 or end_ms > duration:
            raise ClientEventError(
                "invalid_value",
                f"audio_end_ms ({end_ms}) exceeds the audio length ({duration:.0f}ms) of the item.",
                "audio_end_ms",
            )
        content_index = index if isinstance(index, int) else 0
        item.truncated_at_ms = end_ms
        self._record.truncations.append((item_id, content_index, end_ms))
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": end_ms,
            }
        )

    async def _delete(self, event: JsonObject) -> None:
        item = self._find(event.get("item_id"))
        if item is None:
            raise ClientEventError(
                "invalid_value", f"Item with item_id '{event.get('item_id')}' not found.", "item_id"
            )
        self._conversation.remove(item)
        item.deleted = True
        await self.send({"type": "conversation.item.deleted", "item_id": item.id})

    async def _retrieve(self, event: JsonObject) -> None:
        item = self._find(event.get("item_id"))
        if item is None:
            raise ClientEventError(
                "invalid_value", f"Item with item_id '{event.get('item_id')}' not found.", "item_id"
            )
        body = events.item_json(item)
        if item.audio and item.role == "assistant":
            body["content"][0]["audio"] = events.b64(bytes(item.audio))
        await self.send({"type": "conversation.item.retrieved", "item": body})

    # --- responses -----------------------------------------------------------------------------

    async def _response_create(self, event: JsonObject) -> None:
        if self._active():
            assert self._run is not None
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._run.record.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = event.get("response")
        instructions = params.get("instructions") if isinstance(params, dict) else None
        last = self._conversation[-1] if self._conversation else None
        then = (
            self._then.pop(last.call_id or "", None)
            if last and last.type == "function_call_output"
            else None
        )
        if then is not None:
            # The step that made the call says what follows its result: its then_say, or
            # nothing (a model told to end the call has said its goodbye already).
            hz = self._pitch(then)
            parts: list[Speech | Call] = (
                [Speech(then.then_say, then.then_say_seconds, hz, then.level_dbfs)]
                if then.then_say
                else []
            )
        else:
            text = last is not None and last.source == "client" and last.role != "assistant"
            step = self._step("text" if text else "caller", instructions)
            self._start(self._parts(step), "client", step)
            return
        self._start(parts, "client")

    async def _response_cancel(self, event: JsonObject) -> None:
        run = self._run
        wanted = event.get("response_id")
        if run is None or not self._active() or (wanted and wanted != run.record.id):
            raise ClientEventError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
            )
        await self._stop_task()
        await self._finish(run, "client_cancelled", 0)

    async def _output_buffer_clear(self, event: JsonObject) -> None:
        raise ClientEventError(
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            "type",
        )  # ASSUMPTION: the message; the refusal itself follows the API reference

    def _active(self) -> bool:
        return self._task is not None and not self._task.done()

    def _start(
        self, parts: list[Speech | Call], trigger: ResponseTrigger, step: Step | None = None
    ) -> ResponseRun:
        record = ResponseRecord(id=self._ids.new("resp"), trigger=trigger)
        self._record.responses.append(record)
        run = ResponseRun(
            record=record,
            connection=self._record,
            session=self.session,
            parts=parts,
            fmt=sessions.output_format(self.session),
            send=self.send,
            new_id=self._ids.new,
            add_item=self._add,
            on_call=lambda call_id: self._on_call(call_id, step),
            speed=self._options.speed,
            chunk_ms=self._options.chunk_ms,
            think_ms=self._options.think_ms,
            failure=self._take_failure(),
        )
        self._run = run
        self._task = self._connection.spawn(self._guard(run), name=f"rtsim-{record.id}")
        return run

    async def _guard(self, run: ResponseRun) -> None:
        try:
            await run.run()
        finally:
            self._assistant_audio = self._assistant_audio or run.audio_sent

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _finish(self, run: ResponseRun, reason: str, late: int) -> None:
        await run.finish_cancelled(reason, late)
        self._assistant_audio = self._assistant_audio or run.audio_sent

    def _on_call(self, call_id: str, step: Step | None) -> None:
        if step is not None:
            self._then[call_id] = step

    # --- script --------------------------------------------------------------------------------

    def _step(self, trigger: Trigger, instructions: object = None) -> Step:
        text = instructions if isinstance(instructions, str) else self._record.instructions
        step = self._script.take(trigger, text) if self._script is not None else None
        if step is None:
            step = default_step(
                trigger,
                system_instruction=text,
                function_declarations=self.session.get("tools") or [],
                caller_turns_answered=self._answered.get(text, 0),
                heard=self._heard,
            )
        if trigger == "caller":
            self._answered[text] = self._answered.get(text, 0) + 1
        return step

    def _parts(self, step: Step) -> list[Speech | Call]:
        parts: list[Speech | Call] = []
        if step.say:
            parts.append(Speech(step.say, step.say_seconds, self._pitch(step), step.level_dbfs))
        if step.tool_call is not None:
            parts.append(Call(step.tool_call.name, dict(step.tool_call.args)))
        return parts

    def _pitch(self, step: Step) -> float:
        return step.tone_hz if step.tone_hz is not None else voice_pitch_hz(self._record.voice)

    # --- items ---------------------------------------------------------------------------------

    def _add(self, item: ItemRecord) -> str | None:
        """Append a generated item; return the id before it."""
        previous = self._conversation[-1].id if self._conversation else None
        self._conversation.append(item)
        self._record.items.append(item)
        return previous

    def _find(self, item_id: object) -> ItemRecord | None:
        return next((item for item in self._conversation if item.id == item_id), None)


def item_from_client(raw: dict[str, Any], ids: Ids) -> ItemRecord:
    """An item of ``conversation.item.create``, checked as the service checks it."""
    kind = raw.get("type")
    given = raw.get("id")
    item_id = given if isinstance(given, str) and given else ids.new("item")
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise ClientEventError(
                "missing_required_parameter",
                "Missing required parameter: 'item.call_id'.", "item.call_id",
            )  # fmt: skip
        if not isinstance(output, str):
            raise ClientEventError(
                "invalid_type",
                "Invalid type for 'item.output': expected a string.", "item.output",
            )  # fmt: skip
        return ItemRecord(id=item_id, type=kind, source="client", call_id=call_id, output=output)
    if kind == "function_call":
        return ItemRecord(
            id=item_id, type=kind, source="client", call_id=str(raw.get("call_id") or ""),
            name=str(raw.get("name") or ""), arguments=str(raw.get("arguments") or ""),
        )  # fmt: skip
    if kind != "message":
        raise ClientEventError(
            "invalid_value",
            f"Invalid value: {kind!r}. Supported values are: 'message', 'function_call', and "
            "'function_call_output'.",
            "item.type",
        )
    role = raw.get("role")
    wanted = "output_text" if role == "assistant" else "input_text"
    if role not in ("user", "system", "assistant"):
        raise ClientEventError(
            "invalid_value",
            f"Invalid value: {role!r}. Supported values are: 'user', 'assistant', and 'system'.",
            "item.role",
        )
    content = raw.get("content")
    if not isinstance(content, list):
        raise ClientEventError(
            "missing_required_parameter",
            "Missing required parameter: 'item.content'.", "item.content",
        )  # fmt: skip
    texts: list[str] = []
    for index, part in enumerate(content):
        part_type = part.get("type") if isinstance(part, dict) else None
        allowed = (wanted, "input_audio", "input_image") if role == "user" else (wanted,)
        if part_type not in allowed:
            raise ClientEventError(
                "invalid_value",
                f"Invalid value: {part_type!r}. Supported values are: "
                + ", ".join(f"'{a}'" for a in allowed) + ".",
                f"item.content[{index}].type",
            )  # fmt: skip
        if part_type == wanted:
            texts.append(str(part.get("text") or ""))
    return ItemRecord(id=item_id, type="message", source="client", role=role, text="".join(texts))


_Handler = Callable[[RealtimeEngine, JsonObject], Any]
_HANDLERS: dict[str, _Handler] = {
    "session.update": RealtimeEngine._session_update,
    "input_audio_buffer.append": RealtimeEngine._append,
    "input_audio_buffer.commit": RealtimeEngine._commit,
    "input_audio_buffer.clear": RealtimeEngine._clear,
    "conversation.item.create": RealtimeEngine._item_create,
    "conversation.item.truncate": RealtimeEngine._truncate,
    "conversation.item.delete": RealtimeEngine._delete,
    "conversation.item.retrieve": RealtimeEngine._retrieve,
    "response.create": RealtimeEngine._response_create,
    "response.cancel": RealtimeEngine._response_cancel,
    "output_audio_buffer.clear": RealtimeEngine._output_buffer_clear,
}
