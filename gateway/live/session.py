"""One call's conversation with Gemini Live, across however many connections it takes.

A Gemini Live *connection* is short-lived: it cannot change its config, it ends about every ten
minutes, and it can drop. The *session* — the conversation — outlives connections through
resumption handles. This class owns that difference so the bridge does not have to:

- it holds the newest handle (an empty ``sessionResumptionUpdate`` never erases it);
- ``open()`` replaces the connection: the old one is closed *first* (Gemini rejects a resume while
  it is open), the new one resumes with the handle, or starts fresh when there is none or it is
  rejected, and caller audio sent meanwhile is buffered (bounded) and replayed in order;
- the receive loop survives the SDK's habits (``receive()`` stops at every ``turnComplete``; even
  a normal close raises ``APIError``) and turns messages into plain :mod:`gateway.live.events`;
- a dropped connection or a ``goAway`` is resumed inside :meth:`next_event`, in the consumer's
  task, so connection changes never race each other; only a failure that retrying cannot fix
  reaches the bridge, as :class:`SessionEnded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import websockets.exceptions
from google import genai
from google.genai import errors, types

from gateway.aio import cancel_and_wait
from gateway.live.config import AgentPersona, live_config
from gateway.live.events import (
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
)
from gateway.live.fast_path import INPUT_MIME, model_audio, realtime_audio_message

#: Close codes after which retrying the same request is pointless: 1007 invalid argument
#: (bad setup), 1008 policy (unknown or expired handle, bad key on some paths).
PERMANENT_CLOSE_CODES = frozenset({1007, 1008})
#: HTTP answers to the websocket upgrade that no retry will change.
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404})

#: Builds the turns sent right after a connection opens; the flag says whether it resumed
#: (the model remembers the call) or started fresh (the model must be told the history).
OpeningFactory = Callable[[bool], Sequence[types.Content]]


class LiveConnectError(Exception):
    """A connection attempt failed; ``permanent`` when retrying cannot help."""

    def __init__(self, reason: str, *, code: int | None = None, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.permanent = permanent


@dataclass(slots=True)
class _Connection:
    generation: int
    session: Any  # google.genai.live.AsyncSession; typed loosely: it is an SDK preview class
    stack: contextlib.AsyncExitStack
    resumed: bool
    opened_at: float
    reader: asyncio.Task[None] | None = None
    #: The SDK session's websocket ``send``, for the audio fast path (None: use the SDK).
    raw_send: Callable[[str], Awaitable[None]] | None = None


@dataclass(frozen=True, slots=True)
class _Dropped:
    """Internal: a connection's receive loop ended without being asked to."""

    generation: int
    code: int | None
    reason: str


class LiveSession:
    """The Gemini side of one call. Not thread-safe; one event loop, one consumer."""

    def __init__(
        self,
        client: genai.Client,
        model: str,
        *,
        log: structlog.stdlib.BoundLogger | None = None,
        buffer_bytes: int = 64_000,
        max_retries: int = 3,
        max_drops: int = 5,
        retry_backoff_s: Sequence[float] = (0.0, 0.3, 1.0),
        stable_after_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        audio_fast_path: bool = True,
    ) -> None:
        self.model = model
        self.handle: str | None = None
        self.persona: AgentPersona | None = None
        #: Called when a fault forces a *fresh* session (handle rejected or never issued): the
        #: bridge returns the transcript as turns so the model does not lose the conversation.
        self.history_for_fresh_session: Callable[[], Sequence[types.Content]] = lambda: ()
        self.audio_dropped_bytes = 0
        #: The bridge rebinds this when the active agent changes, so lines carry the call context.
        self.log: structlog.stdlib.BoundLogger = log or structlog.get_logger("gateway.live")
        self._client = client
        self._buffer_limit = buffer_bytes
        self._max_retries = max_retries
        self._backoff = tuple(retry_backoff_s) or (0.0,)
        self._stable_after = stable_after_s
        self._connect_timeout = connect_timeout_s
        self._audio_fast_path = audio_fast_path
        self._conn: _Connection | None = None
        self._generation = 0
        self._events: asyncio.Queue[LiveEvent | _Dropped] = asyncio.Queue(maxsize=1024)
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._accepting = False
        self._closed = False
        self._drops = 0
        self._max_drops = max_drops
        self._goaway_deadline: float | None = None
        self._model_idle = True
        self._reconnect_now = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # ------------------------------------------------------------------ connection lifecycle

    async def open(
        self, persona: AgentPersona, *, opening: OpeningFactory | None = None, resume: bool = True
    ) -> tuple[bool, float]:
        """Become ``persona`` on a new connection; returns (resumed, elapsed ms).

        The current connection (if any) is closed before the new one is dialled. With
        ``resume`` and a held handle the new connection resumes the conversation; if that
        handle is rejected, a fresh session is opened instead and ``opening(False)`` must
        re-seed it. Raises :class:`LiveConnectError` when no connection could be opened.
        """
        if self._closed:
            raise LiveConnectError("session is closed", permanent=True)
        started = time.perf_counter()
        self._accepting = False
        await self._drop_connection()
        conn = await self._dial(persona, self.handle if resume else None)
        self._conn = conn
        self.persona = persona
        self._model_idle = True
        conn.reader = asyncio.create_task(self._read(conn), name=f"live-read-{conn.generation}")
        turns = list(opening(conn.resumed)) if opening else []
        if turns:
            await self._send_turns(conn, turns)
        await self._flush_pending(conn)
        self._accepting = True
        return conn.resumed, (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        """End the conversation: close the connection and drop buffered audio. Idempotent."""
        self._closed = True
        self._accepting = False
        self._pending.clear()
        self._pending_bytes = 0
        await self._drop_connection()

    async def _dial(self, persona: AgentPersona, handle: str | None) -> _Connection:
        """Connect, retrying transient failures with backoff (the first try is immediate).

        A rejected handle (1007/1008) is not retried as such: the conversation continues on a
        fresh session instead, which the opening turns re-seed from the gateway's transcript.
        """
        last: LiveConnectError | None = None
        for attempt in range(self._max_retries):
            delay = self._backoff[min(attempt, len(self._backoff) - 1)]
            if delay:
                await asyncio.sleep(delay)
            try:
                return await self._connect(persona, handle)
            except LiveConnectError as exc:
                last = exc
                if handle is not None and exc.code in PERMANENT_CLOSE_CODES:
                    self.log.warning("live.resume_rejected", code=exc.code, reason=exc.reason)
                    self.handle = handle = None
                    continue
                self.log.warning("live.connect_failed", attempt=attempt + 1, reason=exc.reason)
                if exc.permanent:
                    break
        assert last is not None
        raise last

    async def _connect(self, persona: AgentPersona, handle: str | None) -> _Connection:
        config = live_config(persona, handle=handle)
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
        self._generation += 1
        ws = getattr(session, "_ws", None)
        if self._audio_fast_path and callable(getattr(ws, "recv", None)):
            session._ws = _AudioTap(ws, self._events)  # type: ignore[assignment]
        return _Connection(
            generation=self._generation,
            session=session,
            stack=stack,
            resumed=handle is not None,
            opened_at=time.monotonic(),
            raw_send=getattr(ws, "send", None) if self._audio_fast_path else None,
        )

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

    # ------------------------------------------------------------------ sending

    async def send_audio(self, pcm16k: bytes) -> None:
        """Caller audio (PCM16 16 kHz); buffered while no connection can take it."""
        conn = self._conn
        if self._accepting and conn is not None:
            try:
                await self._send_audio_on(conn, pcm16k)
                return
            except (websockets.exceptions.ConnectionClosed, errors.APIError):
                self._accepting = False  # the reader reports the drop; keep the audio meanwhile
        if not self._closed:
            self._buffer(pcm16k)

    @staticmethod
    async def _send_audio_on(conn: _Connection, pcm16k: bytes) -> None:
        if conn.raw_send is not None:
            await conn.raw_send(realtime_audio_message(pcm16k))
        else:
            await conn.session.send_realtime_input(
                audio=types.Blob(data=pcm16k, mime_type=INPUT_MIME)
            )

    async def send_text(self, text: str) -> None:
        """A user text turn on the current connection (a prompt the caller does not hear)."""
        conn = self._conn
        if conn is not None:
            await self._send_turns(
                conn, [types.Content(role="user", parts=[types.Part(text=text)])]
            )

    async def send_tool_response(self, call_id: str, name: str, response: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.session.send_tool_response(
                function_responses=[
                    types.FunctionResponse(id=call_id, name=name, response=response)
                ]
            )
        except (websockets.exceptions.ConnectionClosed, errors.APIError) as exc:
            self.log.warning("live.tool_response_failed", name=name, error=str(exc))

    async def _send_turns(self, conn: _Connection, turns: Sequence[types.Content]) -> None:
        """Send prompt/history turns and ask for a reply.

        Gemini 3.x rejects ``clientContent`` once a conversation is under way (close 1007), so
        for those models the turns are flattened into one realtime text input instead.
        """
        if self.model.removeprefix("models/").startswith("gemini-3"):
            text = "\n\n".join(
                f"[{t.role}] " + "".join(p.text or "" for p in (t.parts or [])) for t in turns
            )
            await conn.session.send_realtime_input(text=text)
        else:
            await conn.session.send_client_content(turns=list(turns), turn_complete=True)

    def _buffer(self, pcm: bytes) -> None:
        self._pending.append(pcm)
        self._pending_bytes += len(pcm)
        while self._pending_bytes > self._buffer_limit and self._pending:
            dropped = self._pending.popleft()  # oldest first: the newest speech matters most
            self._pending_bytes -= len(dropped)
            self.audio_dropped_bytes += len(dropped)

    async def _flush_pending(self, conn: _Connection) -> None:
        # Audio arriving while this runs is appended to the same deque, so order is kept; the
        # final emptiness check and ``_accepting = True`` in open() happen without an await.
        while self._pending:
            chunk = self._pending.popleft()
            self._pending_bytes -= len(chunk)
            await self._send_audio_on(conn, chunk)

    # ------------------------------------------------------------------ receiving

    async def next_event(self) -> LiveEvent:
        """The next event of the conversation, reconnecting transparently when needed."""
        while True:
            if self._reconnect_now:
                self._reconnect_now = False
                return await self._recover("goaway")
            try:
                timeout = None
                if self._goaway_deadline is not None:
                    timeout = max(0.0, self._goaway_deadline - time.monotonic())
                item = await asyncio.wait_for(self._events.get(), timeout)
            except TimeoutError:
                self._reconnect_now = True
                continue
            if isinstance(item, _Dropped):
                if item.generation != self._generation or self._conn is None:
                    continue  # a connection we already replaced or closed
                if self._closed:
                    return SessionEnded("closed")
                return await self._recover("dropped", f"{item.code}: {item.reason}", item.code)
            if isinstance(item, GoAway):
                self._schedule_goaway(item.time_left)
            elif isinstance(item, TurnComplete | Interrupted):
                self._model_idle = True
            elif isinstance(item, AudioOut | ToolCall):
                self._model_idle = False
            elif isinstance(item, HandleUpdated) and self._goaway_deadline and self._model_idle:
                self._reconnect_now = True  # fresh handle, model idle: the best moment to move
            return item

    def _schedule_goaway(self, time_left: str | None) -> None:
        seconds = _duration_seconds(time_left) if time_left else 10.0
        # Leave a margin for the reconnect itself before the server cuts the connection.
        self._goaway_deadline = time.monotonic() + max(0.0, seconds - 2.0)

    async def _recover(
        self, kind: str, detail: str = "", code: int | None = None
    ) -> SessionEnded | Reconnected:
        """Move the conversation to a new connection after a goAway or a drop.

        ``kind`` is ``goaway`` (planned, never counted as a failure) or ``dropped``. Drops are
        counted across reconnects and forgiven once a connection has been stable for a while,
        so a connection that keeps dropping ends the call instead of looping forever.
        """
        self._goaway_deadline = None
        persona = self.persona
        reason = f"{kind} ({detail})" if detail else kind
        if persona is None or self._closed or code in PERMANENT_CLOSE_CODES:
            return SessionEnded(reason, code)
        if kind != "goaway":
            conn = self._conn
            if conn is not None and time.monotonic() - conn.opened_at > self._stable_after:
                self._drops = 0
            self._drops += 1
            if self._drops > self._max_drops:
                return SessionEnded(f"{reason}; the connection keeps dropping", code)
        try:
            resumed, elapsed = await self.open(persona, opening=self._reopening)
        except LiveConnectError as exc:
            return SessionEnded(f"{reason}; reconnect failed: {exc.reason}", exc.code)
        self.log.info("live.reconnected", reason=reason, resumed=resumed, ms=round(elapsed, 1))
        return Reconnected(kind, resumed=resumed, elapsed_ms=elapsed, detail=detail)

    def _reopening(self, resumed: bool) -> Sequence[types.Content]:
        return () if resumed else self.history_for_fresh_session()

    async def _read(self, conn: _Connection) -> None:
        code: int | None = None
        reason = "receive loop ended"
        try:
            while True:  # receive() stops after every turnComplete; the connection does not
                async with contextlib.aclosing(conn.session.receive()) as messages:
                    async for message in messages:
                        for event in self._translate(message):
                            await self._events.put(event)
        except errors.APIError as exc:
            code, reason = exc.code, str(exc.details or exc.message or exc.status or "closed")
        except websockets.exceptions.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else "connection lost"
        except Exception as exc:  # the SDK raises TypeError/ValueError on frames it cannot parse
            reason = f"{type(exc).__name__}: {exc}"
        await self._events.put(_Dropped(conn.generation, code, reason))

    def _translate(self, message: types.LiveServerMessage) -> list[LiveEvent]:
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
            self.handle = update.new_handle  # an empty update means "not now", never "forget"
            out.append(HandleUpdated(update.new_handle))
        if message.go_away is not None:
            out.append(GoAway(message.go_away.time_left))
        return out


class _AudioTap:
    """Stands in for the SDK session's websocket and takes model-audio messages off the top.

    The SDK's receive loop calls ``recv``; every message that is only model audio is turned
    into an :class:`AudioOut` here and queued, everything else is handed to the SDK unchanged,
    in order, so the events of one connection keep their order. Everything but ``recv`` is the
    real socket's (``send``, ``close``, the close code the SDK reads on errors).
    """

    __slots__ = ("_events", "_ws")

    def __init__(self, ws: Any, events: asyncio.Queue[LiveEvent | _Dropped]) -> None:
        self._ws = ws
        self._events = events

    async def recv(self, decode: bool | None = None) -> str | bytes:
        while True:
            # Called as the SDK calls it: with decode=False, or bare when that raised TypeError.
            raw: str | bytes = await (self._ws.recv() if decode is None else self._ws.recv(decode))
            pcm = model_audio(raw)
            if pcm is None:
                return raw
            await self._events.put(AudioOut(pcm))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


def _is_24k_pcm(mime: str | None) -> bool:
    """Gemini's output is 24 kHz PCM; audio at any other rate would play at the wrong speed."""
    return mime is None or "rate=" not in mime or "rate=24000" in mime


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _duration_seconds(value: str) -> float:
    match = _DURATION.match(value)
    return float(match.group(1)) if match else 10.0


def _connect_error(exc: Exception) -> LiveConnectError:
    if isinstance(exc, LiveConnectError):
        return exc
    if isinstance(exc, errors.APIError):
        code = exc.code
        reason = str(exc.details or exc.message or exc.status or "connect failed")
        return LiveConnectError(reason, code=code, permanent=code in PERMANENT_CLOSE_CODES)
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        status = exc.response.status_code
        return LiveConnectError(
            f"HTTP {status} on connect", code=status, permanent=status in PERMANENT_HTTP_STATUSES
        )
    if isinstance(exc, TimeoutError):
        return LiveConnectError("connect timed out")
    if isinstance(exc, OSError):
        return LiveConnectError(f"cannot reach the Live endpoint: {exc.strerror or exc}")
    if isinstance(exc, websockets.exceptions.WebSocketException):
        return LiveConnectError(f"websocket error: {exc}")
    return LiveConnectError(f"{type(exc).__name__}: {exc}")
