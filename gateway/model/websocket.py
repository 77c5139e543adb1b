"""How every model connection's websocket is dialled, whichever provider's SDK dials it."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import Side, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover -- websockets built without its C extension
    from websockets.utils import apply_mask

from gateway import wire
from gateway.mediaplane import base64_frame, data_frame, fresh_key
from gateway.settings import Settings
from gateway.wsparser import between_frames, frame_header

_OPEN = State.OPEN
#: The data frames' opcodes, as ``data_frame`` reports them.
_OPCODES = {Opcode.TEXT.value: Opcode.TEXT, Opcode.BINARY.value: Opcode.BINARY}
#: First bytes of a whole (FIN) text frame and of a whole binary frame.
_TEXT = 0x81
_BINARY = 0x82


def websocket_options(
    settings: Settings, *, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """The ``websockets.connect`` options both SDKs pass through.

    The keepalive follows LIVE_PING_INTERVAL/TIMEOUT (generous: a missed pong kills the
    connection). ``close_timeout`` is short because a handoff waits for the old connection's
    close (Gemini rejects a resume while it is open) and a silent peer must not stall a call.
    ``ssl_context`` is only passed for the built-in simulators, whose throwaway CA nothing else
    trusts; otherwise the library's default context applies, which honours SSL_CERT_FILE.

    No permessage-deflate (``websockets`` offers it unless told not to): the messages are
    base64 audio, which deflate shrinks by a quarter at best, for a zlib pass over every 20 ms
    frame each way and a compressor's memory per connection. Whether a provider would accept
    the offer is theirs to decide; not making it keeps the cost the benchmarks measure.
    """
    options: dict[str, Any] = {
        "compression": None,
        "open_timeout": 10,
        "close_timeout": 2,
        "ping_interval": settings.live_ping_interval,
        "ping_timeout": settings.live_ping_timeout,
    }
    if ssl_context is not None:
        options["ssl"] = ssl_context
    return options


class DirectSender:
    """``ws.send`` for whole messages, writing straight to the transport when it can.

    ``websockets``' ``Connection.send`` wraps every message in an async context manager that
    re-checks the state, writes and then awaits a drain: ~10 µs per message, paid fifty times a
    second per call for caller audio (a sixth of the gateway's CPU went to sending to the
    model). When the connection is open, not in a fragmented send and not paused by flow
    control, :meth:`write_now` does the same two steps that context does inside — frame the text
    (``protocol.send_text``, masked with the C speedup) and hand the bytes to the transport
    (``send_data``) — synchronously, with no coroutine at all. Anything else (closing, paused,
    an error) takes ``Connection.send``'s own path (:meth:`__call__`), so its errors and flow
    control are unchanged. A socket of another shape (an SDK that moved to something else) gets
    its plain ``send``. Measured: 35-39 → 25 µs per 20 ms message, TLS and the write included.

    The frame itself is built here too (:meth:`_frame`), not by ``protocol.send_text``: that
    makes a ``Frame``, checks it, writes it through a ``BytesIO`` and draws each masking key
    with a system call (``secrets.token_bytes``), for a header that is two to four bytes.
    Keys come from ``os.urandom`` here as there, 1024 at a time (``mediaplane.fresh_key``, or
    the C pool of ``base64_frame`` for audio; RFC 6455 5.3 asks for a fresh, unpredictable key
    per frame, from a strong source of entropy: that is still so). Only
    while the protocol has nothing of its own waiting to go out, no fragmented message open
    and no extension negotiated (a compressed connection frames through ``websockets``).

    Bytes go out as a binary frame, as ``ws.send`` sends them, and a server's connection is
    served too, with unmasked frames (RFC 6455 5.1: a server never masks): the simulators send
    through it what the real services send (Gemini Live's frames are binary).
    """

    __slots__ = (
        "_direct",
        "_masked",
        "_protocol",
        "_send",
        "_send_data",
        "_transport",
        "_ws",
    )

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._send: Callable[[str | bytes], Awaitable[None]] = ws.send
        try:
            self._protocol = ws.protocol
            self._transport = ws.transport
            self._send_data = ws.send_data
            ws.paused  # noqa: B018 -- the attributes the fast path reads must all exist
            ws.send_in_progress  # noqa: B018
            ws.protocol.writes  # noqa: B018
            ws.protocol.extensions  # noqa: B018
            ws.protocol.expect_continuation_frame  # noqa: B018
            self._masked = ws.protocol.side is not Side.SERVER
            self._direct = True
        except AttributeError:
            self._direct = False

    def writable(self) -> bool:
        """Whether :meth:`write_now` would write now: open, not paused by flow control, no
        send of ``websockets``' own under way, the transport not closing."""
        ws = self._ws
        return (
            self._direct
            and self._protocol.state is _OPEN
            and not ws.paused
            and ws.send_in_progress is None
            and not self._transport.is_closing()
        )

    def write_now(self, message: str | bytes) -> bool:
        """Write ``message`` at once if the connection allows it: text as a text frame, bytes
        as a binary one, as ``ws.send`` does. False: use :meth:`__call__` (when
        :meth:`writable` was True just before, False means the transport failed as it wrote,
        and is aborted)."""
        if not self.writable():
            return False
        protocol = self._protocol
        text = isinstance(message, str)
        payload = message.encode() if isinstance(message, str) else message
        frame = None
        if protocol.writes or protocol.extensions or protocol.expect_continuation_frame:
            # Its errors are the caller's, as in send().
            (protocol.send_text if text else protocol.send_binary)(payload)
        else:
            frame = self._frame(payload, _TEXT if text else _BINARY)
        return self._write(frame)

    def _write(self, frame: bytes | None) -> bool:
        """``frame`` to the transport (None: what the protocol has waiting); False, with the
        transport aborted, if it broke just now (``send()`` then reports it)."""
        try:
            if frame is None:
                self._send_data()
            else:
                self._transport.write(frame)
        except Exception:
            self._transport.abort()
            return False
        return True

    def write_base64(self, prefix: bytes, data: bytes, suffix: bytes) -> bool:
        """:meth:`write_now` of the text ``prefix + base64url(data) + suffix`` (the shape of
        every audio message to the model, whose SDKs encode bytes as URL-safe base64), right
        after :meth:`writable` said True, with nothing written or awaited since: it is not
        asked again. Built, framed and masked in one C call
        (:func:`gateway.mediaplane.base64_frame`). False: the transport failed as it wrote,
        and is aborted."""
        protocol = self._protocol
        if protocol.writes or protocol.extensions or protocol.expect_continuation_frame:
            text = prefix.decode() + wire.urlsafe_b64encode(data) + suffix.decode()
            return self.write_now(text)  # framed by websockets, behind what it has waiting
        # None: the C call draws the frame's fresh key itself (no Python call per key).
        mask = None if self._masked else b""
        return self._write(base64_frame(_TEXT, prefix, data, suffix, mask, True))

    def lane_target(
        self,
        prefix: bytes,
        suffix: bytes,
        journal: Callable[..., None],
        failed: Callable[[], None],
    ) -> tuple[Any, ...] | None:
        """What the bridge's compiled lane (``gateway._mediaplane.CallerLane``) needs to
        write :meth:`write_base64`'s frames itself, with :meth:`writable`'s checks and its
        own: the connection, its protocol, the transport, the open state, the message's
        ``prefix`` and ``suffix``, whether frames are masked, and the session's ``journal``
        and ``failed`` (the write failed) callbacks. None when this socket is not one it can
        write to (another shape: only :meth:`__call__` will do)."""
        if not self._direct:
            return None
        return (
            self._ws, self._protocol, self._transport, _OPEN, prefix, suffix, self._masked,
            journal, failed,
        )  # fmt: skip

    def _frame(self, payload: bytes, first: int) -> bytes:
        """A whole frame (RFC 6455 5.2) carrying ``payload``, masked on a client's side;
        ``first`` is its first byte (FIN and the opcode)."""
        masked = self._masked
        header = frame_header(first, len(payload), masked=masked)
        if not masked:
            return header + payload
        mask = fresh_key()
        return header + mask + apply_mask(payload, mask)

    async def __call__(self, message: str | bytes) -> None:
        if not self.write_now(message):
            await self._send(message)


class DirectReader:
    """``websockets``' frame parsing, done for whole data frames in one pass of plain code.

    ``websockets`` parses every incoming frame through a chain of generators (``Protocol.parse``,
    ``Frame.parse``, ``StreamReader.read_exact``): the largest part of reading a model message,
    about a twentieth of the gateway's CPU at 50 calls. A model's messages are whole, unmasked
    text or binary frames of a few kilobytes (and a client's, as the simulators' servers read
    them, the same but masked), so :meth:`receive_data`, put in place of the protocol's own,
    cuts frames of that shape out of each read itself and hands them on as the parser would
    (as events, which the connection then processes). It does so only while the connection is
    open with no extension, no fragmented message under way and the parser between frames with
    nothing buffered; from the first byte of any other frame (a control frame, a fragment, a
    frame masked the wrong way for the side reading it, an oversized frame, a frame cut off by
    the end of the read) every byte goes to ``websockets``' own parser, which from then on
    decides as it always did. The shortcut resumes once that parser is back between frames.
    """

    __slots__ = ("_idle", "_limit", "_masked", "_protocol", "_receive")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        #: A server reads masked frames, a client unmasked ones (RFC 6455 5.1); a frame
        #: masked the other way is left to the parser, which fails the connection.
        self._masked = protocol.side is Side.SERVER
        self._receive: Callable[[bytes | bytearray], None] = protocol.receive_data
        limits = [protocol.max_message_size, protocol.max_fragment_size]
        self._limit: int | None = min((n for n in limits if n is not None), default=None)
        #: Set when the parser was found between frames, cleared when a byte goes to it.
        self._idle = False

    @classmethod
    def install(cls, ws: Any) -> bool:
        """Put a reader in front of ``ws``'s protocol; False (nothing done) for a connection
        of another shape than ``websockets`` 13-17's."""
        protocol = getattr(ws, "protocol", None)
        needed = ("receive_data", "parser", "reader", "events", "current_size", "extensions",
                  "side")  # fmt: skip
        if protocol is None or not all(hasattr(protocol, name) for name in needed):
            return False
        if not hasattr(protocol, "max_message_size") or not hasattr(protocol.reader, "buffer"):
            return False
        protocol.receive_data = cls(protocol).receive_data
        return True

    def receive_data(self, data: bytes | bytearray) -> None:
        taken = self._take_frames(data) if self._between_frames() else 0
        if taken < len(data):
            self._idle = False
            self._receive(data[taken:] if taken else data)

    def _between_frames(self) -> bool:
        protocol = self._protocol
        if protocol.state is not _OPEN:
            return False
        if self._idle:
            return True
        self._idle = between_frames(protocol)
        return self._idle

    def _take_frames(self, data: bytes | bytearray) -> int:
        """Add the whole data frames at the start of ``data`` to the protocol's events;
        returns the bytes taken (from the first frame of another shape on, none). Each frame
        is cut (header, bounds, unmasking) in one C call (:func:`gateway.mediaplane.data_frame`)."""
        if type(data) is not bytes:
            data = bytes(data)
        size, events, masked = len(data), self._protocol.events, self._masked
        limit = -1 if self._limit is None else self._limit
        at = 0
        while at < size:
            cut = data_frame(data, at, limit, masked)
            if cut is None or isinstance(cut, int):
                break  # another shape (websockets judges it), or cut off by the read's end
            opcode, payload, at = cut
            events.append(Frame(_OPCODES[opcode], payload))
        return at
