"""The media-stream parse state machine both carriers share, written once.

Twilio and Telnyx speak the same protocol under different names: ``connected``, then one
``start`` naming the stream, then ``media``, ``mark``, ``dtmf`` and ``stop`` for that stream.
:class:`StreamCodec` owns that order; a carrier subclass supplies only its wire details (the key
that names the stream, how ``start`` is read, what media numbering means, events of its own,
the text of outbound messages).

The states, and what each inbound event does in them:

================  ==============================  ====================================
event             ``AWAITING_START``              ``STREAMING``
================  ==============================  ====================================
``connected``     ignored                         ignored
``start``         → ``STREAMING``, StreamStarted  ProtocolError (second start)
``media``         ProtocolError (before start)    AudioReceived (or None while held)
``mark``          ProtocolError (before start)    MarkPlayed
``dtmf``          ProtocolError (before start)    DtmfReceived
``stop``          ProtocolError (before start)    StreamStopped
other             the carrier's, else ProtocolError (unknown event)
================  ==============================  ====================================

In ``STREAMING`` a message naming another stream is refused. There is deliberately no
``STOPPED`` state: the bridge stops reading at :class:`StreamStopped`, so refusing what follows
would change nothing for a call, and Telnyx does not guarantee event order, so a media frame or
a mark echo arriving after ``stop`` is not a protocol violation to report.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from gateway import wire
from gateway.carriers.base import (
    AudioReceived,
    CarrierEvent,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
    load_object,
    media_object,
)
from gateway.mediaplane import carrier_media

#: The DTMF keys both carriers report (RFC 4733 events 0-15), either case for A-D.
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


class StreamState(enum.Enum):
    AWAITING_START = "awaiting start"
    STREAMING = "streaming"


_STREAMING = StreamState.STREAMING  # a module global: the hot path compares against it


class StreamCodec(ABC):
    """One stream's parse state machine; subclasses add the carrier's wire details.

    Each subclass is a :class:`~gateway.carriers.base.CarrierCodec`, the type the bridge holds.

    ``stream_id`` is None until ``start``, then the id every later message must match.
    """

    #: Short carrier name for logs and metrics ("twilio", "telnyx").
    carrier: str
    #: The top-level key naming the stream on inbound messages ("streamSid", "stream_id").
    stream_key: ClassVar[str]

    def __init__(self) -> None:
        self.state = StreamState.AWAITING_START
        self.stream_id: str | None = None
        #: The stream key and id as bytes, for :meth:`quick_audio` (None: not streaming).
        self._quick: tuple[bytes, bytes] | None = None

    @property
    def quick_shape(self) -> tuple[bytes, bytes] | None:
        return self._quick

    def quick_audio(self, raw: bytes) -> bytes | None:
        """The audio of a media message of this stream, read straight from its bytes.

        Answers only when :meth:`parse` would answer exactly ``AudioReceived`` of that audio:
        the message is in the carriers' plain shape (:func:`~gateway.mediaplane.carrier_media`)
        and the stream is under way. None for anything else, which :meth:`parse` then reads
        and judges as it always does. A carrier whose media is more than its audio (Telnyx
        reorders by its numbering) answers None, always.
        """
        quick = self._quick
        if quick is None:
            return None
        return carrier_media(raw, quick[0], quick[1])

    def parse(self, text: str) -> CarrierEvent | None:
        """One inbound text message → an event, or None for messages needing no action.

        Raises :class:`ProtocolError` for anything malformed, unknown or out of order.
        """
        msg = load_object(text)
        event = msg.get("event")
        if event == "media":  # the hot path: ~50 per second per call
            if self.state is not _STREAMING:
                raise ProtocolError("'media' before 'start'")
            stream_id = msg.get(self.stream_key)  # _check_stream, inlined: one call less
            if stream_id is not None and stream_id != self.stream_id:
                raise ProtocolError(f"message for another {self.stream_key}")
            return self._audio(msg)
        if event == "start":
            return self._begin(msg)
        if event == "connected":
            return None
        if event not in ("mark", "dtmf", "stop"):
            return self._carrier_event(event, msg)
        if self.state is not _STREAMING:
            raise ProtocolError(f"{event!r} before 'start'")
        self._check_stream(msg)
        if event == "stop":
            return StreamStopped()
        if event == "mark":
            name = _field(msg, "mark", "name")
            if not isinstance(name, str):
                raise ProtocolError("mark without a name")
            return MarkPlayed(name)
        digit = _field(msg, "dtmf", "digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ProtocolError("dtmf without a valid digit")
        return DtmfReceived(digit.upper())

    def _begin(self, msg: dict[str, Any]) -> StreamStarted:
        if self.state is _STREAMING:
            raise ProtocolError("second 'start' on one stream")
        started = self._start(msg)  # raises before any state changes on a bad start
        self.stream_id = started.stream_id
        self.state = _STREAMING
        if type(self)._audio is StreamCodec._audio:  # the media message is its audio, only
            self._quick = (self.stream_key.encode(), started.stream_id.encode())
        return started

    def _check_stream(self, msg: dict[str, Any]) -> None:
        stream_id = msg.get(self.stream_key)
        if stream_id is not None and stream_id != self.stream_id:
            raise ProtocolError(f"message for another {self.stream_key}")

    @staticmethod
    def _start_object(msg: dict[str, Any]) -> dict[str, Any]:
        """The ``start`` object of a start message; a fatal ProtocolError if it has none."""
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError("'start' without a start object", fatal=True)
        return start

    @abstractmethod
    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        """Read a ``start`` message (ids, media format, parameters); ProtocolError if unusable."""

    def _audio(self, msg: dict[str, Any]) -> AudioReceived | None:
        """A ``media`` message of this stream → its audio (a carrier may hold it to reorder)."""
        return AudioReceived(media_object(msg)[1])

    def _carrier_event(self, event: object, msg: dict[str, Any]) -> CarrierEvent | None:
        """An event the shared protocol does not know: the carrier's own, in any state."""
        raise ProtocolError(f"unknown event {str(event)[:40]!r}")

    @abstractmethod
    def media(self, payload: bytes) -> str:
        """Outbound audio (codec bytes, one or more whole 20 ms frames) → message text."""

    @abstractmethod
    def mark(self, name: str) -> str:
        """A mark the carrier echoes once the audio sent before it has been played."""

    @abstractmethod
    def clear(self) -> str:
        """Drop everything the carrier has buffered for playback (barge-in)."""


class UnnamedOutbound:
    """Outbound messages that name no stream (Telnyx's, the browser's): the socket is the
    stream. A mixin for a :class:`StreamCodec`."""

    def media(self, payload: bytes) -> str:
        return '{"event":"media","media":{"payload":"' + wire.b64encode(payload) + '"}}'

    def mark(self, name: str) -> str:
        return '{"event":"mark","mark":{"name":' + json.dumps(name) + "}}"

    def clear(self) -> str:
        return '{"event":"clear"}'


def _field(msg: Mapping[str, Any], obj: str, key: str) -> Any:
    inner = msg.get(obj)
    return inner.get(key) if isinstance(inner, dict) else None
