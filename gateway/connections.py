"""Connection-level defences uvicorn leaves to the application: slow requests, socket floods.

uvicorn's h11 protocol arms its keep-alive timer only *after* a response, so a client that
opens a connection and sends its headers a byte at a time (slowloris) holds the connection,
and a file descriptor, for as long as it likes. And nothing bounds how many connections are
open at once: a flood of them exhausts the process's descriptors, and then every call fails.
:func:`guarded_h11` returns uvicorn's h11 protocol with both bounds added:

- a request must arrive whole (headers, and body if any) within ``request_timeout_s`` of its
  first byte, and a new connection must start its first request as quickly; past that it is
  closed. Between requests the documented keep-alive timeout applies, as before; once a
  connection is upgraded to a websocket it is the stream's business (``start`` within 5 s);
- at most ``max_connections`` connections (HTTP and websocket) are open at once; one more is
  aborted as it is accepted, before it costs more than that.

The h11 protocol is used explicitly (not uvicorn's "auto", which prefers httptools when it is
installed) so these bounds hold whatever else is installed.

Upgraded connections get :class:`MediaWebSocketProtocol`, which reads a media stream's fifty
messages a second without pausing the socket after each, cuts them out of the bytes without
``websockets``' generator parse, and offers the application a media lane (:data:`MEDIA_LANE`):
a message handed to a callback as it is read, instead of through the ASGI queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from gateway.mediaplane import data_frame
from gateway.wsparser import between_frames, frame_header

#: Seconds a request has to arrive whole (the issue's slowloris bound).
REQUEST_TIMEOUT_S = 10.0

#: States in which h11 still expects more of the current request from the client.
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


def guarded_h11(
    *,
    max_connections: int,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    on_refused: Callable[[str], None] = lambda _: None,
) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with a request deadline and a connection cap.

    ``on_refused("request_timeout" | "connection_limit")`` is called for each connection the
    guards close (the gateway counts them in ``gateway_errors_total``).
    """

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.server_state.connections) >= max_connections:
                self.transport = transport  # connection_lost still runs and expects it
                transport.abort()
                on_refused("connection_limit")
                return
            super().connection_made(transport)
            self._arm()  # the first request must start, and arrive, in time too

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.get_protocol() is not self:
                self._disarm()  # upgraded to a websocket
            elif self.conn.their_state in _RECEIVING:
                self._arm()  # part of a request is here: the rest is due by the deadline
            else:
                self._disarm()  # the whole request arrived (or the connection is closing)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
            if self.conn.their_state in _RECEIVING:
                on_refused("request_timeout")
                self.transport.close()

    return GuardedH11Protocol


#: Carrier messages a websocket may have waiting for the call before the gateway stops reading
#: its socket: 32 media messages are 640 ms of audio, and at most 32 × WS_MAX_SIZE bytes.
MAX_QUEUED_MESSAGES = 32


#: The ASGI scope extension under which an upgraded socket offers its media lane: a callable
#: taking the application's handler (or None to withdraw it). See
#: :meth:`MediaWebSocketProtocol.offer_media_lane`.
MEDIA_LANE = "callbridge.media_lane"

#: The ASGI scope extension under which an upgraded socket offers to write a text message at
#: once: a callable taking the text, True if written (see
#: :meth:`MediaWebSocketProtocol.send_text_now`).
MEDIA_SEND = "callbridge.media_send"

#: Takes a text message's bytes (unmasked, UTF-8 not yet checked) as it is read: True if it
#: took it, False to have it queued as usual (and checked there).
MediaHandler = Callable[[bytes], bool]

_OPEN = State.OPEN
#: The text opcode, as ``data_frame`` reports it: every media message is a text frame.
_TEXT = 0x1
#: No media message comes near this; a larger frame takes uvicorn's path.
_MEDIA_MAX_BYTES = 0xFFFF


class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, cheaper per message for media streams.

    Two costs of uvicorn's protocol, paid fifty times a second per call:

    - **A pause per message.** uvicorn stops reading the socket after *every* message it hands
      to the application, and starts again when the application has taken it: an epoll change
      per frame (one ``io_uring_enter`` system call per frame under load, by ``strace -c``).
      Here reading pauses once :data:`MAX_QUEUED_MESSAGES` wait unread, and resumes (uvicorn's
      own ``receive``) once the call has taken them all: the same bound on what a sender can
      park in the gateway, at one pause per burst instead of one per message.
    - **A generator-based parse per frame.** ``websockets`` parses every frame through nested
      generators, then uvicorn dispatches the resulting events. Media messages are all of one
      shape, a whole masked text frame of a few hundred bytes, so :meth:`data_received` cuts
      frames of that shape out of the bytes itself (:meth:`_take_text_frames`) and hands the
      text over exactly as uvicorn would (:meth:`send_receive_event_to_app`: the same UTF-8
      check and 1007 close, the same discard once the app has closed). Anything else — a
      control frame (ping, pong, close), a fragment, a binary or unmasked frame, a frame over
      the size limit, a compressed connection, a connection not (or no longer) open — goes to
      uvicorn's own path from that frame on, unchanged; the fast path resumes only once the
      ``websockets`` parser is back between frames with nothing buffered, so the two never
      share a frame.

    And one cost of ASGI: each message goes through a queue to a task that awaits it, a task
    switch and three coroutine layers per message. The application may take the messages the
    fast path cuts as they are read instead (:meth:`offer_media_lane`, through the scope's
    :data:`MEDIA_LANE` extension): its handler is called with the message's bytes while nothing
    waits in the queue ahead of it, and what it declines is queued as before.
    """

    #: The application's media handler while it offers one (:meth:`offer_media_lane`).
    _media_handler: MediaHandler | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # upgraded (a refused handshake has no scope)
            scope["extensions"][MEDIA_LANE] = self.offer_media_lane
            scope["extensions"][MEDIA_SEND] = self.send_text_now

    def send_text_now(self, text: str) -> bool:
        """Write a text message at once, as ``websocket.send`` would, when nothing stands in
        its way: the handshake done, the connection open with no close begun and no
        extension, the transport writable (not paused by flow control) and not closing, and
        nothing of the protocol's own waiting to go out. False, with nothing done, otherwise:
        send it the ASGI way, which waits or raises as it always does.

        The carrier's playout sends ten messages a second per call; the ASGI way is Starlette's
        checks, an ``await`` of the writable event and ``websockets``' ``Frame`` for each. The
        frame here is the same bytes: a server's frame is never masked (RFC 6455 5.1)."""
        conn = self.conn
        if (
            not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or conn.state is not _OPEN
            or conn.extensions
            or conn.writes
            or conn.expect_continuation_frame
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        payload = text.encode()
        self.transport.write(frame_header(0x81, len(payload), masked=False) + payload)
        return True

    def offer_media_lane(self, handler: MediaHandler | None) -> None:
        """Hand each text message the fast path reads to ``handler`` first (None: stop).

        Called only while no message waits in the ASGI queue (so the order the application
        sees is the order sent) and the socket is open and not closing, with the message's
        bytes: the handler may take only a message it found to be valid UTF-8 (the bridge's
        reads plain ASCII, or decodes), for one it declines is queued and checked as uvicorn
        checks it (invalid UTF-8: its 1007 close). Handing the bytes saves a decode per frame
        when the handler reads them as bytes. A handler that raises is withdrawn: the error is
        logged and the message is queued, so the application's own path meets it.
        """
        self._media_handler = handler

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        #: The start of a frame the fast path has seen only part of.
        self._partial = b""
        #: Set when ``websockets``' parser was found between frames (the walk down its
        #: generators costs more than the rest of a frame's cut), cleared whenever a byte goes
        #: to it: nothing else moves that parser.
        self._parser_idle = False
        #: The largest frame the fast path takes: under 64 KiB (a media message is a few
        #: hundred bytes), and within ``websockets``' own limits (uvicorn's ``ws_max_size``);
        #: a larger one is left to it (and refused with 1009 past those limits).
        limits = [_MEDIA_MAX_BYTES, self.conn.max_message_size, self.conn.max_fragment_size]
        self._frame_limit = min(n for n in limits if n is not None)

    def data_received(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        elif not self._fast_path_open():
            self._parser_idle = False
            super().data_received(data)
            return
        taken = self._take_text_frames(data)
        if taken < len(data):
            self._parser_idle = False
            super().data_received(data[taken:])  # from a frame's first byte: uvicorn's path

    def _fast_path_open(self) -> bool:
        """Whether the connection is open and ``websockets``' parser is between frames."""
        conn = self.conn
        if not self.handshake_complete or self.close_sent or conn.state is not _OPEN:
            return False
        if self._parser_idle:  # found between frames, and fed nothing since
            return True
        self._parser_idle = between_frames(conn)
        return self._parser_idle

    def _take_text_frames(self, data: bytes) -> int:
        """Deliver the whole masked text frames at the start of ``data``; returns the bytes
        taken. A frame cut off by the end of ``data`` is kept for the next read; the first frame
        of another shape stops the loop, and it and what follows are uvicorn's."""
        size = len(data)
        limit = self._frame_limit
        at = 0
        while at < size:
            # One C call: the header read, the bounds checked, the payload unmasked.
            cut = data_frame(data, at, limit, True)
            if cut is None or (not isinstance(cut, int) and cut[0] != _TEXT):
                return at  # another shape: unmasked (a protocol error uvicorn's path
                # reports), a control frame, a fragment, a binary frame, too long
            if isinstance(cut, int):
                break  # cut off by the end of the read
            _, payload, at = cut
            handler = self._media_handler
            # The media lane (see offer_media_lane), inline: once per caller frame.
            if handler is not None and not self.close_sent and not self.queue.qsize():
                try:
                    if handler(payload):
                        continue
                except Exception:
                    self.logger.exception("The media lane's handler failed; it is withdrawn.")
                    self._media_handler = None
            self.curr_msg_data_type = "text"
            self.frames = [payload]
            self.send_receive_event_to_app()
            if self.close_sent or self.transport.is_closing():  # e.g. invalid UTF-8: closed
                return size
        self._partial = data[at:]
        return size

    def connection_lost(self, exc: Exception | None) -> None:
        self._media_handler = None  # no reference to the application past the connection
        super().connection_lost(exc)

    def send_receive_event_to_app(self) -> None:
        paused = self.read_paused
        self.read_paused = True  # uvicorn pauses unless it believes it already has
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and self.queue.qsize() >= MAX_QUEUED_MESSAGES:
            self.read_paused = True
            self.transport.pause_reading()
