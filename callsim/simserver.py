"""The server half both model simulators (``callsim.live.server``,
``callsim.realtime.server``) share, whatever protocol their connections speak: listening with
the websockets server (TLS from ``callsim.tls``, the credential-redacting logger), stopping,
the list of connections and the open ones, picking the connections a fault hook acts on,
``wait_for`` and the change notification it waits on, the HTTP control routes on the same port,
and the life of one connection from accepted to recorded as closed.

A subclass builds the record and the connection of an accepted websocket and hands them to
:meth:`SimServer._run`, speaks its protocol in :meth:`SimServer._serve`, says in
:meth:`SimServer._check_upgrade` which upgrade requests it refuses, and routes control requests
in :meth:`SimServer._control`. Keeping this in one place keeps the two simulators' fault hooks,
shutdown and bookkeeping behaving alike for the tests that drive both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from callsim.live.handshake import RedactingLogger
from callsim.simconnection import CloseRecord, SimConnection, record_close
from callsim.simcontrol import JsonObject, Which, is_control_path, json_response
from callsim.tls import TlsMaterial, generate_tls, tls_names

logger = logging.getLogger("callsim")

CLOSE_TIMEOUT_S = 2.0
CLOSE_INTERNAL_ERROR = 1011
INTERNAL_ERROR_REASON = "internal simulator error"

ConnT = TypeVar("ConnT", bound=SimConnection[Any])
RecordT = TypeVar("RecordT", bound=CloseRecord)
_T = TypeVar("_T")


def select(connections: Sequence[ConnT], which: Which) -> list[ConnT]:
    """The connections (in index order) a hook's ``which`` names: all, the latest, or one."""
    if which == "all":
        return list(connections)
    if which == "latest":
        return list(connections[-1:])
    return [c for c in connections if c.record.index == which]


class SimServer(abc.ABC, Generic[ConnT, RecordT]):
    """Listening, stopping and connection bookkeeping of a simulator (see the module docstring).

    ``ConnT`` is the simulator's connection class, ``RecordT`` the record each one keeps."""

    #: Names the simulator in log lines and the ``Server`` header ("Live", "Realtime").
    _name: ClassVar[str]
    #: Largest incoming message the websocket accepts (None: no limit); websockets' default.
    _max_size: ClassVar[int | None] = 2**20

    def __init__(
        self, *, host: str, port: int, tls: TlsMaterial | None, http_control: bool
    ) -> None:
        self.http_control = http_control
        self._host = host
        self._requested_port = port
        self._tls = tls or generate_tls(tls_names(host))
        self._server: Server | None = None
        self._port: int | None = None
        self._connections: list[RecordT] = []
        self._live: dict[int, ConnT] = {}
        self._changed = asyncio.Event()
        self.internal_errors = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening (idempotent)."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            ssl=self._ssl_context(),
            process_request=self._process_request,
            compression=None,
            max_size=self._max_size,
            close_timeout=CLOSE_TIMEOUT_S,
            server_header=f"callbridge-{self._name.lower()}-simulator",
            logger=RedactingLogger(logging.getLogger("callsim.websockets")),
        )
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("%s simulator listening on %s", self._name, self.base_url)

    async def stop(self) -> None:
        """Close every connection (1001) and wait until all handlers and their tasks are done."""
        server, self._server = self._server, None
        if server is None:
            return
        for connection in list(self._live.values()):
            connection.server_closing = True
        server.close()
        await server.wait_closed()
        logger.info("%s simulator stopped", self._name)

    # --- properties ----------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def base_url(self) -> str:
        """The URL a client is configured with."""

    def _url(self, scheme: str, path: str = "") -> str:
        """``SCHEME://HOST:PORT`` + ``path``, with a wildcard listening host as 127.0.0.1."""
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        host = self._host if self._host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self._port}{path}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def tls(self) -> TlsMaterial:
        return self._tls

    @property
    def connections(self) -> list[RecordT]:
        """Every connection accepted so far, in order (``connections[i].index == i``)."""
        return self._connections

    # --- waiting -------------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[], _T],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline is the point of this helper
    ) -> _T:
        """Wait until ``predicate()`` is truthy and return its value (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            with contextlib.suppress(TimeoutError):  # woken by changes; polls catch the rest
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))

    def _notify(self) -> None:
        """Wake every ``wait_for``: something about the connections changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- fault-hook plumbing -------------------------------------------------------------------

    def _open_connections(self) -> list[ConnT]:
        """The connections still open, in index order."""
        live = sorted(self._live.values(), key=lambda c: c.record.index)
        return [c for c in live if c.ws.state is State.OPEN]

    def _pick(self, which: Which) -> list[ConnT]:
        """Open connections selected by ``which``."""
        return select(self._open_connections(), which)

    async def _send_or_ignore(self, connection: ConnT, message: JsonObject) -> None:
        """Send a hook's message; a connection that closed meanwhile is not an error."""
        try:
            await connection.send(message)
        except ConnectionClosed:
            logger.debug("connection %d closed before a hook message", connection.record.index)
        self._notify()

    # --- HTTP ----------------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        target = request.path
        if is_control_path(target):
            if not self.http_control:
                return connection.respond(404, "Not Found\n")
            status, body = await self._control(request.method, target)
            return json_response(connection, status, json.dumps(body) + "\n")
        return self._check_upgrade(connection, request)

    @abc.abstractmethod
    async def _control(self, method: str, target: str) -> tuple[int, JsonObject]:
        """Run one HTTP control request (``/_sim/...``): the status and the JSON body."""

    @abc.abstractmethod
    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        """The HTTP answer that refuses a websocket upgrade request, or None to accept it."""

    def _ssl_context(self) -> ssl.SSLContext | None:
        return self._tls.server_context()

    # --- one connection ------------------------------------------------------------------------

    @abc.abstractmethod
    async def _handle(self, ws: ServerConnection) -> None:
        """Build the record and the connection of an accepted websocket; :meth:`_run` them."""

    @abc.abstractmethod
    async def _serve(self, connection: ConnT) -> None:
        """Speak the protocol on an accepted connection until it is over."""

    async def _run(self, connection: ConnT, record: RecordT, label: str) -> None:
        """Keep ``connection`` in the books while :meth:`_serve` runs it: an unexpected error
        is counted and closes it 1011; when it is over, its tasks are done and its close is
        recorded."""
        self._connections.append(record)
        self._live[record.index] = connection
        logger.info("connection %d opened (%s)", record.index, label)
        self._notify()
        try:
            await self._serve(connection)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection %d: simulator error", record.index)
            self.internal_errors += 1
            await connection.close(CLOSE_INTERNAL_ERROR, INTERNAL_ERROR_REASON)
        finally:
            await connection.shutdown()
            del self._live[record.index]
            record_close(connection)
            logger.info(
                "connection %d closed by %s (%s %s)",
                record.index,
                record.closed_by,
                record.close_code,
                record.close_reason,
            )
            self._notify()
