"""A local OpenAI Realtime server: the GA Realtime websocket protocol over TLS (or plain ws) on
127.0.0.1, for the unmodified ``openai`` SDK and raw clients. The sibling of the Live simulator
(``callsim.live.server``): same script format, VAD, voices-as-tones, TLS material and HTTP
control style.

Use it as an async context manager::

    async with RealtimeSimulator(script=load_script("calls.yaml")) as sim:
        client = AsyncOpenAI(api_key="test-key", base_url=sim.base_url)
        async with client.realtime.connect(
            model="gpt-realtime",
            websocket_connection_options={"ssl": sim.tls.client_context()},
        ) as connection:
            ...
        assert sim.connections[0].voice == "alloy"

A connection is refused at the handshake (``callsim.realtime.handshake``) or gets
``session.created`` and then speaks the protocol of ``callsim.realtime.model``. Every connection
is a new, empty conversation: the Realtime API has no resumption.

Fault hooks (also over HTTP, ``callsim.realtime.control``):

* :meth:`~RealtimeSimulator.close`: abrupt close with any code, no ``error`` event first
  (1006: the TCP connection is dropped without a close frame);
* :meth:`~RealtimeSimulator.inject`: any raw server event;
* :meth:`~RealtimeSimulator.fail_next_connects`: refuse handshakes, with an HTTP status, or
  after the upgrade with an ``error`` event and a close: 1013 (try again later) for
  ``rate_limit_exceeded``, 1011 for ``server_error`` and other ``*_error`` codes of a transient
  kind, 1008 (policy) for everything else (``invalid_api_key``, ``model_not_found``,
  ``insufficient_quota``). ASSUMPTION: the service's codes for these are not documented; the
  choice makes the SDK's reconnect policy treat the transient ones as retryable.
* :meth:`~RealtimeSimulator.expire`: the 60-minute limit: ``error`` ``session_expired`` then a
  close with 1001 and the message as reason (as observed from the real service:
  pollen-robotics/reachy_mini_conversation_app#134);
* :meth:`~RealtimeSimulator.fail_next_responses`: responses that end ``failed``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callsim.live.script import Script
from callsim.realtime import events, handshake
from callsim.realtime.connection import RealtimeConnection, check_hook_close_code
from callsim.realtime.control import handle_control
from callsim.realtime.events import Ids, JsonObject
from callsim.realtime.model import EngineOptions, RealtimeEngine
from callsim.realtime.records import RealtimeConnectionRecord
from callsim.realtime.response import Failure
from callsim.realtime.session import default_session
from callsim.simcontrol import Which, json_response
from callsim.simserver import SimServer
from callsim.tls import TlsMaterial

logger = logging.getLogger("callsim")

EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."
_RETRY_LATER = frozenset({"rate_limit_exceeded"})
_SERVER_ERRORS = frozenset({"server_error", "internal_error", "service_unavailable"})


class RealtimeSimulator(SimServer[RealtimeConnection, RealtimeConnectionRecord]):
    """Local OpenAI Realtime server. See the module docstring; all arguments are keyword-only.

    Listening, stopping, ``connections``, ``wait_for`` and the control routes' plumbing are
    ``callsim.simserver``'s, shared with the Live simulator."""

    _name = "Realtime"
    _max_size = None  # appended audio may come in frames of any size

    def __init__(
        self,
        *,
        script: Script | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsMaterial | None = None,
        use_tls: bool = True,
        speed: float = 2.0,
        chunk_ms: int = 40,
        think_ms: int = 150,
        vad_threshold_dbfs: float = -40.0,
        vad_start_ms: int = 100,
        vad_silence_ms: int = 400,
        http_control: bool = True,
        late_deltas: int = 1,
    ) -> None:
        self.script = script
        self.options = EngineOptions(
            speed=speed,
            chunk_ms=chunk_ms,
            think_ms=think_ms,
            vad_threshold_dbfs=vad_threshold_dbfs,
            vad_start_ms=vad_start_ms,
            vad_silence_ms=vad_silence_ms,
            late_deltas=late_deltas,
        )
        self.use_tls = use_tls
        super().__init__(host=host, port=port, tls=tls, http_control=http_control)
        self._ids = Ids()
        self._fail_connects = 0
        self._fail_connect_with: tuple[int | None, str | None, str, str] = (None, None, "", "")
        self._fail_responses: list[Failure] = []
        #: HTTP refusals of upgrade requests: (status, error code), in order.
        self.refused: list[tuple[int, str | None]] = []

    # --- properties ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``https://HOST:PORT/v1`` (``http://`` without TLS) for ``AsyncOpenAI(base_url=...)``."""
        return self._url("https" if self.use_tls else "http", "/v1")

    # --- fault hooks ---------------------------------------------------------------------------

    async def close(self, code: int, reason: str = "", which: Which = "latest") -> int:
        """Close open connection(s) with ``code`` (1006: drop the TCP); no ``error`` first."""
        check_hook_close_code(code)
        targets = self._pick(which)
        for connection in targets:
            await connection.close(code, reason)
        self._notify()
        return len(targets)

    async def inject(self, event: JsonObject, which: Which = "latest") -> int:
        """Send any server event (it needs a string ``type``; the SDK parses by it)."""
        if not isinstance(event.get("type"), str):
            raise ValueError("event needs a string 'type'")
        json.dumps(event)  # fail here, not in the connection, if it is not JSON
        targets = self._pick(which)
        for connection in targets:
            await self._send_or_ignore(connection, event)
        return len(targets)

    async def expire(self, which: Which = "latest") -> int:
        """What the service does at its 60-minute limit: ``session_expired``, then close 1001."""
        targets = self._pick(which)
        for connection in targets:
            await self._send_or_ignore(connection, events.error("session_expired", EXPIRED_MESSAGE))
            with contextlib.suppress(ConnectionClosed):
                await connection.close(1001, EXPIRED_MESSAGE)
        self._notify()
        return len(targets)

    def fail_next_connects(
        self,
        n: int,
        *,
        status: int | None = None,
        error_code: str | None = None,
        error_type: str = "invalid_request_error",
        message: str = "",
    ) -> None:
        """Refuse the next ``n`` handshakes: with ``status`` as an HTTP error at the upgrade
        (JSON ``{"error": ...}`` body), else after it with an ``error`` event (``error_code``,
        default ``server_error``) and a close (see the module docstring for the codes)."""
        if n < 0:
            raise ValueError("n must not be negative")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        self._fail_connects = n
        self._fail_connect_with = (status, error_code, error_type, message)

    def fail_next_responses(
        self, n: int, *, error_type: str = "server_error", error_code: str | None = None
    ) -> None:
        """The next ``n`` responses end with ``response.done`` ``status: failed``, no audio."""
        if n < 0:
            raise ValueError("n must not be negative")
        self._fail_responses = [Failure(error_type, error_code) for _ in range(n)]

    # --- internals -----------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        return self._tls.server_context() if self.use_tls else None

    def _take_failure(self) -> Failure | None:
        return self._fail_responses.pop(0) if self._fail_responses else None

    async def _control(self, method: str, target: str) -> tuple[int, JsonObject]:
        return await handle_control(self, method, target)

    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        target = request.path
        refusal = handshake.check_request("GET", target, request.headers)
        if refusal is None and self._fail_connects > 0 and self._fail_connect_with[0] is not None:
            self._fail_connects -= 1
            status, code, error_type, message = self._fail_connect_with
            refusal = handshake.injected_refusal(status or 500, error_type, code, message)
        if refusal is None:
            return None
        self.refused.append((refusal.status, refusal.body["error"].get("code")))
        self._notify()
        return json_response(connection, refusal.status, refusal.text())

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # set before the handler runs
        model = handshake.model_of(request.path)
        record = RealtimeConnectionRecord(
            index=len(self._connections),
            model=model,
            authorized=handshake.bearer_key(request.headers) is not None,
            beta_header=request.headers.get("OpenAI-Beta"),
            opened_at=time.monotonic(),
        )
        record.session = default_session(
            self._ids.new("sess"), model, vad_silence_ms=self.options.vad_silence_ms
        )
        connection = RealtimeConnection(ws, record, self._ids)
        await self._run(connection, record, model)

    async def _serve(self, connection: RealtimeConnection) -> None:
        if self._fail_connects > 0:
            self._fail_connects -= 1
            await self._refuse_after_upgrade(connection)
            return
        engine = connection.engine = RealtimeEngine(
            connection=connection,
            options=self.options,
            script=self.script,
            ids=self._ids,
            take_failure=self._take_failure,
        )
        await connection.send({"type": "session.created", "session": connection.record.session})
        await self._receive(connection, engine)

    async def _refuse_after_upgrade(self, connection: RealtimeConnection) -> None:
        _, code, error_type, message = self._fail_connect_with
        code = code or "server_error"
        if code in _SERVER_ERRORS and error_type == "invalid_request_error":
            error_type = "server_error"
        connection.record.injected_failure = code
        connection.record.authorized = code != "invalid_api_key"
        await connection.send(
            events.error(code, message or f"Simulated failure: {code}.", error_type=error_type)
        )
        close_code = 1013 if code in _RETRY_LATER else 1011 if code in _SERVER_ERRORS else 1008
        await connection.close(close_code, message or code)

    async def _receive(self, connection: RealtimeConnection, engine: RealtimeEngine) -> None:
        record = connection.record
        async for frame in connection.ws:
            text = frame.decode("utf-8", errors="replace") if isinstance(frame, bytes) else frame
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                record.client_events.append((time.monotonic(), "<invalid>"))
                # ASSUMPTION: the service's code for a frame that is not a JSON object.
                await connection.send(
                    events.error("invalid_json", "The server could not parse the event as JSON.")
                )
                continue
            kind = event.get("type")
            record.client_events.append((time.monotonic(), kind if isinstance(kind, str) else ""))
            await engine.handle(event)
            self._notify()
