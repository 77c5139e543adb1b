"""A local Gemini Live server: the real BidiGenerateContent websocket protocol over TLS on
127.0.0.1, for the unmodified google-genai SDK (through ``HttpOptions.base_url``) and raw clients.

Use it as an async context manager::

    async with LiveSimulator(script=load_script("calls.yaml")) as sim:
        client = genai.Client(api_key="test-key", http_options=types.HttpOptions(
            base_url=sim.base_url, api_version="v1beta",
            async_client_args={"ssl": sim.tls.client_context()}))
        ...
        assert sim.connections[0].voice == "Kore"

What happens on a connection (see ``callsim.live.model`` for the turn sequence and
``callsim.live.script`` for what the model says):

* handshake: the path must be the Live endpoint (else HTTP 404) and carry a key (else 401);
* the first message must be a ``setup`` with a ``model`` (else close 1007), answered by
  ``setupComplete``; ``sessionResumption`` creates or re-attaches a logical session (unknown
  handle: 1008; the session still open on another connection: 1011; another model: 1007);
* then caller audio, text and tool responses drive the simulated model until either side closes.
  A malformed or unknown message closes that connection with 1007 and a reason; the server goes on.
  With ``answer_every_s`` the model instead answers on a schedule of caller audio received (a load
  generator's model: ``callsim.live.model``).

Resumption is as unforgiving as the real service's (``callsim.live.sessions``,
``callsim.live.model``): a handle restores the session **as of that handle**. Caller audio, text
and tool responses the client sent after the newest handle, and what the model said after it, are
not in the resumed session (they stay in ``SessionRecord.history`` flagged ``lost``;
``ConnectionRecord.rolled_back`` counts them). A client that must not lose them buffers what it
sent since the newest handle and replays it. With ``sessionResumption.transparent: true`` in the
setup (Vertex AI only; the SDK refuses it for the Developer API) every new handle carries
``lastConsumedClientMessageIndex``: client messages are numbered per connection from 0 (the setup),
and the index names the last message whose effect is in the handle's state (our assumption; see
``callsim.live.model``). A ``toolResponse`` for a call issued on an earlier connection is ignored
and recorded in ``stray_tool_responses``. Every connection records its client messages
(``client_messages``: index and kind) and the handles issued on it with their last consumed index
(``handles_issued``).

Fault hooks (:meth:`LiveSimulator.close`, :meth:`~LiveSimulator.go_away`,
:meth:`~LiveSimulator.inject`, :meth:`~LiveSimulator.fail_next_connects`,
:meth:`~LiveSimulator.forget_handles`) are also served over HTTP (``callsim.live.control``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Literal

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import State

from callsim.live import handshake, messages
from callsim.live import protocol as proto
from callsim.live.connection import LiveConnection, close_later
from callsim.live.control import handle_control
from callsim.live.model import ConversationEngine, ModelOptions
from callsim.live.records import ConnectionRecord, SessionRecord
from callsim.live.script import Script
from callsim.live.sessions import SessionRegistry
from callsim.simconnection import check_close_code
from callsim.simcontrol import JsonObject, Which
from callsim.simserver import INTERNAL_ERROR_REASON, SimServer, select
from callsim.tls import TlsMaterial

logger = logging.getLogger("callsim")

SETUP_TIMEOUT_S = 30.0


def _port(address: object) -> int | None:
    """The port of a socket's peer address (``(host, port)``, or longer for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return address[1]
    return None


class LiveSimulator(SimServer[LiveConnection, ConnectionRecord]):
    """Local Gemini Live server. See the module docstring; all arguments are keyword-only.

    Listening, stopping, ``connections``, ``wait_for`` and the control routes' plumbing are
    ``callsim.simserver``'s, shared with the Realtime simulator."""

    _name = "Live"

    def __init__(
        self,
        *,
        script: Script | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsMaterial | None = None,
        speed: float = 2.0,
        chunk_ms: int = 40,
        think_ms: int = 150,
        vad_threshold_dbfs: float = -40.0,
        vad_start_ms: int = 100,
        vad_silence_ms: int = 400,
        reject_resume_while_open: bool = True,
        frames: Literal["binary", "text"] = "binary",
        tool_timeout_s: float = 30.0,
        http_control: bool = True,
        setup_delay_ms: int = 0,
        answer_every_s: float | None = None,
        answer_s: float = 1.0,
    ) -> None:
        if frames not in ("binary", "text"):
            raise ValueError("frames must be 'binary' or 'text'")
        if setup_delay_ms < 0:
            raise ValueError("setup_delay_ms must not be negative")
        self.script = script
        self.options = ModelOptions(
            speed=speed,
            chunk_ms=chunk_ms,
            think_ms=think_ms,
            vad_threshold_dbfs=vad_threshold_dbfs,
            vad_start_ms=vad_start_ms,
            vad_silence_ms=vad_silence_ms,
            tool_timeout_s=tool_timeout_s,
            answer_every_s=answer_every_s,
            answer_s=answer_s,
        )
        self.reject_resume_while_open = reject_resume_while_open
        #: Delay before ``setupComplete``: the real service takes a few hundred ms to set up a
        #: session, which is what a handoff's reconnect mostly waits for.
        self.setup_delay_ms = setup_delay_ms
        self.frames = frames
        super().__init__(host=host, port=port, tls=tls, http_control=http_control)
        self._registry = SessionRegistry()
        self._call_ids = itertools.count(1)
        self._fail_connects: tuple[int, int, str, bool] = (0, 1011, "", False)

    # --- properties ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``https://HOST:PORT`` for ``HttpOptions.base_url`` (the SDK switches it to wss)."""
        return self._url("https")

    @property
    def sessions(self) -> dict[int, SessionRecord]:
        """Logical sessions by id, in creation order."""
        return self._registry.sessions

    # --- fault hooks ---------------------------------------------------------------------------

    async def close(self, code: int, reason: str = "", which: Which = "latest") -> int:
        """Close open connection(s) with ``code``; returns how many were closed."""
        check_close_code(code)
        targets = self._pick(which)
        for connection in targets:
            await connection.close(code, reason)
        return len(targets)

    async def go_away(
        self,
        time_left: str | float = "10s",
        close_after: float | None = None,
        which: Which = "latest",
    ) -> int:
        """Send ``goAway``; with ``close_after`` also close 1011 after that many seconds."""
        message = messages.go_away(messages.format_duration(time_left))
        if close_after is not None and close_after < 0:
            raise ValueError("close_after must not be negative")
        targets = self._pick(which, set_up_only=True)
        for connection in targets:
            await self._send_or_ignore(connection, message)
            if close_after is not None:
                connection.spawn(
                    close_later(connection, close_after),
                    name=f"sim-conn{connection.record.index}-goaway-close",
                )
        return len(targets)

    async def inject(self, message: proto.JsonObject, which: Which = "latest") -> int:
        """Send any server message; it must have a top-level key the SDK knows."""
        if messages.server_message_kind(message) is None:
            raise ValueError(
                f"message needs one of {sorted(messages.SERVER_MESSAGE_KEYS)} at the top level "
                "(the SDK crashes on anything else)"
            )
        json.dumps(message)  # fail here, not in the connection, if it is not JSON
        targets = self._pick(which, set_up_only=True)
        for connection in targets:
            await self._send_or_ignore(connection, message)
        return len(targets)

    def fail_next_connects(
        self,
        n: int,
        code: int = 1011,
        reason: str = "simulated connect failure",
        *,
        after_setup: bool = False,
    ) -> None:
        """Close the next ``n`` connections with ``code`` right after their setup arrives, or,
        with ``after_setup``, right after answering it with ``setupComplete`` (a session that
        is aborted as the client starts to talk: the reported mid-call 1008)."""
        if n < 0:
            raise ValueError("n must not be negative")
        check_close_code(code)
        self._fail_connects = (n, code, reason, after_setup)

    def forget_handles(self) -> None:
        """Invalidate every resumption handle issued so far (later resumes are closed 1008)."""
        self._registry.forget_handles()

    async def wait_for_connections(
        self,
        n: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline is the point of this helper
    ) -> list[ConnectionRecord]:
        """Wait until ``n`` connections got past setup (answered or closed); return them all."""

        def settled() -> bool:
            done = [c for c in self._connections if c.setup_completed or c.closed_at is not None]
            return len(done) >= n

        await self.wait_for(settled, timeout)
        return list(self._connections)

    # --- internals -----------------------------------------------------------------------------

    def _pick(self, which: Which, *, set_up_only: bool = False) -> list[LiveConnection]:
        """Open connections selected by ``which``; ``set_up_only`` skips those still in setup
        (a message sent before ``setupComplete`` would be taken for the setup reply)."""
        live = self._open_connections()
        if set_up_only:
            live = [c for c in live if c.record.setup_completed]
        return select(live, which)

    async def _control(self, method: str, target: str) -> tuple[int, JsonObject]:
        return await handle_control(self, method, target)

    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        target = request.path
        if handshake.match_path(target) is None:
            return connection.respond(404, "Not Found: not a Gemini Live endpoint\n")
        if handshake.find_api_key(target, request.headers) is None:
            return connection.respond(401, "Unauthorized: API key missing\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # set before the handler runs
        endpoint = handshake.match_path(request.path) or handshake.Endpoint("", "")
        record = ConnectionRecord(
            index=len(self._connections),
            path=request.path.split("?", 1)[0],
            api_version=endpoint.api_version,
            method=endpoint.method,
            api_key=handshake.find_api_key(request.path, request.headers) or "",
            opened_at=time.monotonic(),
            client_port=_port(ws.remote_address),
            extensions_offered=", ".join(request.headers.get_all("Sec-WebSocket-Extensions")),
        )
        connection = LiveConnection(ws, record, binary=self.frames == "binary")
        await self._run(connection, record, endpoint.api_version)

    async def _serve(self, connection: LiveConnection) -> None:
        ws, record = connection.ws, connection.record
        try:
            first = await asyncio.wait_for(ws.recv(), SETUP_TIMEOUT_S)
        except TimeoutError:
            await connection.close(proto.CLOSE_INVALID_DATA, "no setup received")
            return
        record.frames_received += 1
        try:
            raw = proto.decode_frame(first)
            setup = proto.parse_setup(proto.normalise_message(raw))
        except proto.ProtocolError as exc:
            await connection.close(exc.code, exc.reason)
            return
        record.setup_raw = raw
        record.setup = setup.normalised
        record.model = setup.model
        record.voice = setup.voice
        record.system_instruction = setup.system_instruction
        record.function_declarations = list(setup.function_declarations)
        record.resumption_requested = setup.resumption_requested
        record.transparent = setup.transparent
        record.handle_requested = setup.handle
        record.client_messages.append((0, "setup"))
        remaining, code, reason, after_setup = self._fail_connects
        if remaining > 0:
            self._fail_connects = (remaining - 1, code, reason, after_setup)
            record.injected_failure = True
            if not after_setup:
                await connection.close(code, reason)
                return
        try:
            session = self._registry.attach(
                record,
                setup,
                is_open=self._is_open,
                reject_while_open=self.reject_resume_while_open,
            )
        except proto.ProtocolError as exc:
            await connection.close(exc.code, exc.reason)
            return
        if record.resumed:
            logger.info(
                "connection %d resumed session %d from %s: %d history entries rolled back",
                record.index,
                session.id,
                record.resumed_from,
                record.rolled_back,
            )
        if self.setup_delay_ms > 0:
            await asyncio.sleep(self.setup_delay_ms / 1000)
        await connection.send(messages.setup_complete())
        record.setup_completed = True
        self._notify()
        if record.injected_failure:
            await connection.close(code, reason)
            return
        connection.engine = ConversationEngine(
            record=record,
            session=session,
            setup=setup,
            options=self.options,
            script=self.script,
            send=connection.send,
            issue_handle=lambda consumed: (
                self._registry.issue_handle(
                    session, connection_index=record.index, last_consumed_index=consumed
                ).handle
            ),
            new_call_id=lambda: f"function-call-{next(self._call_ids)}",
            on_error=lambda _: self._fail(connection),
        )
        async for frame in ws:
            record.frames_received += 1
            index = record.frames_received - 1  # client messages count from 0, the setup
            try:
                events = proto.parse_client_message(proto.parse_frame(frame))
                record.client_messages.append((index, proto.message_kind(events)))
                await connection.engine.handle_message(index, events)
            except proto.ProtocolError as exc:
                logger.info("connection %d: %s", record.index, exc.reason)
                await connection.close(exc.code, exc.reason)
                return
            self._notify()

    def _is_open(self, index: int) -> bool:
        connection = self._live.get(index)
        return connection is not None and connection.ws.state is State.OPEN

    def _fail(self, connection: LiveConnection) -> None:
        """A connection's task failed unexpectedly: count it and close the connection (1011)."""
        self.internal_errors += 1
        connection.spawn(
            connection.close(proto.CLOSE_INTERNAL_ERROR, INTERNAL_ERROR_REASON),
            name=f"sim-conn{connection.record.index}-fail",
        )
