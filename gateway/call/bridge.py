"""CallBridge: one phone call, from the carrier's ``start`` to the teardown of both sides.

Five tasks run per call, all owned here and all cancelled and awaited when any one ends:

- the *caller loop* reads the carrier socket: caller audio goes up to Gemini (transcoded), marks
  and DTMF are handled, ``stop`` or a closed socket ends the call;
- the *model loop* reads Gemini's events: speech goes down to the playout queue, barge-in
  clears it, transcripts are kept, and a ``handoff_conversation`` call moves the conversation
  to the next agent on a new connection;
- the *playout* paces audio to the carrier and is the socket's only writer;
- the *watchdog* ends a call nobody is on (idle) or one past its duration limit;
- the *end request* waits for the server to ask for the end (drain).

Whatever ends the call — the caller hanging up, Gemini ending for good, a protocol error —
the ``finally`` in :meth:`CallBridge.run` closes the Live session and the carrier socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from google.genai import types

from gateway.agents import BUSY, Agent, AgentGraph, Fallback, Stage
from gateway.aio import cancel_and_wait
from gateway.audio.budget import RealTimeBudget
from gateway.audio.transcode import FRAME_MS, Downlink, Uplink, downlink_for, uplink_for
from gateway.call.handoff import (
    HANDOFF_ACCEPTED,
    context_turns,
    dtmf_note,
    greeting_turns,
    handoff_rejected,
    history_turns,
    recap_turns,
    takeover_prompt,
    user_turn,
)
from gateway.call.playout import Playout
from gateway.call.transcript import Entry, Transcript
from gateway.carriers.base import (
    AudioReceived,
    CarrierCodec,
    CarrierReportedError,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from gateway.live.config import HANDOFF_TOOL, AgentPersona
from gateway.live.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    GoAway,
    HandleUpdated,
    Interrupted,
    Reconnected,
    SessionEnded,
    ToolCall,
    ToolCallCancelled,
    TurnComplete,
)
from gateway.live.session import Conversation, LiveConnectError, LiveSession
from gateway.metrics import Metrics

#: After this many messages handled without suspending, a loop yields to the others. A queue
#: with messages waiting never suspends its reader, so after a stall one call's backlog could
#: otherwise hold the event loop for 100 ms and more (measured), starving every other call.
FAIRNESS_EVERY = 16

#: End reasons where the caller is already gone, so there is nothing to hang up.
CALLER_ENDED = frozenset({"caller_hung_up", "caller_disconnected"})
#: End reasons where Gemini is gone for good: the active agent's fallback runs.
MODEL_FAILED = frozenset({"model_ended", "model_unavailable"})


def outcome(end_reason: str) -> str:
    """The ``gateway_calls_total{outcome}`` label for an end reason (a small, fixed set)."""
    if end_reason in CALLER_ENDED:
        return "completed"
    if end_reason in MODEL_FAILED:
        return "model_failed"
    if end_reason in (
        "idle_timeout", "max_duration", "drained", "unauthorized", "protocol_error",
        "rejected_capacity",
    ):  # fmt: skip
        return end_reason
    if end_reason in ("no_start", "caller_disconnected_before_start"):
        return "abandoned"
    return "error"


#: Receives every call event (also logged); the demo prints them, tests assert on them.
CallObserver = Callable[[str, Mapping[str, Any]], None]
#: Builds the call's Live session: the call's logger and what seeds a new connection.
LiveSessionFactory = Callable[[structlog.stdlib.BoundLogger, Conversation], LiveSession]


class CarrierSocket(Protocol):
    """The carrier's websocket as the bridge needs it (adapted from Starlette in the app)."""

    async def receive(self) -> str | bytes | None:
        """The next message; ``None`` once the peer has disconnected."""
        ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close if still open; never raises."""
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a stream's ``start`` does not make it a call."""

    #: The ``gateway_calls_total`` outcome: ``unauthorized`` or ``rejected_capacity``.
    outcome: str
    #: For the log.
    reason: str
    #: The ``gateway_errors_total`` kind an unauthorized stream counts as.
    error_kind: str = "stream_auth"


def _admit_all(_: StreamStarted) -> Refusal | None:
    return None


@dataclass(frozen=True, slots=True)
class CallHooks:
    """Decisions that belong to the deployment and the carrier, not to the bridge."""

    #: Decides, before Gemini is dialled, whether the started stream becomes a call: None to
    #: bridge it (the hook has then counted it as a call), else why not.
    admit: Callable[[StreamStarted], Refusal | None] = _admit_all
    #: Ends the phone call when the gateway ends it and closing the stream alone would not.
    hang_up: Callable[[str], Awaitable[None]] | None = None
    #: Gives the caller a fallback (the active agent's when Gemini is gone for good, the busy
    #: message when there is no room) through the carrier's API; True if that also took care
    #: of ending the call (so ``hang_up`` must not cut it short), False if it could not.
    fallback: Callable[[StreamStarted, Fallback], Awaitable[bool]] | None = None


@dataclass(slots=True)
class CallStats:
    bad_messages: int = 0
    frames_in: int = 0
    #: Whether caller audio ever ran ahead of real time (and some was dropped).
    audio_ahead: bool = False
    handoffs: int = 0
    reconnects: int = 0
    barge_ins: int = 0


class CallBridge:
    """Wires one carrier stream to one Gemini Live conversation."""

    def __init__(
        self,
        socket: CarrierSocket,
        codec: CarrierCodec,
        *,
        graph: AgentGraph,
        new_live_session: LiveSessionFactory,
        options: BridgeOptions | None = None,
        observers: tuple[CallObserver, ...] = (),
        hooks: CallHooks | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.socket = socket
        self.codec = codec
        self.graph = graph
        self.options = options or BridgeOptions()
        self.observers = observers
        self.stats = CallStats()
        self.transcript = Transcript()
        self.end_reason = "not started"
        self.stage: Stage = graph.first_stage
        self.agent: Agent = graph.agent(self.stage.agent_id)
        self.call_id = ""
        self._started: StreamStarted | None = None
        self._budget: RealTimeBudget | None = None
        self.log: structlog.stdlib.BoundLogger = structlog.get_logger("gateway.call").bind(
            carrier=codec.carrier
        )
        self._new_live_session = new_live_session
        self._hooks = hooks or CallHooks()
        self._metrics = metrics
        self._frames_in = metrics.audio_frames.labels("in") if metrics else None
        self._frames_out = metrics.audio_frames.labels("out") if metrics else None
        self._end_requested: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._begun_at: float | None = None
        self._last_activity = time.monotonic()
        #: When the current cue for an agent turn happened (connect, caller speech, handoff).
        self._cue_at: float | None = None
        self._live: LiveSession | None = None
        self._uplink: Uplink | None = None
        self._downlink: Downlink | None = None
        self._playout: Playout | None = None
        self._turns = 0
        self._speaking = False

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
            except LiveConnectError as exc:
                self.end_reason = "model_unavailable"
                self._count_error("live_connect")
                self.log.error("call.model_unavailable", reason=exc.reason, code=exc.code)
                return
            self._cue_at = time.monotonic() if self.agent.greeting else None
            self._emit("call.connected", live_connect_ms=round(elapsed, 1))
            assert self._playout is not None
            tasks = [
                asyncio.create_task(self._caller_loop(), name="caller"),
                asyncio.create_task(self._model_loop(), name="model"),
                asyncio.create_task(self._run_playout(), name="playout"),
                asyncio.create_task(self._watchdog(), name="watchdog"),
                asyncio.create_task(self._wait_for_end_request(), name="end-request"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finished = next(iter(done))
            failure = None if finished.cancelled() else finished.exception()
            if finished.cancelled():
                self.end_reason = "cancelled"
            elif failure is not None:
                self.end_reason = f"error in {finished.get_name()}"
                self.log.error("call.task_failed", task=finished.get_name(), exc_info=failure)
            else:
                self.end_reason = finished.result()
        except asyncio.CancelledError:
            self.end_reason = "cancelled"  # server shutdown; the finally still cleans up
            raise
        finally:
            await cancel_and_wait(*tasks)
            if self._live is not None:
                await self._live.close()
            handled = await self._run_fallback()
            await self.socket.close(1000, "call ended")
            await self._run_hang_up(handled)
            self._finish(time.monotonic() - started_at)

    async def _refuse(self, started: StreamStarted, refusal: Refusal) -> None:
        """A start that does not become a call. Over capacity, the caller (whose token proved
        the call is real) hears the busy message where the carrier's API allows; otherwise
        closing the stream runs the verbs after ``</Connect>``. An unauthorized stream gets
        nothing: its call id is not to be trusted with an API call."""
        self.end_reason = refusal.outcome
        self.log = self.log.bind(call_id=started.call_id)
        self.log.warning(f"call.{refusal.outcome}", reason=refusal.reason)
        if refusal.outcome == "unauthorized":
            self._count_error(refusal.error_kind)
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
            self._count_error("fallback")
            self.log.warning("call.fallback_failed", error=str(exc))
            return False

    async def _run_hang_up(self, fallback_handled: bool) -> None:
        hang_up = self._hooks.hang_up
        if hang_up is None or fallback_handled or not self.call_id:
            return
        if self.end_reason in CALLER_ENDED or self._begun_at is None:
            return
        try:
            await hang_up(self.call_id)
        except Exception as exc:
            self._count_error("hangup")
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
                    if isinstance(event, StreamStarted):
                        return event
                    if isinstance(event, StreamStopped):
                        self.end_reason = "caller_hung_up"
                        return None
        except TimeoutError:
            self.end_reason = "no_start"
            self.log.warning("call.no_start", timeout_s=self.options.start_timeout_s)
            return None

    def _begin(self, started: StreamStarted) -> LiveSession:
        self.call_id = started.call_id
        self._started = started
        self.log = self.log.bind(
            call_id=started.call_id, stream_id=started.stream_id, agent=self.agent.id
        )
        self._uplink = uplink_for(started.audio_format)
        self._downlink = downlink_for(started.outbound_format)
        self._playout = Playout(self.codec, self.socket.send, lead_ms=self.options.playout_lead_ms)
        self._begun_at = self._last_activity = time.monotonic()
        fmt = started.audio_format
        self._budget = RealTimeBudget(fmt.frame_bytes * 1000 / FRAME_MS, started_at=self._begun_at)
        if self._metrics is not None:
            self._metrics.active_calls.inc()
        live = self._live = self._new_live_session(self.log, _CallConversation(self))
        self._emit(
            "call.started",
            encoding=started.audio_format.encoding,
            parameters=sorted(started.parameters),
        )
        return live

    def _finish(self, duration: float) -> None:
        self.transcript.finish_all()
        playout = self._playout
        metrics = self._metrics
        if metrics is not None:
            if self._begun_at is not None:
                metrics.active_calls.dec()
            metrics.calls.labels(outcome(self.end_reason)).inc()
            if playout is not None and playout.frames_overflowed:
                metrics.dropped_frames.labels("overflow").inc(playout.frames_overflowed)
            if self._live is not None and self._live.audio_dropped_ms:
                frames = int(self._live.audio_dropped_ms // FRAME_MS)
                metrics.dropped_frames.labels("reconnect_buffer").inc(frames)
            if self._budget is not None and self._budget.dropped_s:
                metrics.caller_audio_dropped_seconds.inc(self._budget.dropped_s)
        self._emit(
            "call.ended",
            reason=self.end_reason,
            duration_s=round(duration, 3),
            handoffs=self.stats.handoffs,
            reconnects=self.stats.reconnects,
            barge_ins=self.stats.barge_ins,
            bad_messages=self.stats.bad_messages,
            frames_in=self.stats.frames_in,
            frames_out=playout.frames_sent if playout else 0,
            frames_dropped=playout.frames_dropped if playout else 0,
            audio_dropped_ms=round(self._live.audio_dropped_ms) if self._live else 0,
            caller_audio_dropped_s=round(self._budget.dropped_s, 3) if self._budget else 0.0,
        )

    # ------------------------------------------------------------------ caller side

    async def _caller_loop(self) -> str:
        live, uplink, playout, budget = self._live, self._uplink, self._playout, self._budget
        assert live is not None
        assert uplink is not None
        assert playout is not None
        assert budget is not None
        handled = 0
        while True:
            handled += 1
            if handled % FAIRNESS_EVERY == 0:
                await asyncio.sleep(0)
            data = await self.socket.receive()
            if data is None:
                return "caller_disconnected"
            try:
                event = self._parse(data)
            except ProtocolError as exc:
                if exc.fatal or not self._tolerate(str(exc)):
                    self.log.warning("call.protocol_error", error=str(exc))
                    return "protocol_error"
                continue
            if isinstance(event, AudioReceived):
                self.stats.frames_in += 1
                now = self._last_activity = time.monotonic()
                if not budget.admit(len(event.payload), now):
                    self._audio_ahead_of_time()
                    continue
                if self._frames_in is not None:
                    self._frames_in.inc()
                await live.send_audio(uplink.feed(event.payload))
            elif isinstance(event, MarkPlayed):
                if playout.mark_echoed(event.name):
                    self._emit("agent.playback_done", mark=event.name)
            elif isinstance(event, DtmfReceived):
                self._record(self.transcript.note("note", self.agent.id, f"DTMF {event.digit}"))
                await live.send_text(dtmf_note(event.digit))
            elif isinstance(event, StreamStopped):
                return "caller_hung_up"
            elif isinstance(event, CarrierReportedError):
                self._count_error("carrier")
                self.log.warning("carrier.error", code=event.code, title=event.title,
                                 detail=event.detail)  # fmt: skip

    def _audio_ahead_of_time(self) -> None:
        """Caller audio beyond real time was dropped: say so once per call (it is counted)."""
        assert self._budget is not None
        if not self.stats.audio_ahead:
            self.stats.audio_ahead = True
            self._count_error("caller_audio_ahead")
            self.log.warning(
                "call.caller_audio_ahead_of_real_time",
                admitted_s=round(self._budget.admitted_s, 2),
                detail="audio arriving faster than a phone can send it is dropped",
            )

    def _parse(self, data: str | bytes) -> Any:
        if isinstance(data, bytes):
            raise ProtocolError("binary frame (the carrier sends text)")
        if len(data) > self.options.max_message_bytes:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the cap")
        return self.codec.parse(data)

    def _tolerate(self, problem: str) -> bool:
        """Count a dropped message; False once the call has sent too many to keep."""
        self.stats.bad_messages += 1
        self._count_error("bad_message")
        n = self.stats.bad_messages
        if n <= 5 or n % 100 == 0:  # log the first few, then sample: a flood must not flood logs
            self.log.warning("call.message_dropped", problem=problem, count=n)
        return n <= self.options.max_bad_messages

    # ------------------------------------------------------------------ model side

    async def _model_loop(self) -> str:
        live, downlink, playout = self._live, self._downlink, self._playout
        assert live is not None
        assert downlink is not None
        assert playout is not None
        handled = 0
        while True:
            handled += 1
            if handled % FAIRNESS_EVERY == 0:
                await asyncio.sleep(0)
            event = await live.next_event()
            if isinstance(event, AudioOut):
                frames = downlink.feed(event.pcm)
                for frame in frames:
                    playout.enqueue(frame)
                self._last_activity = time.monotonic()
                if self._frames_out is not None:
                    self._frames_out.inc(len(frames))
                if not self._speaking:
                    self._speaking = True
                    self._agent_started_speaking()
            elif isinstance(event, AgentTranscript):
                self._record(self.transcript.agent_piece(event.text, self.agent.id))
            elif isinstance(event, CallerTranscript):
                self._cue_at = time.monotonic()  # the caller spoke: the next audio answers it
                self._record(self.transcript.caller_piece(event.text, self.agent.id))
            elif isinstance(event, Interrupted):
                dropped = playout.interrupt()
                downlink.reset()
                self._speaking = False
                self.stats.barge_ins += 1
                if self._metrics is not None:
                    self._metrics.dropped_frames.labels("barge_in").inc(dropped)
                self._record(self.transcript.finish_agent(interrupted=True))
                self._emit("agent.interrupted", frames_dropped=dropped)
            elif isinstance(event, TurnComplete):
                self._end_of_turn()
            elif isinstance(event, ToolCall):
                if not await self._on_tool_call(event):
                    return "model_ended"
            elif isinstance(event, HandleUpdated):
                for entry in self.transcript.finish_all():
                    self._record(entry)
                self.transcript.mark_handle()
            elif isinstance(event, Reconnected):
                self.stats.reconnects += 1
                if self._metrics is not None:
                    self._metrics.live_reconnects.labels(event.reason).inc()
                self._emit("live.reconnected", reason=event.reason, detail=event.detail,
                           resumed=event.resumed, ms=round(event.elapsed_ms, 1))  # fmt: skip
            elif isinstance(event, GoAway):
                self._emit("live.go_away", time_left=event.time_left)
            elif isinstance(event, ToolCallCancelled):
                self._emit("live.tool_call_cancelled", ids=list(event.call_ids))
            elif isinstance(event, SessionEnded):
                self.log.warning("call.model_ended", reason=event.reason, code=event.code)
                return "model_ended"

    def _end_of_turn(self) -> None:
        downlink, playout = self._downlink, self._playout
        assert downlink is not None
        assert playout is not None
        if self._speaking:
            for frame in downlink.flush():
                playout.enqueue(frame)
            self._turns += 1
            playout.mark(f"turn-{self._turns}")
            self._speaking = False
        for entry in self.transcript.finish_all():
            self._record(entry)

    async def _on_tool_call(self, call: ToolCall) -> bool:
        """Answer a tool call; False if the call cannot continue (no model connection)."""
        live = self._live
        assert live is not None
        if call.name != HANDOFF_TOOL:
            self.log.warning("call.unknown_tool", name=call.name)
            await live.send_tool_response(call.call_id, call.name, {"error": "unknown tool"})
            return True
        targets = {t.agent.id: t for t in self.graph.targets(self.stage)}
        target = targets.get(str(call.args.get("target", "")))
        if target is None:
            self._emit("handoff.rejected", target=str(call.args.get("target"))[:80])
            await live.send_tool_response(
                call.call_id, call.name, handoff_rejected(call.args.get("target"), list(targets))
            )
            return True
        reason = str(call.args.get("reason", ""))[:500]
        summary = str(call.args.get("summary", ""))[:2000]
        await live.send_tool_response(call.call_id, call.name, dict(HANDOFF_ACCEPTED))
        return await self._hand_off(target.agent, target.stage, reason=reason, summary=summary)

    async def _hand_off(self, agent: Agent, stage: Stage, *, reason: str, summary: str) -> bool:
        """Move the call to ``agent`` on a new connection, keeping the conversation."""
        live, downlink, playout = self._live, self._downlink, self._playout
        assert live is not None
        assert downlink is not None
        assert playout is not None
        # The old agent's words so far keep playing: push its resampler tail out too.
        for frame in downlink.flush():
            playout.enqueue(frame)
        self._speaking = False
        for entry in self.transcript.finish_all():
            self._record(entry)
        since = self.transcript.since_handle()
        previous = self.agent
        self._record(
            self.transcript.note("handoff", agent.id, f"{previous.id} -> {agent.id}: {reason}")
        )
        self.stage, self.agent = stage, agent
        self.log = self.log.bind(agent=agent.id)
        prompt = takeover_prompt(agent, reason=reason, summary=summary, since=since)

        def opening(resumed: bool) -> list[types.Content]:
            if resumed:
                return [user_turn(prompt)]
            return history_turns(self.transcript.entries, prompt)

        try:
            resumed, elapsed = await live.hand_off(self._persona(), opening)
        except LiveConnectError as exc:
            self._count_error("live_connect")
            self.log.error("handoff.failed", target=agent.id, reason=exc.reason, code=exc.code)
            return False
        self._cue_at = time.monotonic()
        self.stats.handoffs += 1
        if self._metrics is not None:
            self._metrics.handoffs.inc()
            self._metrics.handoff_seconds.observe(elapsed / 1000)
        self._emit(
            "handoff.completed",
            from_agent=previous.id,
            to_agent=agent.id,
            phase=stage.phase,
            resumed=resumed,
            reconnect_ms=round(elapsed, 1),
            _private={"reason": reason},  # the model's words about the caller
        )
        return True

    # ------------------------------------------------------------------ helpers

    async def _wait_for_end_request(self) -> str:
        return await self._end_requested

    async def _watchdog(self) -> str:
        """End calls that hang: nothing heard from either side, or past the duration limit."""
        opts = self.options
        step = min(1.0, opts.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            if opts.max_duration_s and now - (self._begun_at or now) >= opts.max_duration_s:
                return "max_duration"
            if now - self._last_activity >= opts.idle_timeout_s:
                return "idle_timeout"

    def _agent_started_speaking(self) -> None:
        if self._cue_at is not None:
            latency = time.monotonic() - self._cue_at
            self._cue_at = None
            if self._metrics is not None:
                self._metrics.first_audio_seconds.observe(latency)
            self._emit("agent.speaking", first_audio_ms=round(latency * 1000, 1))
        else:
            self._emit("agent.speaking")

    def _count_error(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.errors.labels(kind).inc()

    async def _run_playout(self) -> str:
        assert self._playout is not None
        try:
            await self._playout.run()
        except Exception as exc:  # the carrier socket is gone: the call is over
            self.log.info("call.send_failed", error=type(exc).__name__)
        return "caller_disconnected"

    def _persona(self) -> AgentPersona:
        return AgentPersona(self.agent, tuple(self.graph.targets(self.stage)))

    def _record(self, entry: Entry | None) -> None:
        if entry is not None:
            self._emit(
                "transcript",
                speaker=entry.speaker,
                agent_id=entry.agent_id,
                at=entry.at,
                interrupted=entry.interrupted,
                chars=len(entry.text),
                _private={"text": entry.text},
            )

    def _emit(self, name: str, _private: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Log a call event and tell the observers. ``_private`` fields (what was said, what
        the model wrote about the caller) are personal data: observers get them, the log only
        with ``LOG_TRANSCRIPTS=true``."""
        private = _private or {}
        if self.options.log_transcripts:
            self.log.info(name, **fields, **private)
        else:
            self.log.info(name, **fields)
        if self.observers:
            payload = {"call_id": self.call_id, "agent": self.agent.id, **fields, **private}
            for observer in self.observers:
                observer(name, payload)


class _CallConversation:
    """The call's side of :class:`~gateway.live.session.Conversation`: what a new Live
    connection is told first, from the active agent and the call's transcript."""

    __slots__ = ("_bridge",)

    def __init__(self, bridge: CallBridge) -> None:
        self._bridge = bridge

    def greeting(self) -> list[types.Content]:
        return greeting_turns(self._bridge.agent)

    def reseed(self, *, until_handle: bool) -> tuple[list[types.Content], bool]:
        """After a fault with no usable handle: the transcript, then "carry on"."""
        bridge = self._bridge
        self._close_utterances(cut_off=False)
        transcript = bridge.transcript
        if until_handle:
            entries = transcript.entries[: transcript.handle_index]
            if not entries:
                return greeting_turns(bridge.agent), True
            return context_turns(entries), False
        if not transcript.entries:
            return greeting_turns(bridge.agent), True
        note = (
            "[The connection was briefly interrupted.] Continue the conversation naturally "
            "from where it stands, without mentioning the interruption."
        )
        return history_turns(transcript.entries, note), True

    def recap(self, *, cut_off: bool) -> tuple[list[types.Content], bool]:
        self._close_utterances(cut_off=cut_off)
        return recap_turns(self._bridge.transcript.since_handle(), cut_off=cut_off)

    def _close_utterances(self, *, cut_off: bool) -> None:
        """The connection died mid-utterance: what was transcribed so far is all there is."""
        bridge = self._bridge
        bridge._record(bridge.transcript.finish_caller())
        bridge._record(bridge.transcript.finish_agent(interrupted=cut_off))
