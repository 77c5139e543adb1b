"""One call's conversation with Gemini Live, across however many connections it takes.

A Gemini Live *connection* is short-lived: it cannot change its config, it ends about every ten
minutes, and it can drop. The *session* — the conversation — outlives connections through
resumption handles. Every decision about that (when to move, what to dial, what to replay,
when to give up) is made by the pure :class:`~gateway.live.machine.SessionMachine`; this class
is its asyncio driver: it dials through the SDK, runs one receive task per connection, sends,
and tells the machine what happened.

- Events reach the bridge through :meth:`LiveSession.next_event`, in the consumer's task, and
  only from the current connection: what an old connection still had queued (a second function
  call of a ``toolCall`` that triggered a handoff, a late handle) is dropped there.
- A dropped connection, a failed send anywhere, or a ``goAway`` is handled inside
  :meth:`next_event`, so connection changes never race each other; only a failure the machine
  gives up on reaches the bridge, as :class:`SessionEnded`.
- What a new connection is told first comes from the :class:`Conversation` the bridge passes
  in: the greeting, a recap since the handle, or the whole transcript for a fresh session.
- The SDK's habits are handled here: ``receive()`` stops at every ``turnComplete``; a normal
  close raises ``APIError``; a closed socket makes every ``send_*`` raise ``ConnectionClosed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import structlog
import websockets.exceptions
from google import genai
from google.genai import errors, types
from websockets.frames import Opcode

from gateway.aio import cancel_and_wait
from gateway.audio.transcode import PCM16_16K, PCM16_24K
from gateway.audio.vad import voiced as is_voiced
from gateway.live import fast_path
from gateway.live.config import live_config
from gateway.live.fast_path import (
    AUDIO_MESSAGE_PREFIX,
    AUDIO_MESSAGE_SUFFIX,
    INPUT_MIME,
    model_audio,
    model_control,
    model_transcript,
    realtime_audio_message,
)
from gateway.live.machine import Dial, End, Opening, Policy, Recover, Sent, SessionMachine
from gateway.model.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    GoAway,
    HandleUpdated,
    Interrupted,
    LiveEvent,
    Reconnected,
    SessionEnded,
    ToolCall,
    ToolCallCancelled,
    TurnComplete,
    UsageReported,
)
from gateway.model.persona import AgentPersona
from gateway.model.session import AudioLaneState, ModelAudio, ModelConnectError, ModelSession
from gateway.model.turns import Conversation, TakeoverFactory, Turn
from gateway.model.websocket import DirectReader, DirectSender

#: HTTP answers to the websocket upgrade that no retry will change.
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404})
#: What a send on a connection that is gone raises (the SDK passes the socket's errors on).
SEND_ERRORS = (websockets.exceptions.ConnectionClosed, errors.APIError)

#: What a Gemini Live session takes and gives: PCM16 at 16 kHz in, at 24 kHz out.
GEMINI_AUDIO = ModelAudio(input=PCM16_16K, output=PCM16_24K)


@dataclass(slots=True)
class _Connection:
    generation: int
    session: Any  # google.genai.live.AsyncSession; typed loosely: it is an SDK preview class
    stack: contextlib.AsyncExitStack
    resumed: bool
    reader: asyncio.Task[None] | None = None
    #: The SDK session's websocket, for the audio fast path (None: use the SDK).
    raw_send: DirectSender | None = None
    #: What the bridge's compiled lane writes this connection's audio with (made when first
    #: asked for, :meth:`LiveSession.audio_lane`).
    lane_target: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Dropped:
    """Internal: a connection's receive loop ended, or a send on it failed."""

    code: int | None
    reason: str


_Item = tuple[int, "LiveEvent | _Dropped"]


class LiveSession:
    """The Gemini side of one call. Not thread-safe; one event loop, one consumer."""

    def __init__(
        self,
        client: genai.Client,
        model: str,
        conversation: Conversation,
        *,
        log: structlog.stdlib.BoundLogger | None = None,
        policy: Policy | None = None,
        connect_timeout_s: float = 10.0,
        audio_fast_path: bool = True,
    ) -> None:
        self.model = model
        self.persona: AgentPersona | None = None
        self.log: structlog.stdlib.BoundLogger = log or structlog.get_logger("gateway.live")
        self.machine = SessionMachine(policy or Policy())
        self._client = client
        self._conversation = conversation
        self._connect_timeout = connect_timeout_s
        self._audio_fast_path = audio_fast_path
        self._conn: _Connection | None = None
        self._events: asyncio.Queue[_Item] = asyncio.Queue(maxsize=1024)
        self._takeover: TakeoverFactory | None = None
        self._due: Recover | End | None = None
        self._tool_calls: dict[str, int] = {}
        #: The consumer's model-audio handler while it offers one (:meth:`offer_audio_lane`).
        self._audio_lane: Callable[[AudioOut], None] | None = None
        #: True only while :meth:`next_event` awaits the queue (with nothing due).
        self._consumer_waiting = False

    @property
    def audio_dropped_ms(self) -> float:
        """Caller audio the replay bound pushed out over the call."""
        self.machine.settle()
        return self.machine.journal.dropped_ms

    # ------------------------------------------------------------------ connection lifecycle

    async def open(
        self, persona: AgentPersona, takeover: TakeoverFactory | None = None
    ) -> tuple[bool, float]:
        """The call's first connection, opened with the greeting (or, taking over a call from
        another provider, with ``takeover(False)``); returns (resumed, ms).

        Raises :class:`ModelConnectError` when no connection could be opened.
        """
        self.persona = persona
        self._takeover = takeover
        return await self._establish(self.machine.start())

    async def hand_off(
        self, persona: AgentPersona, takeover: TakeoverFactory
    ) -> tuple[bool, float]:
        """Become ``persona`` on a new connection that resumes the conversation.

        The current connection is closed before the new one is dialled (Gemini refuses a
        resume while it is open). ``takeover(resumed)`` gives the opening turns: a note for a
        resumed session, the history plus the note for a fresh one (the handle was refused).
        """
        self.persona = persona
        self.log = self.log.bind(agent=persona.agent.id)
        self._takeover = takeover
        return await self._establish(self.machine.handoff())

    async def close(self) -> None:
        """End the conversation: close the connection and forget what was queued. Idempotent."""
        self.machine.close()
        await self._drop_connection()

    async def _establish(self, action: Dial | End) -> tuple[bool, float]:
        """Carry out the machine's dial, and whatever it decides when that fails, until a
        connection is open and its opening sent (or the machine gives up)."""
        started = time.perf_counter()
        await self._drop_connection()
        while True:
            if isinstance(action, End):
                raise ModelConnectError(action.reason, code=action.code, permanent=True)
            if action.delay_s:
                await asyncio.sleep(action.delay_s)
            try:
                conn = await self._connect(action)
            except ModelConnectError as exc:
                self.log.warning(
                    "live.connect_failed",
                    code=exc.code,
                    reason=exc.reason,
                    resume=bool(action.handle),
                )
                action = self.machine.dial_failed(exc.code, permanent=exc.permanent)
                continue
            self._conn = conn
            conn.reader = asyncio.create_task(self._read(conn), name=f"live-read-{conn.generation}")
            opening = self.machine.opened(resumed=conn.resumed, now=time.monotonic())
            try:
                await self._send_opening(conn, opening)
            except SEND_ERRORS as exc:
                step = self.machine.closed(
                    conn.generation, _close_code(exc), "closed while opening", now=time.monotonic()
                )
                await self._drop_connection()
                self.log.warning("live.opening_failed", code=_close_code(exc))
                if step is None:  # cannot happen: the connection is the current one
                    raise ModelConnectError("connection lost while opening") from exc
                action = step.dial if isinstance(step, Recover) else step
                continue
            self.machine.opening_sent()
            if opening.kind in ("first", "handoff"):
                self._takeover = None
            return conn.resumed, (time.perf_counter() - started) * 1000

    async def _connect(self, dial: Dial) -> _Connection:
        assert self.persona is not None
        config = live_config(self.persona, handle=dial.handle)
        stack = contextlib.AsyncExitStack()
        try:
            async with asyncio.timeout(self._connect_timeout):
                session = await stack.enter_async_context(
                    self._client.aio.live.connect(model=self.model, config=config)
                )
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, Exception):
                raise _connect_error(exc) from exc
            raise
        raw_send = None
        if self._audio_fast_path and await fast_path.usable(self._client, self.log):
            ws = session._ws
            lane = _Lane(self._lane_open, self._take_lane_audio)
            tap = _AudioTap(ws, dial.generation, self._events, self.log, lane)
            session._ws = tap  # type: ignore[assignment]
            raw_send = DirectSender(ws)
            DirectReader.install(ws)
        return _Connection(dial.generation, session, stack, dial.handle is not None, None, raw_send)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await cancel_and_wait(conn.reader)
        finally:
            # The close handshake is bounded by the client's close_timeout.
            with contextlib.suppress(Exception):
                await conn.stack.aclose()

    async def _send_opening(self, conn: _Connection, opening: Opening) -> None:
        """The opening the machine chose, then whatever was queued meanwhile, in order."""
        turns: Sequence[Turn] = ()
        complete = True
        if opening.kind == "first":
            turns = self._takeover(False) if self._takeover else self._conversation.greeting()
        elif opening.kind == "handoff":
            turns = self._takeover(conn.resumed) if self._takeover else ()
        elif opening.kind == "reseed":
            turns, complete = self._conversation.reseed(until_handle=bool(opening.replay))
        elif opening.kind == "recap":
            turns, complete = self._conversation.recap(cut_off=opening.cut_off)
        if turns:
            entry = Sent("turns", turns=tuple(turns), complete=complete)
            self.machine.resend(entry)
            await self._send_entry(conn, entry)
        for entry in opening.replay:
            self.machine.resend(entry)
            await self._send_entry(conn, entry)
        # Audio keeps arriving while this awaits and is queued behind; the final emptiness
        # check and opening_sent() (which lets sends go straight out) happen without an await.
        while True:
            self.machine.settle()
            queued = self.machine.journal.unsent()
            if not queued:
                break
            for entry in queued:
                self.machine.deliver(entry)
                await self._send_entry(conn, entry)
        if opening.replay:
            self.log.info("live.replayed", messages=len(opening.replay))

    # ------------------------------------------------------------------ sending

    @property
    def audio(self) -> ModelAudio:
        return GEMINI_AUDIO

    async def send_audio(self, audio: bytes) -> None:
        """Caller audio (PCM16 16 kHz); journalled for a resume, queued while reconnecting.

        Fifty times a second per call: a message the socket can take at once is written
        without a coroutine in between (:meth:`send_audio_now`); anything else goes the way of
        every other message (:meth:`_submit`).
        """
        if self.audio_writable():
            self.send_audio_now(audio)
            return
        entry = Sent("audio", pcm=audio, voiced=is_voiced(audio))
        conn = self._conn
        if conn is not None and conn.raw_send is not None and self.machine.accepting:
            if self.machine.record(entry, now=time.monotonic()) is None:
                return  # the call ended
            try:
                await conn.raw_send(realtime_audio_message(audio))
            except SEND_ERRORS as exc:
                entry.carried_by = None  # nobody heard it: the next connection must get it
                self._send_failed(conn, exc)
            return
        await self._submit(entry)

    def audio_writable(self) -> bool:
        conn = self._conn
        return (
            conn is not None
            and conn.raw_send is not None
            and self.machine.accepting
            and conn.raw_send.writable()
        )

    def audio_lane(self, settle: Callable[[], None]) -> AudioLaneState | None:
        """Where the bridge's compiled lane (``gateway/call/lane.py``) may write caller audio
        now, as :meth:`send_audio_now` writes it, and journal it, as :meth:`send_audio_now`
        journals it (through :meth:`SessionMachine.absorb_audio`); None when that is not
        now (no connection takes audio directly). ``settle`` is then called before anything
        here reads what the lane changed."""
        conn, machine = self._conn, self.machine
        if (
            conn is None
            or conn.raw_send is None
            or not machine.accepting
            or machine.phase == "ended"
        ):
            return None
        target = conn.lane_target
        if target is None:
            target = conn.lane_target = conn.raw_send.lane_target(
                AUDIO_MESSAGE_PREFIX,
                AUDIO_MESSAGE_SUFFIX,
                machine.absorb_audio,
                functools.partial(self._lane_write_failed, conn),
            )
            if target is None:
                return None
            machine.settle_hook = settle
        return AudioLaneState(machine.generation, machine.next_index, target)

    def _lane_write_failed(self, conn: _Connection) -> None:
        """The lane's write of the frame it journalled last failed (the transport is aborted):
        what :meth:`send_audio_now` does when its own write fails."""
        self.machine.unsend_last()
        self._send_failed(conn, ConnectionResetError("the model socket failed on a write"))

    def send_audio_now(self, audio: bytes, voiced: bool | None = None) -> None:
        """Caller audio written at once (:meth:`DirectSender.write_base64`), journalled as
        :meth:`send_audio` journals it. Only right after :meth:`audio_writable` said True,
        with nothing awaited or written since (the check is not made twice: this runs fifty
        times a second per call)."""
        conn = self._conn
        assert conn is not None and conn.raw_send is not None
        loud = is_voiced(audio) if voiced is None else voiced
        machine = self.machine
        if machine.record_audio(audio, loud, now=time.monotonic()) is None:
            return  # the call ended
        if not conn.raw_send.write_base64(AUDIO_MESSAGE_PREFIX, audio, AUDIO_MESSAGE_SUFFIX):
            machine.unsend_last()  # the transport failed as it wrote: nobody heard it
            self._send_failed(conn, ConnectionResetError("the model socket failed on a write"))

    async def send_text(self, text: str) -> None:
        """A user text turn (a note the caller does not hear); queued while reconnecting."""
        await self._submit(Sent("turns", turns=(Turn("user", text),)))

    async def playback_cut(self, unheard_ms: float) -> None:
        """Nothing to do: Gemini Live cannot be told how much of an answer was heard (it
        stops generating at barge-in, and its context keeps what it generated)."""

    async def send_tool_response(
        self, call_id: str, name: str, response: dict[str, Any], *, respond: bool = True
    ) -> None:
        """Answer a tool call, on the connection that made it only.

        A resumed or replaced connection does not know the calls of the one before it, so an
        answer for those is dropped (the model asks again if it still needs it).
        """
        generation = self._tool_calls.pop(call_id, None)
        conn = self._conn
        if generation is None or conn is None or conn.generation != generation:
            self.log.warning("live.stale_tool_call_ignored", name=name)
            return
        if not self.machine.is_current(generation):
            self.log.warning("live.stale_tool_call_ignored", name=name)
            return
        try:
            await conn.session.send_tool_response(
                function_responses=[
                    types.FunctionResponse(id=call_id, name=name, response=response)
                ]
            )
        except SEND_ERRORS as exc:
            self._send_failed(conn, exc)

    async def _submit(self, entry: Sent) -> None:
        if self.machine.record(entry, now=time.monotonic()) is None:
            return  # queued: the opening of the next connection delivers it
        conn = self._conn
        assert conn is not None  # accepting implies a connection
        try:
            await self._send_entry(conn, entry)
        except SEND_ERRORS as exc:
            entry.carried_by = None  # nobody heard it: the next connection must get it
            self._send_failed(conn, exc)

    def _send_failed(self, conn: _Connection, exc: Exception) -> None:
        """Stop sending on ``conn`` and let the consumer's next_event handle the loss."""
        self.machine.send_failed(conn.generation)
        with contextlib.suppress(asyncio.QueueFull):  # then the reader reports it too
            self._events.put_nowait((conn.generation, _Dropped(_close_code(exc), "send failed")))

    async def _send_entry(self, conn: _Connection, entry: Sent) -> None:
        if entry.kind == "audio":
            if conn.raw_send is not None:
                await conn.raw_send(realtime_audio_message(entry.pcm))
            else:
                await conn.session.send_realtime_input(
                    audio=types.Blob(data=entry.pcm, mime_type=INPUT_MIME)
                )
        else:
            await self._send_turns(conn, entry.turns, complete=entry.complete)  # type: ignore[arg-type]

    async def _send_turns(
        self, conn: _Connection, turns: Sequence[Turn], *, complete: bool
    ) -> None:
        """Send prompt/history turns; with ``complete`` the model answers them.

        Gemini 3.x rejects ``clientContent`` once a conversation is under way (close 1007), so
        for those models the turns are flattened into one realtime text input instead (which
        the model always answers).
        """
        if self.model.removeprefix("models/").startswith("gemini-3"):
            text = "\n\n".join(f"[{t.role}] {t.text}" for t in turns)
            await conn.session.send_realtime_input(text=text)
        else:
            contents = [types.Content(role=t.role, parts=[types.Part(text=t.text)]) for t in turns]
            await conn.session.send_client_content(turns=contents, turn_complete=complete)

    # ------------------------------------------------------------------ receiving

    async def next_event(self) -> LiveEvent:
        """The next event of the conversation, reconnecting transparently when needed."""
        machine = self.machine
        while True:
            if self._due is not None:
                due, self._due = self._due, None
                return await self._carry_out(due)
            if machine.phase == "ended":
                return self._session_ended()
            deadline = machine.next_deadline()
            self._consumer_waiting = True
            try:
                if deadline is None:
                    generation, item = await self._events.get()
                else:
                    timeout = max(0.0, deadline - time.monotonic())
                    generation, item = await asyncio.wait_for(self._events.get(), timeout)
            except TimeoutError:
                self._due = machine.tick(time.monotonic())
                continue
            finally:
                self._consumer_waiting = False
            if isinstance(item, _Dropped):
                self._due = machine.closed(generation, item.code, item.reason, now=time.monotonic())
                continue
            if not machine.is_current(generation):
                continue  # from a connection already replaced: never acted on
            self._due = self._observe(generation, item)
            return item

    def offer_audio_lane(self, handler: Callable[[AudioOut], None] | None) -> None:
        """Hand model audio to ``handler`` as the socket reads it (None: stop).

        Model audio otherwise takes two task switches and two queues to reach the bridge (the
        SDK's receive task, then :meth:`next_event` in the consumer's). Here a message that is
        only model audio is handed over from the socket's read callback instead, but only
        when that is exactly what :meth:`next_event` would do next: the consumer waits in it
        with nothing queued and nothing due, the SDK's reader waits on the socket with no
        message buffered, and the connection is the current one. The machine is told as
        :meth:`next_event` tells it. Anything else goes the queue's way, so the events keep
        their order. A handler that raises is withdrawn, and the message queued: the
        consumer's own loop meets the error.
        """
        self._audio_lane = handler

    def _lane_open(self, generation: int) -> bool:
        """Whether model audio of connection ``generation`` may take the lane this instant."""
        return (
            self._audio_lane is not None
            and self._consumer_waiting
            and self._due is None
            and self._events.empty()
            and self.machine.is_current(generation)
        )

    def _take_lane_audio(self, generation: int, pcm: bytes) -> bool:
        """Model audio handed to the lane's handler, right after :meth:`_lane_open` said yes
        (with nothing in between); False if the handler raised (it is withdrawn)."""
        handler = self._audio_lane
        assert handler is not None
        event = AudioOut(pcm)
        self._observe(generation, event)
        try:
            handler(event)
        except Exception:
            self._audio_lane = None
            self.log.exception("live.audio_lane_failed")
            return False
        return True

    def _observe(self, generation: int, event: LiveEvent) -> Recover | None:
        """Tell the machine what this event means for the connection's policy."""
        machine, now = self.machine, time.monotonic()
        if isinstance(event, AudioOut):
            # Not AgentTranscript: the transcription of a turn may trail its turnComplete, and
            # would then hold the model "busy" until the next turn.
            machine.model_output(generation)
        elif isinstance(event, ToolCall):
            machine.model_output(generation)
            self._tool_calls[event.call_id] = generation
        elif isinstance(event, TurnComplete | Interrupted):
            return machine.turn_boundary(generation, now=now)
        elif isinstance(event, HandleUpdated):
            return machine.handle_updated(
                generation, event.handle, consumed_index=event.consumed_index, now=now
            )
        elif isinstance(event, GoAway):
            seconds = _duration_seconds(event.time_left) if event.time_left else None
            return machine.go_away(generation, seconds, now=now)
        return None

    async def _carry_out(self, step: Recover | End) -> SessionEnded | Reconnected:
        if isinstance(step, End):
            await self._drop_connection()
            return self._session_ended()
        self._tool_calls.clear()  # calls of the old connection are never answered on a new one
        try:
            resumed, elapsed = await self._establish(step.dial)
        except ModelConnectError:
            return self._session_ended()
        return Reconnected(step.reason, resumed=resumed, elapsed_ms=elapsed, detail=step.detail)

    def _session_ended(self) -> SessionEnded:
        ended = self.machine.ended
        if ended is None:
            return SessionEnded("closed")
        return SessionEnded(ended.reason, ended.code)

    async def _read(self, conn: _Connection) -> None:
        code: int | None = None
        reason = "receive loop ended"
        try:
            while True:  # receive() stops after every turnComplete; the connection does not
                async with contextlib.aclosing(conn.session.receive()) as messages:
                    async for message in messages:
                        for event in _translate(message):
                            await self._events.put((conn.generation, event))
        except errors.APIError as exc:
            code, reason = exc.code, str(exc.details or exc.message or exc.status or "closed")
        except websockets.exceptions.ConnectionClosed as exc:
            code = _close_code(exc)
            reason = exc.rcvd.reason if exc.rcvd else "connection lost"
        except Exception as exc:  # the SDK raises TypeError/ValueError on frames it cannot parse
            reason = f"{type(exc).__name__}: {exc}"
        await self._events.put((conn.generation, _Dropped(code, reason)))


def _translate(message: types.LiveServerMessage) -> list[LiveEvent]:
    out: list[LiveEvent] = []
    content = message.server_content
    if content is not None:
        if content.model_turn is not None and content.model_turn.parts:
            for part in content.model_turn.parts:  # 3.x models put several parts in one
                blob = part.inline_data
                if blob is not None and blob.data and _is_24k_pcm(blob.mime_type):
                    out.append(AudioOut(blob.data))
        if content.input_transcription is not None and content.input_transcription.text:
            out.append(CallerTranscript(content.input_transcription.text))
        if content.output_transcription is not None and content.output_transcription.text:
            out.append(AgentTranscript(content.output_transcription.text))
        if content.interrupted:
            out.append(Interrupted())
        if content.turn_complete:
            out.append(TurnComplete())
    if message.tool_call is not None:
        for call in message.tool_call.function_calls or []:
            out.append(ToolCall(call.id or "", call.name or "", dict(call.args or {})))
    if message.tool_call_cancellation is not None:
        out.append(ToolCallCancelled(tuple(message.tool_call_cancellation.ids or ())))
    update = message.session_resumption_update
    if update is not None and update.resumable and update.new_handle:
        # An empty update means "not now", never "forget".
        consumed = getattr(update, "last_consumed_client_message_index", None)
        out.append(HandleUpdated(update.new_handle, consumed))
    if message.go_away is not None:
        out.append(GoAway(message.go_away.time_left))
    if message.usage_metadata is not None:
        out.append(_usage(message.usage_metadata))
    return out


def _usage(usage: types.UsageMetadata) -> UsageReported:
    """One turn's token counts; any count the server left out (proto3 omits zeros) is 0.

    Per turn, not cumulative: a probe of the real service logged each ``usageMetadata`` of a
    three-turn session on gemini-2.5-flash-native-audio and gemini-3.1-flash-live (prompt
    373/413/452, response 23/22/24: the prompt grows by the context, the response does not
    accumulate; pydantic/pydantic-ai#7269), and pipecat reports each one as that turn's LLM
    usage (``GeminiMultimodalLiveLLMService._handle_evt_usage_metadata``). The message may
    ride on the same frame as ``turnComplete`` or model audio (mastra-ai/mastra#23805): such a
    frame is never the audio fast path's, whose messages hold model audio and nothing else.
    """
    prompt = usage.prompt_token_count or 0
    response = usage.response_token_count or 0
    total = usage.total_token_count or prompt + response
    return UsageReported(prompt, response, total)


@dataclass(frozen=True, slots=True)
class _Lane:
    """The session's audio lane as a connection's tap sees it."""

    #: Whether audio of connection ``generation`` may take the lane this instant.
    open: Callable[[int], bool]
    #: Hand it over; False: not taken (queue it).
    take: Callable[[int, bytes], bool]


class _AudioTap:
    """Stands in for the SDK session's websocket and takes model-audio messages off the top.

    The SDK's receive loop calls ``recv``; every message that is only model audio (or only a
    piece of transcription, or only a turn's bookkeeping) is turned into its events here and
    queued, a frame with no top-level key the SDK knows (which would make it raise) is
    skipped, and everything else is handed to the SDK unchanged, in order, so the events of
    one connection keep their order. Everything but ``recv`` is the real socket's (``send``,
    ``close``, the close code the SDK reads on errors).

    It also hooks the socket's ``process_event`` (``websockets``' handler of each parsed
    frame): a whole data frame read while ``recv`` waits with nothing buffered, that the fast
    path reads, is delivered from there, without waking the SDK's reader: model audio to the
    session's audio lane (:meth:`LiveSession.offer_audio_lane`) while it is open, and
    otherwise its events straight onto the session's queue. A ``websockets`` without that
    shape gets neither.
    """

    __slots__ = (
        "_events",
        "_frames",
        "_generation",
        "_lane",
        "_log",
        "_process",
        "_reading",
        "_warned",
        "_ws",
    )

    def __init__(
        self,
        ws: Any,
        generation: int,
        events: asyncio.Queue[_Item],
        log: structlog.stdlib.BoundLogger,
        lane: _Lane | None = None,
    ) -> None:
        self._ws = ws
        self._generation = generation
        self._events = events
        self._log = log
        self._warned = False
        self._lane = lane
        #: True only while ``recv`` awaits the socket.
        self._reading = False
        frames = getattr(getattr(ws, "recv_messages", None), "frames", None)
        process = getattr(ws, "process_event", None)
        self._frames: Sized | None = None
        self._process: Callable[[Any], None] | None = None
        if lane is not None and isinstance(frames, Sized) and callable(process):
            self._frames, self._process = frames, process
            ws.process_event = self._process_event

    def _process_event(self, event: Any) -> None:
        """``websockets``' frame handler, with the audio lane and the session's queue in
        front of its own queue."""
        assert self._process is not None and self._frames is not None
        if (
            self._reading
            and getattr(event, "fin", False)
            and getattr(event, "opcode", None) in _WHOLE_MESSAGE
            and not len(self._frames)
        ):
            data = event.data  # bytes, or a bytearray from websockets' reader
            if self._deliver(data if type(data) is bytes else bytes(data)):
                return
        self._process(event)

    def _deliver(self, raw: bytes) -> bool:
        """Deliver a message read while ``recv`` waits with nothing buffered, if the fast
        path reads it: model audio to the lane when it is open, else its events straight onto
        the session's queue, as ``recv`` would put them a task switch later (it would be the
        next to put anything there, so the order is the same). False: not delivered, for
        ``websockets`` to queue (a message for the SDK, or no room on the session's queue)."""
        generation, lane = self._generation, self._lane
        pcm = model_audio(raw)
        if pcm is not None:
            if lane is not None and lane.open(generation) and lane.take(generation, pcm):
                return True
            items: list[LiveEvent] = [AudioOut(pcm)]
        else:
            fast = _fast_events(raw)
            if fast is None:
                return False
            items = fast
        events = self._events
        if events.maxsize and events.maxsize - events.qsize() < len(items):
            return False
        for item in items:
            events.put_nowait((generation, item))
        return True

    async def recv(self, decode: bool | None = None) -> str | bytes:
        events, generation = self._events, self._generation
        while True:
            # Called as the SDK calls it: with decode=False, or bare when that raised TypeError.
            self._reading = True
            try:
                raw: str | bytes = await (
                    self._ws.recv() if decode is None else self._ws.recv(decode)
                )
            finally:
                self._reading = False
            pcm = model_audio(raw)
            if pcm is not None:
                await events.put((generation, AudioOut(pcm)))
            elif (fast := _fast_events(raw)) is not None:
                for item in fast:
                    await events.put((generation, item))
            elif fast_path.understood(raw):
                return raw
            elif not self._warned:
                self._warned = True
                self._log.warning("live.unknown_message_skipped", head=fast_path.keys_of(raw))

    def __aiter__(self) -> _AudioTap:
        return self  # an SDK that iterates the socket gets the same filtering

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except websockets.exceptions.ConnectionClosedOK:
            raise StopAsyncIteration from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


def _fast_events(raw: bytes | str) -> list[LiveEvent] | None:
    """The events of a message that is only a piece of transcription or only a turn's
    bookkeeping (model audio is tried first, apart); None: the SDK reads it."""
    transcript = model_transcript(raw)
    if transcript is not None:
        speaker, text = transcript
        return [CallerTranscript(text) if speaker == "caller" else AgentTranscript(text)]
    return model_control(raw)


#: The opcodes of a message's first frame: text and binary (``websockets.frames.Opcode``).
_WHOLE_MESSAGE = frozenset({Opcode.TEXT, Opcode.BINARY})


def _is_24k_pcm(mime: str | None) -> bool:
    """Gemini's output is 24 kHz PCM; audio at any other rate would play at the wrong speed."""
    return mime is None or "rate=" not in mime or "rate=24000" in mime


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _duration_seconds(value: str) -> float | None:
    match = _DURATION.match(value)
    return float(match.group(1)) if match else None


def _close_code(exc: BaseException) -> int | None:
    if isinstance(exc, errors.APIError):
        return exc.code
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        return exc.rcvd.code if exc.rcvd else 1006
    return None


def _connect_error(exc: Exception) -> ModelConnectError:
    if isinstance(exc, ModelConnectError):
        return exc
    if isinstance(exc, errors.APIError):
        reason = str(exc.details or exc.message or exc.status or "connect failed")
        return ModelConnectError(reason, code=exc.code)
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        status = exc.response.status_code
        return ModelConnectError(
            f"HTTP {status} on connect", code=status, permanent=status in PERMANENT_HTTP_STATUSES
        )
    if isinstance(exc, TimeoutError):
        return ModelConnectError("connect timed out")
    if isinstance(exc, OSError):
        return ModelConnectError(f"cannot reach the Live endpoint: {exc.strerror or exc}")
    if isinstance(exc, websockets.exceptions.WebSocketException):
        return ModelConnectError(f"websocket error: {exc}")
    return ModelConnectError(f"{type(exc).__name__}: {exc}")


def _fits_the_seam(session: LiveSession) -> ModelSession:
    """Never called: mypy checks here that the Gemini session still fits the seam."""
    return session
