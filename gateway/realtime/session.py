"""One call's conversation with OpenAI Realtime, across however many connections it takes.

A Realtime *session* lives on one websocket and dies with it: there is no resumption handle.
What survives a new connection is what the gateway tells it, so every new connection is seeded
from the call's transcript (:class:`~gateway.model.turns.Conversation`), and the caller audio
that arrived meanwhile is replayed into it. Otherwise a Realtime session is more pliable than a
Gemini Live connection: ``session.update`` changes instructions, tools and turn settings in
place, so a handoff between agents with the same voice is one message with no gap. Only the
voice is fixed once the session has spoken; a handoff to another voice opens a new session,
seeded with the conversation, before the old one is closed.

Transport: the official SDK's realtime client (``AsyncOpenAI().realtime.connect``) dials and
owns the websocket. Per message the SDK's ``send(dict)`` runs a type transform and ``recv()``
builds pydantic models; the session sends serialised JSON and reads raw bytes instead
(``recv_bytes``), and caller audio goes out on the socket's own ``send`` (the SDK's
``send_raw`` adds a send-queue check per message, which buys nothing without its reconnects).
The SDK's own reconnection (``on_reconnecting``) is not used: it would reconnect to an empty
session without telling anyone.

What the service does that a client must handle (reference notes: openai-realtime.md):
audio of an interrupted answer still arrives after ``speech_started`` (dropped by
:class:`~gateway.realtime.protocol.RealtimeReader`); a ``response.create`` while a response
is active is refused, so answers to tool calls and text turns wait for ``response.done``; the
session ends after 60 minutes with a ``session_expired`` error and a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import websockets.exceptions

from gateway import wire
from gateway.aio import cancel_and_wait
from gateway.audio.transcode import AudioFormat
from gateway.model.events import AudioOut, LiveEvent, Reconnected, SessionEnded, ToolCall
from gateway.model.persona import AgentPersona
from gateway.model.session import AudioLaneState, ModelAudio, ModelConnectError, ModelSession
from gateway.model.turns import Conversation, TakeoverFactory, Turn
from gateway.model.websocket import DirectSender
from gateway.realtime.config import event, realtime_audio, seed_events, session_config
from gateway.realtime.protocol import (
    HARMLESS_ERROR_CODES,
    Configured,
    RealtimeReader,
    ResponseFinished,
    ServerError,
)

#: HTTP answers to the websocket upgrade that no retry will change.
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404})
#: A failed response is asked for again this many times in a row, then the call ends.
MAX_FAILED_RESPONSES = 3
#: Before the first such retry; doubled for each further one.
RETRY_BACKOFF_S = 0.25


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When to dial again and when to give up (the Gemini side's numbers, without handles)."""

    max_dial_attempts: int = 3
    retry_backoff_s: tuple[float, ...] = (0.0, 0.3, 1.0)
    #: Drops in a row (each connection shorter than ``stable_after_s``) before giving up.
    max_drops: int = 5
    stable_after_s: float = 30.0
    #: Caller audio kept while no connection takes it, replayed into the next one.
    replay_limit_ms: float = 15_000.0
    #: How long a new connection may take to confirm its configuration.
    configure_timeout_s: float = 10.0


@dataclass(slots=True)
class _Connection:
    generation: int
    ws: Any  # openai AsyncRealtimeConnection: typed loosely, it is generated SDK code
    reader: RealtimeReader
    send: Callable[[str], Awaitable[Any]]
    opened_at: float
    voice: str
    configured: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None
    #: The session produced assistant audio: its voice can no longer change.
    spoke: bool = False


@dataclass(frozen=True, slots=True)
class _Dropped:
    code: int | None
    reason: str


_Item = LiveEvent | ServerError | ResponseFinished | _Dropped

if TYPE_CHECKING:  # the SDK is imported by the client's maker, when OpenAI is first used
    from openai import AsyncOpenAI


class RealtimeSession:
    """The OpenAI side of one call. Not thread-safe; one event loop, one consumer."""

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        conversation: Conversation,
        carrier: AudioFormat,
        *,
        log: structlog.stdlib.BoundLogger | None = None,
        policy: ReconnectPolicy | None = None,
        websocket_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.persona: AgentPersona | None = None
        self.log: structlog.stdlib.BoundLogger = log or structlog.get_logger("gateway.realtime")
        self.policy = policy or ReconnectPolicy()
        self._client = client
        self._conversation = conversation
        self._audio = realtime_audio(carrier)
        self._bytes_per_ms = self._audio.input.frame_bytes / 20
        self._ws_options = websocket_options or {}
        self._conn: _Connection | None = None
        self._generation = 0
        self._events: asyncio.Queue[
            tuple[int, LiveEvent | ServerError | ResponseFinished | _Dropped]
        ]
        self._events = asyncio.Queue(maxsize=1024)
        #: Caller audio while no connection takes it (connecting, switching, recovering).
        self._held: deque[bytes] = deque()
        self._held_ms = 0.0
        self._holding = True
        self._dropped_ms = 0.0
        #: Tool calls handed to the call and not answered yet; answers wait for all of them.
        self._unanswered: set[str] = set()
        self._wants_response = False
        #: A response.create to send once the response in progress is done.
        self._owed_response = False
        self._failed_responses = 0
        self._drops = 0
        self._expiring = False
        #: Text turns (keypresses, idle prompts) while no connection takes them.
        self._held_texts: list[str] = []

    # ------------------------------------------------------------------ the seam

    @property
    def audio(self) -> ModelAudio:
        return self._audio

    @property
    def audio_dropped_ms(self) -> float:
        """Caller audio lost beyond what the replay bound could hold."""
        return self._dropped_ms

    async def open(
        self, persona: AgentPersona, takeover: TakeoverFactory | None = None
    ) -> tuple[bool, float]:
        """The first connection, told the greeting (or the takeover from another provider)."""
        started = time.perf_counter()
        self.persona = persona
        self.log = self.log.bind(agent=persona.agent.id)
        turns = takeover(False) if takeover else self._conversation.greeting()
        await self._establish(turns, respond=bool(turns))
        return False, (time.perf_counter() - started) * 1000

    async def hand_off(
        self, persona: AgentPersona, takeover: TakeoverFactory
    ) -> tuple[bool, float]:
        """Become ``persona``: in place when the voice allows (True), else on a new session
        told the history (False); returns (in place, milliseconds)."""
        started = time.perf_counter()
        self.persona = persona
        self.log = self.log.bind(agent=persona.agent.id)
        self._forget_tool_calls()
        conn = self._conn
        voice = persona.agent.voice
        if conn is not None and (voice == conn.voice or not conn.spoke):
            session = session_config(persona, self._audio, in_place=True)
            if voice != conn.voice:
                session["audio"]["output"] = {"voice": voice}
                conn.voice = voice
            try:
                await conn.send(event("session.update", session=session))
                for message in seed_events(takeover(True)):
                    await conn.send(message)
                await self._respond(conn)
            except websockets.exceptions.ConnectionClosed:
                pass  # the reader reports the drop; the recovery seeds the new agent
            return True, (time.perf_counter() - started) * 1000
        self._holding = True  # the old agent's session must not hear (and answer) the caller
        await self._establish(takeover(False), respond=True)
        return False, (time.perf_counter() - started) * 1000

    async def send_audio(self, audio: bytes) -> None:
        """Caller audio in the session's input format; held while no connection takes it."""
        conn = self._conn
        if conn is None or self._holding:
            self._hold(audio)
            return
        try:
            await conn.send(_append(audio))
        except websockets.exceptions.ConnectionClosed:
            self._hold(audio)  # the reader reports the drop; this goes to the next connection

    def audio_writable(self) -> bool:
        conn = self._conn
        return (
            conn is not None
            and not self._holding
            and isinstance(conn.send, DirectSender)
            and conn.send.writable()
        )

    def audio_lane(self, settle: Callable[[], None]) -> AudioLaneState | None:
        """None: the compiled lane writes Gemini's messages only; this session's audio goes
        through :meth:`send_audio_now`."""
        return None

    def send_audio_now(self, audio: bytes, voiced: bool | None = None) -> None:
        """Caller audio on the connection's :class:`DirectSender`, right after
        :meth:`audio_writable` said True."""
        conn = self._conn
        assert conn is not None and isinstance(conn.send, DirectSender)
        if not conn.send.write_now(_append(audio)):
            self._hold(audio)  # the transport failed as it wrote: the reader reports the drop

    async def send_text(self, text: str) -> None:
        """A user text turn (a note the caller does not hear), answered when the model is free;
        held while no connection takes it (a reconnect, a handoff to a new session)."""
        conn = self._conn
        if conn is None or self._holding:
            self._held_texts.append(text)
            return
        (message,) = seed_events([Turn("user", text)])
        try:
            await conn.send(message)
        except websockets.exceptions.ConnectionClosed:
            self._held_texts.append(text)  # the reader reports the drop; the next one gets it
            return
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await self._respond(conn)

    async def send_tool_response(
        self, call_id: str, name: str, response: dict[str, Any], *, respond: bool = True
    ) -> None:
        """Answer a call of this connection; the model answers once every call of its
        response has its output (unless ``respond`` is False for all of them)."""
        conn = self._conn
        if conn is None or call_id not in self._unanswered:
            return  # a call of a connection since replaced: the new one never made it
        self._unanswered.discard(call_id)
        self._wants_response = self._wants_response or respond
        item = {"type": "function_call_output", "call_id": call_id, "output": json.dumps(response)}
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await conn.send(event("conversation.item.create", item=item))
            if not self._unanswered and self._wants_response:
                self._wants_response = False
                await self._respond(conn)

    async def playback_cut(self, unheard_ms: float) -> None:
        """Truncate the interrupted answer at what the caller heard, so the model does not
        believe it said what nobody heard (the service then drops its transcript too)."""
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            for item_id, heard_ms in conn.reader.cut(unheard_ms):
                self.log.debug("realtime.truncate", item=item_id, audio_end_ms=heard_ms)
                await conn.send(
                    event(
                        "conversation.item.truncate",
                        item_id=item_id,
                        content_index=0,
                        audio_end_ms=heard_ms,
                    )
                )

    def offer_audio_lane(self, handler: Callable[[AudioOut], None] | None) -> None:
        """Not taken: OpenAI's audio deltas all come through :meth:`next_event` (the lane is
        built and measured for Gemini's)."""

    async def next_event(self) -> LiveEvent:
        while True:
            generation, item = await self._events.get()
            conn = self._conn
            if conn is None or generation != conn.generation:
                continue  # from a connection already replaced: never acted on
            if isinstance(item, _Dropped):
                return await self._recover(item)
            if isinstance(item, ServerError):
                ended = self._on_error(item)
                if ended is not None:
                    return ended
                continue
            if isinstance(item, ResponseFinished):
                ended = await self._on_response_finished(conn, item)
                if ended is not None:
                    return ended
                continue
            if isinstance(item, ToolCall):
                self._unanswered.add(item.call_id)
            return item

    async def close(self) -> None:
        """End the conversation; idempotent."""
        await self._drop_connection()

    # ------------------------------------------------------------------ connections

    async def _establish(self, turns: Sequence[Turn], *, respond: bool) -> None:
        """Dial until a connection takes the persona, seed it with ``turns``, replay the held
        caller audio, and only then let go of the connection it replaces (if any)."""
        policy = self.policy
        failure: ModelConnectError | None = None
        for attempt in range(policy.max_dial_attempts):
            delay = policy.retry_backoff_s[min(attempt, len(policy.retry_backoff_s) - 1)]
            if delay:
                await asyncio.sleep(delay)
            try:
                conn = await self._connect()
            except ModelConnectError as exc:
                self.log.warning(
                    "realtime.connect_failed", code=exc.code, reason=exc.reason, attempt=attempt + 1
                )
                failure = exc
                if exc.permanent:
                    break
                continue
            old, self._conn = self._conn, conn
            self._forget_tool_calls()
            try:
                texts, self._held_texts = self._held_texts, []
                for message in seed_events([*turns, *(Turn("user", t) for t in texts)]):
                    await conn.send(message)
                await self._release_held(conn)
                late, self._held_texts = self._held_texts, []  # held during the replay
                for message in seed_events([Turn("user", t) for t in late]):
                    await conn.send(message)
                if respond or texts or late:
                    await self._respond(conn)
            except websockets.exceptions.ConnectionClosed:
                pass  # the reader reports it; next_event recovers
            finally:  # even when the call is cancelled meanwhile: nothing else owns it now
                if old is not None:
                    await self._close_connection(old)
            return
        self._holding = False
        assert failure is not None
        raise failure

    async def _connect(self) -> _Connection:
        """A new websocket, configured as the persona, confirmed by ``session.updated``."""
        persona = self.persona
        assert persona is not None
        self._generation += 1
        try:
            async with asyncio.timeout(self.policy.configure_timeout_s):
                manager = self._client.realtime.connect(
                    model=self.model,
                    websocket_connection_options=self._ws_options,  # type: ignore[arg-type]
                )
                ws = await manager.enter()
        except Exception as exc:
            raise _connect_error(exc) from None
        raw = getattr(ws, "_connection", None)
        send = DirectSender(raw) if raw is not None and hasattr(raw, "send") else ws.send_raw
        conn = _Connection(
            self._generation,
            ws,
            RealtimeReader(self._audio.output.frame_bytes / 20),
            send,
            opened_at=time.monotonic(),
            voice=persona.agent.voice,
        )
        conn.task = asyncio.create_task(self._read(conn), name=f"realtime-read-{conn.generation}")
        try:
            async with asyncio.timeout(self.policy.configure_timeout_s):
                await conn.send(
                    event("session.update", session=session_config(persona, self._audio))
                )
                await conn.configured
        except BaseException as exc:  # a cancelled call too: the connection is nobody's yet
            await self._close_connection(conn)
            if isinstance(exc, ModelConnectError):
                raise
            if isinstance(exc, TimeoutError):
                raise ModelConnectError("the session was not configured in time") from None
            if isinstance(exc, Exception):
                raise _connect_error(exc) from None
            raise
        return conn

    async def _read(self, conn: _Connection) -> None:
        code: int | None = None
        reason = "receive loop ended"
        try:
            while True:
                message = json.loads(await conn.ws.recv_bytes())
                if not isinstance(message, dict):
                    continue
                for item in conn.reader.feed(message):
                    if isinstance(item, Configured):
                        if not conn.configured.done():
                            conn.configured.set_result(None)
                        continue
                    if isinstance(item, ServerError) and not conn.configured.done():
                        conn.configured.set_exception(
                            ModelConnectError(
                                f"{item.code or item.type}: {item.message}",
                                permanent=item.permanent or item.type == "invalid_request_error",
                            )
                        )
                        continue
                    if isinstance(item, AudioOut):
                        conn.spoke = True
                    await self._events.put((conn.generation, item))
        except websockets.exceptions.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = (
                exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.reason else "connection lost"
            )
        except Exception as exc:  # a frame that is not JSON, or the SDK's own failure
            reason = f"{type(exc).__name__}: {exc}"
        if not conn.configured.done():
            conn.configured.set_exception(
                ModelConnectError(f"closed while opening: {reason}", code=code)
            )
        await self._events.put((conn.generation, _Dropped(code, reason)))

    async def _recover(self, dropped: _Dropped) -> LiveEvent:
        """The connection is gone: a new one, told the history, with the held audio."""
        conn = self._conn
        assert conn is not None
        reason = "expired" if self._expiring else "dropped"
        self._expiring = False
        self._holding = True
        lived = time.monotonic() - conn.opened_at
        self._drops = 1 if lived >= self.policy.stable_after_s else self._drops + 1
        detail = f"{dropped.code}: {dropped.reason}" if dropped.code else dropped.reason
        self.log.warning("realtime.connection_lost", code=dropped.code, reason=dropped.reason)
        if self._drops > self.policy.max_drops:
            await self._drop_connection()
            return SessionEnded(f"connection kept dropping ({detail})", dropped.code)
        # Answer at once only if the caller was not speaking (by the service's own turn
        # detection): otherwise their words, replayed, make the turn themselves.
        speaking = conn.reader.caller_speaking
        turns, answer = self._conversation.reseed(until_handle=False)
        started = time.perf_counter()
        await self._close_connection(conn)
        self._conn = None
        try:
            await self._establish(turns, respond=answer and not speaking)
        except ModelConnectError as exc:
            return SessionEnded(exc.reason, exc.code)
        elapsed = (time.perf_counter() - started) * 1000
        return Reconnected(reason, resumed=False, elapsed_ms=elapsed, detail=detail)

    async def _close_connection(self, conn: _Connection) -> None:
        if conn.task is not None and conn.task is not asyncio.current_task():
            await cancel_and_wait(conn.task)
        if conn.configured.done() and not conn.configured.cancelled():
            conn.configured.exception()  # retrieved: an opening that failed was reported
        else:
            conn.configured.cancel()
        with contextlib.suppress(Exception):
            await conn.ws.close()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._holding = True
        if conn is not None:
            await self._close_connection(conn)

    # ------------------------------------------------------------------ responses

    async def _respond(self, conn: _Connection) -> None:
        """Ask for an answer now, or once the response in progress is done."""
        if conn.reader.active_response is not None or conn.reader.requested:
            self._owed_response = True
            return
        self._owed_response = False
        conn.reader.requested = True
        await conn.send(event("response.create"))

    async def _on_response_finished(
        self, conn: _Connection, finished: ResponseFinished
    ) -> SessionEnded | None:
        failed = finished.failed
        if failed is not None:
            self._failed_responses += 1
            self.log.warning(
                "realtime.response_failed",
                type=failed.type,
                code=failed.code,
                detail=failed.message,
            )
            if failed.permanent or self._failed_responses > MAX_FAILED_RESPONSES:
                await self._drop_connection()
                return SessionEnded(f"responses failed: {failed.code or failed.type}")
            self._owed_response = True  # ask again: the caller is still owed an answer
            # Backing off a little: a failure is often the service's load (rate limits,
            # server errors). Nothing plays meanwhile; the caller's speech still goes up.
            await asyncio.sleep(RETRY_BACKOFF_S * 2 ** (self._failed_responses - 1))
        else:
            self._failed_responses = 0
        if self._owed_response:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                await self._respond(conn)
        return None

    def _on_error(self, error: ServerError) -> SessionEnded | None:
        if error.code in HARMLESS_ERROR_CODES:
            return None
        if error.expired:
            self._expiring = True  # the close that follows is planned
            self.log.info("realtime.session_expired", detail=error.message)
            return None
        if error.code == "conversation_already_has_active_response":
            conn = self._conn
            if conn is not None:
                conn.reader.requested = False
            self._owed_response = True
        self.log.warning("realtime.error", type=error.type, code=error.code, detail=error.message)
        if error.permanent:
            return SessionEnded(f"{error.code}: {error.message}")
        return None

    def _forget_tool_calls(self) -> None:
        self._unanswered.clear()
        self._wants_response = False
        self._owed_response = False

    # ------------------------------------------------------------------ held caller audio

    def _hold(self, audio: bytes) -> None:
        self._held.append(audio)
        self._held_ms += len(audio) / self._bytes_per_ms
        while self._held_ms > self.policy.replay_limit_ms and self._held:
            lost = self._held.popleft()
            ms = len(lost) / self._bytes_per_ms
            self._held_ms -= ms
            self._dropped_ms += ms

    async def _release_held(self, conn: _Connection) -> None:
        """Replay what the caller said while no connection listened; then send directly.
        Audio that arrives during the replay's awaits joins the queue behind it."""
        while self._held:
            audio = self._held.popleft()
            self._held_ms -= len(audio) / self._bytes_per_ms
            await conn.send(_append(audio))
        self._held_ms = 0.0
        self._holding = False


def _append(audio: bytes) -> str:
    """``input_audio_buffer.append``, serialised by hand: it is 50 messages a second."""
    return '{"type":"input_audio_buffer.append","audio":"' + wire.b64encode(audio) + '"}'


def _connect_error(exc: BaseException) -> ModelConnectError:
    """Why a dial failed, and whether a retry could help."""
    if isinstance(exc, ModelConnectError):
        return exc
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        status = exc.response.status_code
        detail = _error_body(exc.response.body)
        return ModelConnectError(
            f"HTTP {status}{': ' + detail if detail else ''}",
            code=status,
            permanent=status in PERMANENT_HTTP_STATUSES,
        )
    if isinstance(exc, TimeoutError):
        return ModelConnectError("connect timed out")
    if isinstance(exc, OSError):
        return ModelConnectError(f"cannot reach the Realtime endpoint: {exc.strerror or exc}")
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        return ModelConnectError(f"closed while opening ({code})", code=code)
    return ModelConnectError(f"{type(exc).__name__}: {exc}")


def _error_body(body: bytes | bytearray | None) -> str:
    """The ``error.message`` of an HTTP error answer, if it has one (never the whole body)."""
    try:
        error = json.loads(body or b"").get("error", {})
        return str(error.get("code") or error.get("message") or "")[:200]
    except (ValueError, AttributeError):
        return ""


def _fits_the_seam(session: RealtimeSession) -> ModelSession:
    """Never called: mypy checks here that the OpenAI session still fits the seam."""
    return session
