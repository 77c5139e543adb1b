"""CallBridge: one phone call, from the carrier's ``start`` to the teardown of both sides.

Five tasks run per call, all created here and all cancelled and awaited when any one ends:

- the *caller loop* reads the carrier socket: caller audio goes up to the model (transcoded), marks
  and DTMF are handled, ``stop`` or a closed socket ends the call;
- the *model loop* reads the model session's events: speech goes down to the playout queue,
  barge-in clears it, transcripts are kept, and a ``handoff_conversation`` call moves the
  conversation to the next agent on a new connection;
- the *playout* paces audio to the carrier and is the socket's only writer;
- the *watchdog* ends a call nobody is on (idle) or one past its duration limit, hands the
  caller's keypad entries to the model when they are complete, and checks on a quiet caller;
- the *end request* waits for the end to be asked for: by the server (drain), or by the call
  itself once the agent's goodbye has played (``end_call``, a quiet line) or its transfer went
  through.

Work that takes a while is done on *side tasks* the bridge owns the same way: an HTTP tool
call (caller audio and barge-in go on meanwhile), waiting for a farewell to finish playing,
a transfer (:mod:`~gateway.call.actions` decides what each does).

(The Live session runs its own reader task per connection; :meth:`ModelSession.close` ends it.)

Whatever ends the call — the caller hanging up, the model ending for good, a protocol error —
the ``finally`` in :meth:`CallBridge.run` closes the model session and the carrier socket.

The bridge owns the call's lifecycle and its tasks; the rest is delegated, one module each:
events and the personal-data rule (:mod:`~gateway.call.emitter`), tallies and metrics
(:mod:`~gateway.call.stats`), tool calls (:mod:`~gateway.call.tools`), what a new connection
is told (:mod:`~gateway.call.conversation`), the deployment's decisions
(:mod:`~gateway.call.hooks`) and the model behind :class:`~gateway.model.session.ModelSession`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol

import structlog

from gateway.agents import BUSY, Agent, AgentGraph, Fallback, Stage
from gateway.aio import cancel_and_wait
from gateway.audio.budget import RealTimeBudget
from gateway.audio.transcode import FRAME_MS, AnyDownlink, Uplink, downlink_for, uplink_for
from gateway.call.actions import CallActions
from gateway.call.conversation import CallConversation
from gateway.call.emitter import CallEvents, CallObserver
from gateway.call.hooks import CallHooks, Refusal
from gateway.call.http_tools import HttpToolRunner
from gateway.call.idle import CHECK_IN_PROMPT, GOODBYE_PROMPT, IdleAction, IdleWatch
from gateway.call.keypad import Keypad, entry_text
from gateway.call.lane import CallerLane
from gateway.call.playout import Playout
from gateway.call.stats import CALLER_ENDED, MODEL_FAILED, CallStats
from gateway.call.tools import HandoffRequest, answer_tool_call
from gateway.call.transcript import Transcript
from gateway.carriers.base import (
    PHASE_PARAMETER,
    AudioReceived,
    CarrierCodec,
    CarrierEvent,
    CarrierReportedError,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from gateway.metrics import Metrics
from gateway.model.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    CallerTurnEnded,
    GoAway,
    HandleUpdated,
    Interrupted,
    Reconnected,
    SessionEnded,
    ToolCall,
    ToolCallCancelled,
    TurnComplete,
    UsageReported,
)
from gateway.model.persona import AgentPersona
from gateway.model.session import ModelAudio, ModelConnectError, ModelSession, SessionFactory
from gateway.records.record import CallRecord
from gateway.records.recording import CallRecording
from gateway.records.service import CallRecords
from gateway.variables import PARAM_PREFIX, call_variables

#: After this many messages handled without suspending, a loop yields to the others. A queue
#: with messages waiting never suspends its reader, so after a stall one call's backlog could
#: otherwise hold the event loop for 100 ms and more (measured), starving every other call.
FAIRNESS_EVERY = 16
#: How often the watchdog looks at the call (keypad entries wake it on time regardless).
WATCH_STEP_S = 0.5
#: Seconds the caller loop has, once a send to the caller failed, to read how the caller left.
CALLER_LEFT_GRACE_S = 0.5

#: Handles one kind of event; returns the end reason if the event ends the call.
_Handler = Callable[[Any], Awaitable[str | None]]


class CarrierSocket(Protocol):
    """The carrier's websocket as the bridge needs it (adapted from Starlette in the app)."""

    async def receive(self) -> str | bytes | None:
        """The next message; ``None`` once the peer has disconnected."""
        ...

    async def send(self, text: str) -> None: ...

    def send_now(self, text: str) -> bool:
        """Write ``text`` at once and say True, or do nothing and say False (then
        :meth:`send`, which waits or raises as it must)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close if still open; never raises."""
        ...

    def take_media(self, lane: Callable[[bytes], bool] | None) -> bool:
        """Offer the socket a media lane (None: withdraw it). A socket that has one calls
        ``lane(raw)`` with each text message's bytes as it arrives, while no message waits for
        :meth:`receive` ahead of it, and queues the message as usual unless ``lane`` returns
        True (taken). Returns whether the socket has such a lane (else nothing changes)."""
        ...


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    #: A carrier sends ``start`` right after the upgrade; a socket silent this long is not one.
    start_timeout_s: float = 5.0
    max_message_bytes: int = 64 * 1024
    playout_lead_ms: float = 240.0
    #: Malformed messages tolerated on one call before it is judged broken or hostile.
    max_bad_messages: int = 200
    #: Seconds; 0 for no limit.
    max_duration_s: float = 0.0
    #: Seconds with neither caller media nor agent audio before the call is judged dead.
    idle_timeout_s: float = 60.0
    #: Transcript text in the logs (personal data); observers always get it.
    log_transcripts: bool = False
    #: A keypad entry ends this long after its last key (or on ``#``).
    dtmf_interdigit_s: float = 1.5
    #: Quiet seconds before the agent checks on the caller, then before it says goodbye.
    idle_prompt_s: float = 20.0
    idle_hangup_s: float = 20.0
    #: Where ``{{date}}`` and ``{{time}}`` are told.
    timezone: tzinfo = UTC
    #: Each call is recorded to ``<dir>/<call id>.wav`` when set (RECORDINGS_DIR).
    recordings_dir: Path | None = None
    #: Caller frames through the compiled lane where it applies (``gateway/call/lane.py``);
    #: False: every frame takes the bridge's own path (the lane's specification).
    compiled_lane: bool = True


class CallBridge:
    """Wires one carrier stream to one model conversation."""

    def __init__(
        self,
        socket: CarrierSocket,
        codec: CarrierCodec,
        *,
        graph: AgentGraph,
        new_live_session: SessionFactory,
        options: BridgeOptions | None = None,
        observers: tuple[CallObserver, ...] = (),
        hooks: CallHooks | None = None,
        metrics: Metrics | None = None,
        tool_runner: HttpToolRunner | None = None,
        records: CallRecords | None = None,
    ) -> None:
        self.socket = socket
        self.codec = codec
        self.graph = graph
        self.options = options or BridgeOptions()
        self.stats = CallStats(metrics)
        self.transcript = Transcript()
        self.end_reason = "not started"
        self.stage: Stage = graph.first_stage
        self.agent: Agent = graph.agent(self.stage.agent_id)
        self.events = CallEvents(
            structlog.get_logger("gateway.call").bind(carrier=codec.carrier),
            observers,
            agent_id=self.agent.id,
            log_transcripts=self.options.log_transcripts,
        )
        self._started: StreamStarted | None = None
        self._records = records
        #: The call's record, built from its events (when records are kept).
        self.record: CallRecord | None = None
        #: The call's stereo WAV (when RECORDINGS_DIR is set).
        self.recording: CallRecording | None = None
        self._budget: RealTimeBudget | None = None
        self._new_live_session = new_live_session
        self._hooks = hooks or CallHooks()
        self._end_requested: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._begun_at: float | None = None
        self._last_activity = time.monotonic()
        #: When the current cue for an agent turn happened (connect, caller speech, handoff).
        self._cue_at: float | None = None
        self._live: ModelSession | None = None
        self._conversation = CallConversation(self.transcript, self.events, self._persona)
        self._uplink: Uplink | None = None
        self._downlink: AnyDownlink | None = None
        #: The formats the transcoders were made for (a handoff to another provider changes).
        self._model_audio: ModelAudio | None = None
        #: What the caller said (payloads) and keyed in (texts) during a handoff to another
        #: provider (None: not holding): the new session's formats are known only once it is
        #: open, and the old agent is on its way out. The new session gets it first, in order.
        self._held: list[bytes | str] | None = None
        self._playout: Playout | None = None
        self._turns = 0
        self._speaking = False
        self._keypad = Keypad(self.options.dtmf_interdigit_s)
        #: The caller loop is parked in ``socket.receive()``: a media message may be taken
        #: straight from the socket (:meth:`_take_media`) without reordering anything.
        self._caller_waiting = False
        #: The compiled lane, while the call has one (see :meth:`_media_handler`).
        self._lane: CallerLane | None = None
        self._idle: IdleWatch | None = None
        #: The call's prompt variables (``{{caller_number}}``…), known at ``start``.
        self._variables: dict[str, str] = {}
        #: Owned like the five tasks: cancelled and awaited when the call ends.
        self._side_tasks: set[asyncio.Task[None]] = set()
        #: Marks whose echo someone awaits (the audio before them has been heard).
        self._mark_waiters: dict[str, asyncio.Future[None]] = {}
        self.actions = CallActions(
            events=self.events,
            stats=self.stats,
            hooks=self._hooks,
            tool_runner=tool_runner,
            spawn=self._spawn,
            played_out=self._played_out,
            speaking=lambda: self._speaking,
            end=self._end_with,
        )

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        """The call's logger, bound with the call and its active agent."""
        return self.events.log

    # ------------------------------------------------------------------ lifecycle

    def request_end(self, reason: str) -> None:
        """End the call politely from outside (drain timeout): the fallback verbs then play."""
        if not self._end_requested.done():
            self._end_requested.set_result(reason)

    async def run(self) -> None:
        """Serve the call until it ends; always leaves both sides closed."""
        tasks: list[asyncio.Task[str]] = []
        started_at = time.monotonic()
        try:
            started = await self._await_start()
            if started is None:
                return
            refusal = self._hooks.admit(started)
            if refusal is not None:
                await self._refuse(started, refusal)
                return
            live = self._begin(started)
            try:
                _, elapsed = await live.open(self._persona())
            except ModelConnectError as exc:
                self.end_reason = "model_unavailable"
                self.stats.error("live_connect")
                self.log.error("call.model_unavailable", reason=exc.reason, code=exc.code)
                return
            self._wire_audio(live.audio)
            self._cue_at = time.monotonic() if self.agent.greeting else None
            self.events.emit("call.connected", live_connect_ms=round(elapsed, 1))
            self.socket.take_media(self._media_handler())
            caller = asyncio.create_task(self._caller_loop(), name="caller")
            model = asyncio.create_task(self._model_loop(), name="model")
            playout = asyncio.create_task(self._run_playout(), name="playout")
            tasks = [
                caller,
                model,
                playout,
                asyncio.create_task(self._watchdog(), name="watchdog"),
                asyncio.create_task(self._wait_for_end_request(), name="end-request"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finished = next(iter(done))
            if finished is playout and not playout.cancelled() and not playout.exception():
                finished = await self._how_the_caller_left(playout, caller)
            failure = None if finished.cancelled() else finished.exception()
            if finished.cancelled():
                self.end_reason = "cancelled"
            elif failure is not None:
                self.end_reason = f"error in {finished.get_name()}"
                self.log.error("call.task_failed", task=finished.get_name(), exc_info=failure)
            else:
                self.end_reason = finished.result()
            await self._settle_transfer()
        except asyncio.CancelledError:
            self.end_reason = "cancelled"  # server shutdown; the finally still cleans up
            raise
        finally:
            self.socket.take_media(None)
            self._close_lane()
            await cancel_and_wait(*tasks, *self._side_tasks)
            if self._live is not None:
                await self._live.close()
            handled = await self._run_fallback() or await self.actions.end_at_carrier(
                self.end_reason
            )
            await self.socket.close(1000, "call ended")
            await self._run_hang_up(handled or self.actions.transferred_to is not None)
            self._finish(time.monotonic() - started_at)

    @staticmethod
    async def _how_the_caller_left(
        playout: asyncio.Task[str], caller: asyncio.Task[str]
    ) -> asyncio.Task[str]:
        """The task whose ending says why the call ended, once a send to the caller failed.

        A carrier that hangs up sends ``stop`` and closes: a send racing that close fails
        before the caller loop has read the ``stop`` waiting for it, and the call would be
        recorded as dropped (``caller_disconnected``) when the caller hung up. The caller loop
        gets :data:`CALLER_LEFT_GRACE_S` to read what the socket still holds; it ends at once
        either way, on the ``stop`` or on the disconnect.
        """
        await asyncio.wait([caller], timeout=CALLER_LEFT_GRACE_S)
        if caller.done() and not caller.cancelled() and caller.exception() is None:
            return caller
        return playout

    async def _refuse(self, started: StreamStarted, refusal: Refusal) -> None:
        """A start that does not become a call. Over capacity, the caller (whose token proved
        the call is real) hears the busy message where the carrier's API allows; otherwise
        closing the stream runs the verbs after ``</Connect>``. An unauthorized stream gets
        nothing: its call id is not to be trusted with an API call."""
        self.end_reason = refusal.outcome
        self.events.bind(call_id=started.call_id)
        self.log.warning(f"call.{refusal.outcome}", reason=refusal.reason)
        if refusal.outcome == "unauthorized":
            self.stats.error(refusal.error_kind)
            await self.socket.close(1008, "unauthorized")
            return
        await self._give_fallback(started, BUSY)
        await self.socket.close(1000, "busy")

    async def _run_fallback(self) -> bool:
        if self.end_reason not in MODEL_FAILED or self._started is None:
            return False
        return await self._give_fallback(self._started, self.graph.fallback(self.agent))

    async def _give_fallback(self, started: StreamStarted, fallback: Fallback) -> bool:
        hook = self._hooks.fallback
        if hook is None:
            return False
        try:
            return await hook(started, fallback)
        except Exception as exc:
            self.stats.error("fallback")
            self.log.warning("call.fallback_failed", error=str(exc))
            return False

    async def _settle_transfer(self) -> None:
        await self.actions.settle_transfer()
        if self.actions.transferred_to is not None:
            self.end_reason = "transferred"

    async def _run_hang_up(self, fallback_handled: bool) -> None:
        hang_up = self._hooks.hang_up
        if hang_up is None or fallback_handled or self._started is None:
            return  # no call to hang up (never begun), or the fallback ended it
        if self.end_reason in CALLER_ENDED:
            return
        try:
            await hang_up(self._started.call_id)
        except Exception as exc:
            self.stats.error("hangup")
            self.log.warning("call.hangup_failed", error=str(exc))

    async def _await_start(self) -> StreamStarted | None:
        try:
            async with asyncio.timeout(self.options.start_timeout_s):
                while True:
                    data = await self.socket.receive()
                    if data is None:
                        self.end_reason = "caller_disconnected_before_start"
                        return None
                    try:
                        event = self._parse(data)
                    except ProtocolError as exc:
                        if exc.fatal or not self._tolerate(str(exc)):
                            self.end_reason = "protocol_error"
                            self.log.warning("call.protocol_error", error=str(exc))
                            return None
                        continue
                    if isinstance(event, StreamStarted):  # (a stop before it is refused)
                        return event
        except TimeoutError:
            self.end_reason = "no_start"
            self.log.warning("call.no_start", timeout_s=self.options.start_timeout_s)
            return None

    def _begin(self, started: StreamStarted) -> ModelSession:
        self._started = started
        params = started.parameters
        phase = params.get(PHASE_PARAMETER)
        if phase is not None and not self.graph.has_phase(phase):
            # Checked at POST /calls; the agents file may have changed since the dial.
            self.log.warning("call.unknown_phase", phase=phase[:64])
        stage = self.graph.start_stage(started.own_number, phase=phase)
        if stage is not self.stage:  # the phase asked for, or a route for the gateway's number
            self.stage, self.agent = stage, self.graph.agent(stage.agent_id)
            self.events.agent_changed(self.agent.id)
        self._variables = call_variables(
            caller=params.get("from", ""),
            called=params.get("to", ""),
            call_id=started.call_id,
            carrier=self.codec.carrier,
            now=datetime.now(self.options.timezone),
            tz=self.options.timezone,
            params={
                k.removeprefix(PARAM_PREFIX): v
                for k, v in params.items()
                if k.startswith(PARAM_PREFIX)
            },
        )
        self.events.call_began(started.call_id, started.stream_id)
        self._begun_at = self._last_activity = time.monotonic()
        if self.options.recordings_dir is not None:
            self._start_recording(started, self.options.recordings_dir)
        if self._records is not None:
            self._open_record(started)
        self._idle = IdleWatch(
            self.options.idle_prompt_s, self.options.idle_hangup_s, now=self._begun_at
        )
        fmt = started.audio_format
        self._budget = RealTimeBudget(fmt.frame_bytes * 1000 / FRAME_MS, started_at=self._begun_at)
        self.stats.call_began()
        live = self._live = self._new_live_session(
            self.log, self._conversation, started.audio_format
        )
        self.actions.begin(live, started)
        self.events.emit(
            "call.started",
            carrier=self.codec.carrier,
            encoding=started.audio_format.encoding,
            direction=started.direction,
            parameters=sorted(started.parameters),
            # The numbers: personal data (the log masks them at the webhook already).
            _private={"from": params.get("from", ""), "to": params.get("to", "")},
        )
        return live

    def _start_recording(self, started: StreamStarted, directory: Path) -> None:
        """Record the call; a recording that cannot start is logged, and the call goes on."""
        assert self._begun_at is not None
        try:
            self.recording = CallRecording.create(
                directory,
                started.call_id,
                caller_format=started.audio_format,
                agent_format=started.outbound_format,
                started_at=self._begun_at,
            )
        except (OSError, ValueError) as exc:
            self.stats.error("recording")
            self.log.error("call.recording_failed", error=f"{type(exc).__name__}: {exc}")

    def _open_record(self, started: StreamStarted) -> None:
        """Start the call's record: one more observer of its events, written at once."""
        assert self._records is not None
        params = started.parameters
        record = self.record = CallRecord(
            call_id=started.call_id,
            carrier=self.codec.carrier,
            direction=started.direction,
            caller=params.get("from", ""),
            called=params.get("to", ""),
            agent_id=self.agent.id,
        )
        if self.recording is not None:
            record.recording = str(self.recording.path)
        self.events.observers = (*self.events.observers, record.observe)
        self._records.started(record)

    def _finish(self, duration: float) -> None:
        for entry in self.transcript.finish_all():  # the last words, cut off by the end
            self.events.record(entry)
        if self.recording is not None:
            self.recording.close()
        tallies = self.stats.call_ended(
            self.end_reason,
            began=self._begun_at is not None,
            playout=self._playout,
            model_audio_dropped_ms=self._live.audio_dropped_ms if self._live else 0.0,
            budget=self._budget,
        )
        self.events.emit(
            "call.ended", reason=self.end_reason, duration_s=round(duration, 3), **tallies
        )
        if self.record is not None and self._records is not None:
            self.record.finish(self.end_reason)
            self._records.finished(self.record)

    # ------------------------------------------------------------------ caller side

    async def _caller_loop(self) -> str:
        handlers: dict[type[Any], _Handler] = {
            MarkPlayed: self._on_mark,
            DtmfReceived: self._on_dtmf,
            StreamStopped: self._on_stop,
            CarrierReportedError: self._on_carrier_error,
        }
        handled = 0
        while True:
            handled += 1
            if handled % FAIRNESS_EVERY == 0:
                await asyncio.sleep(0)
            self._caller_waiting = True
            lane = self._lane
            if lane is not None:
                lane.waiting = True
            try:
                data = await self.socket.receive()
            finally:
                self._caller_waiting = False
                if lane is not None:
                    lane.waiting = False
            if data is None:
                return "caller_disconnected"
            try:
                event = self._parse(data)
            except ProtocolError as exc:
                if exc.fatal or not self._tolerate(str(exc)):
                    self.log.warning("call.protocol_error", error=str(exc))
                    return "protocol_error"
                continue
            if type(event) is AudioReceived:  # the hot path: 50 a second
                await self._on_caller_audio(event)
                continue
            handler = handlers.get(type(event))  # a repeated start, or nothing: ignored
            if handler is not None and (ended := await handler(event)) is not None:
                return ended

    async def _on_caller_audio(self, event: AudioReceived) -> None:
        admitted = self._admit_caller_audio(event.payload)
        if admitted is not None:
            assert self._live is not None
            await self._live.send_audio(admitted[0])

    def _media_handler(self) -> Callable[[bytes], bool]:
        """What the socket hands each media message to first: the compiled lane
        (:mod:`gateway.call.lane`), whose fallback is :meth:`_take_media`, or that alone.

        No lane for a call being recorded (the recording hears each frame), for a carrier whose
        messages have no quick shape (Telnyx reorders by its numbering), or without the
        compiled module."""
        codec, budget = self.codec, self._budget
        shape = codec.quick_shape
        if (
            CallerLane is None
            or not self.options.compiled_lane
            or self.recording is not None
            or shape is None
            or budget is None
        ):
            return self._take_media
        bytes_per_second, started_at, allowance_s = budget.terms
        lane = self._lane = CallerLane(
            self._take_media,
            self._lane_reload,
            self._lane_settled,
            shape[0],
            shape[1],
            self.options.max_message_bytes,
            bytes_per_second,
            started_at,
            allowance_s,
        )
        return lane.take

    def _lane_reload(
        self,
    ) -> tuple[float, Callable[[bytes], tuple[bytes, bool]], int, int, tuple[Any, ...]] | None:
        """What the lane works from until it next settles: the budget's total, the uplink's
        step, and where the session takes audio now (None: nowhere, or the bridge must see
        each frame itself: a handoff holds them)."""
        live, budget, uplink, lane = self._live, self._budget, self._uplink, self._lane
        if live is None or budget is None or uplink is None or lane is None:
            return None
        if self._held is not None:
            return None
        state = live.audio_lane(lane.settle)
        if state is None:
            return None
        step = uplink.feed_measured
        return budget.admitted_s, step, state.generation, state.next_index, state.target

    def _lane_settled(
        self, frames: int, admitted_s: float, last_at: float, last_loud_at: float
    ) -> None:
        """The lane's frames since it last settled, counted as :meth:`_admit_caller_audio`
        counts each: ``frames`` taken, the budget's total now, the last frame's time and
        the last voiced one's (negative: none)."""
        stats = self.stats
        stats.frames_in += frames
        stats.frames_in_lane += frames
        stats.frames_admitted(frames)
        assert self._budget is not None
        self._budget.admitted_s = admitted_s
        if last_at > self._last_activity:
            self._last_activity = last_at
        if last_loud_at >= 0 and self._idle is not None:
            self._idle.caller_spoke(last_loud_at)

    def _settle_lane(self) -> None:
        """Bring the lane's frames in before the bridge reads or changes what it counts."""
        lane = self._lane
        if lane is not None:
            lane.settle()

    def _close_lane(self) -> None:
        lane, self._lane = self._lane, None
        if lane is not None:
            lane.close()

    def _take_media(self, raw: bytes) -> bool:
        """The media lane: a caller frame handled as the socket reads it, with no queue, task
        switch or coroutine between the carrier's socket and the model's (fifty times a second
        per call).

        Only a media message, only while the caller loop waits with nothing queued (so order
        is kept), and only when the model's socket can take the audio this instant. Anything
        else is declined before it has any effect, and goes the usual way, through the loop.
        A media message in the carriers' plain shape is read straight from its bytes
        (:meth:`~gateway.carriers.stream.StreamCodec.quick_audio`: printable ASCII, so valid
        UTF-8 too); any other is decoded and parsed as the loop would.
        """
        live = self._live
        if not self._caller_waiting or live is None or not live.audio_writable():
            return False
        if len(raw) > self.options.max_message_bytes:
            return False  # the loop's parse refuses it
        payload = self.codec.quick_audio(raw)
        if payload is None:
            try:
                event = self._parse(raw.decode())
            except (ProtocolError, UnicodeDecodeError):
                return False  # the loop's parse (or the socket's UTF-8 check) reports it
            if type(event) is not AudioReceived:
                return False
            payload = event.payload
        admitted = self._admit_caller_audio(payload)
        if admitted is not None:
            # Nothing since audio_writable() touched the model's socket, or awaited.
            live.send_audio_now(*admitted)
        return True

    def _admit_caller_audio(self, payload: bytes) -> tuple[bytes, bool] | None:
        """Count, budget, record and transcode one caller frame: the model's audio, and
        whether it is voiced (for the idle watch; the model session need not measure it
        again), or None when the frame is dropped (audio arriving faster than real time)."""
        self._settle_lane()
        uplink, budget = self._uplink, self._budget
        assert uplink is not None
        assert budget is not None
        self.stats.frames_in += 1  # a plain counter: no call, fifty times a second
        now = self._last_activity = time.monotonic()
        if not budget.admit(len(payload), now):
            if self.stats.audio_ran_ahead():  # said once; the budget totals the drops
                self.log.warning(
                    "call.caller_audio_ahead_of_real_time",
                    admitted_s=round(budget.admitted_s, 2),
                    detail="audio arriving faster than a phone can send it is dropped",
                )
            return None
        self.stats.frame_admitted()
        if self.recording is not None:
            self.recording.caller(payload)
        if self._held is not None:
            self._held.append(payload)
            return None
        audio, loud = uplink.feed_measured(payload)
        if loud and self._idle is not None:
            self._idle.caller_spoke(now)
        return audio, loud

    async def _on_mark(self, event: MarkPlayed) -> None:
        assert self._playout is not None
        if self._playout.mark_echoed(event.name):
            self.events.emit("agent.playback_done", mark=event.name)
        waiter = self._mark_waiters.pop(event.name, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _on_dtmf(self, event: DtmfReceived) -> None:
        keys = self._keypad.press(event.digit, time.monotonic())
        if keys is not None:
            await self._send_keys(keys)

    async def _send_keys(self, keys: tuple[str, ...]) -> None:
        """One keypad entry to the active agent, as one text turn. During a handoff or a
        reconnect the session queues it and the next connection delivers it."""
        assert self._live is not None
        text = entry_text(keys)
        self.events.record(self.transcript.note("note", self.agent.id, text))
        # The keys can be a PIN or a card number: personal data, like a transcript.
        self.events.emit("dtmf.entry", keys=len(keys), _private={"digits": "".join(keys)})
        if self._held is not None:
            self._held.append(text)
            return
        await self._live.send_text(text)

    async def _on_stop(self, _: StreamStopped) -> str:
        return "caller_hung_up"

    async def _on_carrier_error(self, event: CarrierReportedError) -> None:
        self.stats.error("carrier")
        self.log.warning("carrier.error", code=event.code, title=event.title, detail=event.detail)

    def _parse(self, data: str | bytes) -> CarrierEvent | None:
        if isinstance(data, bytes):
            raise ProtocolError("binary frame (the carrier sends text)")
        if len(data) > self.options.max_message_bytes:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the cap")
        return self.codec.parse(data)

    def _tolerate(self, problem: str) -> bool:
        """Count a dropped message; False once the call has sent too many to keep."""
        n = self.stats.bad_message()
        if n <= 5 or n % 100 == 0:  # log the first few, then sample: a flood must not flood logs
            self.log.warning("call.message_dropped", problem=problem, count=n)
        return n <= self.options.max_bad_messages

    # ------------------------------------------------------------------ model side

    async def _model_loop(self) -> str:
        live = self._live
        assert live is not None
        handlers: dict[type[Any], _Handler] = {
            AgentTranscript: self._on_agent_transcript,
            CallerTranscript: self._on_caller_transcript,
            CallerTurnEnded: self._on_caller_turn_ended,
            Interrupted: self._on_interrupted,
            TurnComplete: self._on_turn_complete,
            UsageReported: self._on_usage,
            ToolCall: self._on_tool_call,
            HandleUpdated: self._on_handle_updated,
            Reconnected: self._on_reconnected,
            GoAway: self._on_go_away,
            ToolCallCancelled: self._on_tool_call_cancelled,
            SessionEnded: self._on_session_ended,
        }
        handled = 0
        # Model audio may skip the queue while this loop waits with nothing ahead of it.
        live.offer_audio_lane(self._on_agent_audio)
        try:
            while True:
                handled += 1
                if handled % FAIRNESS_EVERY == 0:
                    await asyncio.sleep(0)
                event = await live.next_event()
                if type(event) is AudioOut:  # the hot path: 50 a second, no await
                    self._on_agent_audio(event)
                    continue
                handler = handlers.get(type(event))
                if handler is not None and (ended := await handler(event)) is not None:
                    return ended
        finally:
            live.offer_audio_lane(None)

    def _on_agent_audio(self, event: AudioOut) -> None:
        downlink, playout = self._downlink, self._playout
        assert downlink is not None
        assert playout is not None
        frames = downlink.feed(event.pcm)
        playout.enqueue_all(frames)
        self._last_activity = time.monotonic()
        self.stats.frames_out(len(frames))
        if not self._speaking:
            self._speaking = True
            self._agent_started_speaking()

    async def _on_agent_transcript(self, event: AgentTranscript) -> None:
        self.events.record(self.transcript.agent_piece(event.text, self.agent.id))

    async def _on_caller_transcript(self, event: CallerTranscript) -> None:
        if not event.late:
            await self._on_caller_turn_ended(CallerTurnEnded())
        self.events.record(self.transcript.caller_piece(event.text, self.agent.id))

    async def _on_caller_turn_ended(self, _: CallerTurnEnded) -> None:
        self._settle_lane()  # the lane's voiced frames came before this
        self._cue_at = time.monotonic()  # the caller spoke: the next audio answers it
        if self._idle is not None:
            self._idle.caller_spoke(self._cue_at)

    async def _on_interrupted(self, _: Interrupted) -> None:
        downlink, playout, live = self._downlink, self._playout, self._live
        assert downlink is not None
        assert playout is not None
        assert live is not None
        now = time.monotonic()
        if not self._speaking and not playout.busy(now):
            return  # nothing is playing: the caller only began to speak (OpenAI says so too)
        # What the caller never heard: still at the carrier, queued here, or not yet framed.
        queued_ms = playout.queued_frames * FRAME_MS
        pending_ms = downlink.pending_bytes / downlink.format.frame_bytes * FRAME_MS
        unheard_ms = playout.unheard_s(now) * 1000 + queued_ms + pending_ms
        dropped = playout.interrupt()
        downlink.reset()
        self._speaking = False
        self._release_mark_waiters()  # the audio they waited for will never play
        self.stats.barge_in(dropped)
        self.events.record(self.transcript.finish_agent(interrupted=True))
        self.events.emit(
            "agent.interrupted", frames_dropped=dropped, unheard_ms=round(unheard_ms, 1)
        )
        await live.playback_cut(unheard_ms)

    async def _on_turn_complete(self, _: TurnComplete) -> None:
        """The agent's turn is over: its audio tail and a mark follow what is queued."""
        playout = self._playout
        assert playout is not None
        if self._speaking:
            self._flush_downlink()
            self._turns += 1
            playout.mark(f"turn-{self._turns}")
        self.actions.turn_completed()
        for entry in self.transcript.finish_all():
            self.events.record(entry)

    async def _on_usage(self, event: UsageReported) -> None:
        """One turn's tokens as the provider counts them: the call's cost is the sum of these."""
        self.events.emit(
            "live.usage",
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            total_tokens=event.total_tokens,
        )

    async def _on_tool_call(self, event: ToolCall) -> str | None:
        live = self._live
        assert live is not None
        if await self.actions.refuse_while_ending(event):
            return None
        request = await answer_tool_call(
            event,
            live,
            agent=self.agent,
            targets=self.graph.targets(self.stage),
            http_tools=self.graph.http_tools(self.agent),
            events=self.events,
        )
        if isinstance(request, HandoffRequest):
            self.actions.cancel_tools()  # the new agent's connection would not take answers
            if await self._hand_off(request):
                return None
            return "model_ended"  # no connection for the new agent: the call cannot go on
        if request is not None:
            self.actions.take(request, self.agent)
        return None

    def _end_with(self, reason: str) -> None:
        """End the call with ``reason`` (its goodbye has played, or it was transferred)."""
        if not self._end_requested.done():
            self._end_requested.set_result(reason)

    async def _played_out(self) -> None:
        """Return once the caller has heard everything queued so far (a mark came back)."""
        playout = self._playout
        assert playout is not None
        if self._speaking:
            self._flush_downlink()
        self._turns += 1
        name = f"played-{self._turns}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mark_waiters[name] = waiter
        playout.mark(name)
        try:
            await waiter
        finally:
            self._mark_waiters.pop(name, None)

    def _release_mark_waiters(self) -> None:
        for waiter in self._mark_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._mark_waiters.clear()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A side task of this call: owned, cancelled and awaited with the call's tasks."""
        task = asyncio.create_task(work, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)
        return task

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and (failure := task.exception()) is not None:
            self.log.error("call.task_failed", task=task.get_name(), exc_info=failure)

    async def _on_handle_updated(self, _: HandleUpdated) -> None:
        for entry in self.transcript.finish_all():
            self.events.record(entry)
        self.transcript.mark_handle()

    async def _on_reconnected(self, event: Reconnected) -> None:
        self.actions.cancel_tools()  # the new connection does not know the old one's calls
        self.stats.reconnected(event.reason)
        self.events.emit("live.reconnected", reason=event.reason, detail=event.detail,
                         resumed=event.resumed, ms=round(event.elapsed_ms, 1))  # fmt: skip

    async def _on_go_away(self, event: GoAway) -> None:
        self.events.emit("live.go_away", time_left=event.time_left)

    async def _on_tool_call_cancelled(self, event: ToolCallCancelled) -> None:
        self.actions.cancel_tools(event.call_ids)
        self.events.emit("live.tool_call_cancelled", ids=list(event.call_ids))

    async def _on_session_ended(self, event: SessionEnded) -> str:
        self.log.warning("call.model_ended", reason=event.reason, code=event.code)
        return "model_ended"

    async def _hand_off(self, request: HandoffRequest) -> bool:
        """Move the call to the request's agent on a new connection, keeping the conversation;
        False if no connection could be opened."""
        live = self._live
        assert live is not None
        agent, stage = request.target.agent, request.target.stage
        # The old agent's words so far keep playing: push its resampler tail out too.
        self._flush_downlink()
        previous = self.agent
        opening = self._conversation.takeover(
            previous, agent, reason=request.reason, summary=request.summary
        )
        self.stage, self.agent = stage, agent
        self.events.agent_changed(agent.id)
        if agent.provider != previous.provider:
            self._settle_lane()  # what the lane sent is the old agent's; the rest is held
            self._held = []  # what the caller says meanwhile is for the new agent
        try:
            resumed, elapsed = await live.hand_off(self._persona(), opening)
        except ModelConnectError as exc:
            self._held = None
            self.stats.error("live_connect")
            self.log.error("handoff.failed", target=agent.id, reason=exc.reason, code=exc.code)
            return False
        # The new agent runs on another provider: its formats hold from this instant, so the
        # transcoders change before anything awaits (ModelSession.hand_off).
        if live.audio != self._model_audio:
            self._wire_audio(live.audio)
        await self._release_held(live)
        self._cue_at = time.monotonic()
        self.stats.handed_off(elapsed)
        self.events.emit(
            "handoff.completed",
            from_agent=previous.id,
            to_agent=agent.id,
            phase=stage.phase,
            resumed=resumed,
            reconnect_ms=round(elapsed, 1),
            # The model's words about the caller: personal data.
            _private={"reason": request.reason, "summary": request.summary},
        )
        return True

    async def _release_held(self, live: ModelSession) -> None:
        """Send what was held during the handoff, in order, then stop holding: whatever
        arrives while these sends await joins the queue behind them."""
        held, uplink = self._held, self._uplink
        assert uplink is not None
        while held:
            self._held = []
            for item in held:
                if isinstance(item, str):
                    await live.send_text(item)
                    continue
                audio, loud = uplink.feed_measured(item)
                if loud and self._idle is not None:
                    self._idle.caller_spoke(time.monotonic())
                await live.send_audio(audio)
            held = self._held
        self._held = None

    def _wire_audio(self, audio: ModelAudio) -> None:
        """Transcoders between the carrier's formats and the model's, and the playout (made
        once; a handoff to another provider makes new transcoders, the playout stays)."""
        started = self._started
        assert started is not None
        self._settle_lane()  # the lane transcodes with the uplink it reloads
        self._model_audio = audio
        self._uplink = uplink_for(started.audio_format, audio.input)
        self._downlink = downlink_for(started.outbound_format, audio.output)
        if self._playout is None:
            self._playout = Playout(
                self.codec, self.socket.send, lead_ms=self.options.playout_lead_ms,
                tap=self.recording,  # the agent's audio as the caller hears it: paced, cut
                track_heard=audio.tracks_playback, send_now=self.socket.send_now,
            )  # fmt: skip
        else:
            self._playout.track_heard = self._playout.track_heard or audio.tracks_playback

    def _flush_downlink(self) -> None:
        """Queue the resampler's tail behind the agent's audio; the agent stopped speaking."""
        downlink, playout = self._downlink, self._playout
        assert downlink is not None
        assert playout is not None
        playout.enqueue_all(downlink.flush())
        self._speaking = False

    def _agent_started_speaking(self) -> None:
        if self._cue_at is not None:
            latency = time.monotonic() - self._cue_at
            self._cue_at = None
            self.stats.first_audio(latency)
            self.events.emit("agent.speaking", first_audio_ms=round(latency * 1000, 1))
        else:
            self.events.emit("agent.speaking")

    # ------------------------------------------------------------------ the other tasks

    async def _run_playout(self) -> str:
        assert self._playout is not None
        try:
            await self._playout.run()
        except Exception as exc:  # the carrier socket is gone: the call is over
            self.log.info("call.send_failed", error=type(exc).__name__)
        return "caller_disconnected"

    async def _watchdog(self) -> str:
        """End calls that hang (nothing heard from either side, or past the duration limit),
        hand over finished keypad entries, and look after a quiet line."""
        opts = self.options
        step = min(WATCH_STEP_S, opts.idle_timeout_s / 4)
        while True:
            now = time.monotonic()
            wake = now + step
            if self._keypad.deadline is not None:
                wake = min(wake, self._keypad.deadline)
            await asyncio.sleep(max(0.0, wake - now))
            self._settle_lane()
            now = time.monotonic()
            if opts.max_duration_s and now - (self._begun_at or now) >= opts.max_duration_s:
                return "max_duration"
            if now - self._last_activity >= opts.idle_timeout_s:
                return "idle_timeout"
            keys = self._keypad.due(now)
            if keys is not None:
                await self._send_keys(keys)
            if self._idle is not None and not self.actions.ending:
                await self._watch_quiet_line(self._idle, now)

    async def _watch_quiet_line(self, idle: IdleWatch, now: float) -> None:
        playout, live = self._playout, self._live
        assert playout is not None
        assert live is not None
        busy = self._speaking or playout.busy(now) or self.actions.tools_running
        action = idle.check(now, agent_busy=busy)
        if action is IdleAction.CHECK_IN:
            self.events.emit("call.idle_check_in")
            await live.send_text(CHECK_IN_PROMPT)
        elif action is IdleAction.GOODBYE:
            self.events.emit("call.idle_goodbye")
            self.actions.end_after_farewell("idle_ended")
            await live.send_text(GOODBYE_PROMPT)

    async def _wait_for_end_request(self) -> str:
        return await self._end_requested

    def _persona(self) -> AgentPersona:
        return AgentPersona(
            self.agent,
            tuple(self.graph.targets(self.stage)),
            http_tools=self.graph.http_tools(self.agent),
            variables=self._variables,
        )
