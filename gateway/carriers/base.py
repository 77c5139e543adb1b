"""The carrier-neutral seam: what a phone carrier's media websocket means to the bridge.

A carrier module is a *codec*, not a transport: it turns one websocket text message into one
event and builds the text of outbound messages, with no socket inside (the h11 way). That keeps
each carrier testable with plain strings, and lets the call bridge, the audio path and the
Gemini session stay ignorant of Twilio's and Telnyx's field names.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from gateway import wire
from gateway.audio.transcode import AudioFormat


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """The stream is live: ids, the negotiated audio format, and the webhook's parameters."""

    stream_id: str
    call_id: str
    audio_format: AudioFormat
    parameters: Mapping[str, str] = field(default_factory=dict)
    #: The carrier account the call belongs to (Twilio ``accountSid``), when it says.
    account_id: str = ""
    #: The format the carrier expects the gateway's audio in, when it differs from the
    #: caller's (Telnyx plays its ``bidirectionalCodec``, transcoded where it can).
    downlink_format: AudioFormat | None = None

    @property
    def outbound_format(self) -> AudioFormat:
        return self.downlink_format or self.audio_format

    @property
    def direction(self) -> str:
        """``outbound`` for a call the gateway placed (``POST /calls``), else ``inbound``."""
        return OUTBOUND if self.parameters.get(DIRECTION_PARAMETER) == OUTBOUND else INBOUND

    @property
    def own_number(self) -> str | None:
        """See :func:`own_number`."""
        return own_number(self.parameters)


#: Stream parameters the gateway gives a call it placed itself (``POST /calls``, see
#: :mod:`gateway.web.outbound`): ``direction=outbound`` (absent: ``inbound``) and ``phase``,
#: the pipeline stage the call starts in. Set by the gateway from its own webhook URL, never
#: from a caller's ``param.*``.
DIRECTION_PARAMETER = "direction"
PHASE_PARAMETER = "phase"
INBOUND = "inbound"
OUTBOUND = "outbound"


def own_number(parameters: Mapping[str, str]) -> str | None:
    """The gateway's own number on a call, which ``routes`` in agents.yaml match: an inbound
    call was made *to* it (``to``), an outbound one *from* it (``from``, the caller id the
    gateway dialled with). Matching the callee's number instead would send every outbound call
    to whatever stage happens to be routed for that stranger's number."""
    if parameters.get(DIRECTION_PARAMETER) == OUTBOUND:
        return parameters.get("from")
    return parameters.get("to")


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """One chunk of caller audio in the stream's codec (already base64-decoded)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The carrier echoed a mark: the audio before it was played, *or* flushed by a clear."""

    name: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """The carrier ended the stream (the caller hung up, or the call was redirected)."""


@dataclass(frozen=True, slots=True)
class CarrierReportedError:
    """The carrier rejected something the gateway sent (Telnyx ``error`` event)."""

    code: str
    title: str
    detail: str = ""


CarrierEvent = (
    StreamStarted | AudioReceived | MarkPlayed | DtmfReceived | StreamStopped | CarrierReportedError
)


class ProtocolError(ValueError):
    """A message the gateway will not act on.

    ``fatal`` messages make continuing unsafe or pointless (the stream's audio format is
    unsupported, say), so the call is closed; the rest are dropped and counted.
    """

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


#: Carrier messages nest 3 deep; JSON nested ~1000 deep makes the parser raise RecursionError.
MAX_JSON_DEPTH = 16
#: ``<Parameter>``s kept from a start message, and the length kept of each name and value.
MAX_PARAMETERS = 32
MAX_PARAMETER_NAME = 64
MAX_PARAMETER_VALUE = 1000
#: Ids the carriers send (``CA…``, ``MZ…``, ``v3:…``): printable ASCII, no spaces, bounded.
_ID = re.compile(r"[\x21-\x7e]{1,256}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def load_object(text: str) -> dict[str, Any]:
    """A carrier message as a JSON object; both carriers send nothing else.

    Nesting is bounded *before* parsing: a 2 KB message nested 1000 deep would otherwise raise
    RecursionError out of ``json.loads``. The two counts are a cheap filter (a media message
    has two opening braces); only a suspicious message pays for the exact depth.

    Parsed by :func:`gateway.wire.loads` (in C, fifty media messages a second per call), which
    may read an integer beyond 64 bits as a float: a media message reads its numbers only as
    bounded counters, which refuse both. Any other message (a start's custom parameters are
    kept as text) is read by ``json`` itself.
    """
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise ProtocolError(f"message nested deeper than {MAX_JSON_DEPTH}")
    try:
        msg = wire.loads(text)
        if isinstance(msg, dict) and msg.get("event") != "media":
            msg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: belt and braces for the check above
        raise ProtocolError("message is not JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    return msg


def _depth(text: str) -> int:
    """How deep the brackets of a JSON text nest, strings ignored; stops past the bound."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
        else:
            depth -= 1
    return deepest


def bounded_int(value: object, *, high: int = 2**31 - 1) -> int | None:
    """A JSON number or digit string as an int in ``0..high``, else None.

    Carriers send counters as strings (``"chunk": "2"``) and rates as numbers; anything else
    (a 5000-digit string, ``1e999``, ``"²"``, a bool) is refused here rather than raising
    ``ValueError``/``OverflowError`` wherever it is converted.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 12 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        return None
    return number if 0 <= number <= high else None


def is_carrier_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` looks like an id a carrier sends (in a start message or a webhook)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def carrier_id(value: object, what: str) -> str:
    """An id from a start message (stream, call), or a fatal ProtocolError."""
    if not is_carrier_id(value):
        raise ProtocolError(f"'start' without a valid {what}", fatal=True)
    return value


def custom_parameters(raw: object) -> dict[str, str]:
    """``<Parameter>``s from a start message: an object (Twilio, Telnyx TeXML) or a list of
    ``{name, value}`` (Telnyx Call Control's request shape), scalars only, bounded in count and
    size; anything else in there is dropped rather than trusted."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(p.get("name"), p.get("value")) for p in raw if isinstance(p, dict)]
    else:
        raise ProtocolError("custom parameters are not an object", fatal=True)
    out: dict[str, str] = {}
    for name, value in items[:MAX_PARAMETERS]:
        scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
        if isinstance(name, str) and name and scalar:
            out[name[:MAX_PARAMETER_NAME]] = str(value)[:MAX_PARAMETER_VALUE]
    return out


def media_object(msg: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The ``media`` object of an inbound media message and its decoded audio.

    Twilio and Telnyx agree on this part (``media.track``, base64 ``media.payload``); only the
    inbound track is the caller.
    """
    media = msg.get("media")
    if not isinstance(media, dict):
        raise ProtocolError("media without a media object")
    if media.get("track", "inbound") != "inbound":
        raise ProtocolError(f"media on track {str(media.get('track'))[:20]!r}")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("media without a payload")
    try:
        return media, wire.b64decode(payload)
    except (binascii.Error, ValueError):
        raise ProtocolError("media payload is not valid base64") from None


class CarrierCodec(Protocol):
    """Translates one carrier's websocket JSON to and from :data:`CarrierEvent`."""

    #: Short carrier name for logs and metrics ("twilio", "telnyx").
    carrier: str

    def parse(self, text: str) -> CarrierEvent | None:
        """One inbound text message → an event, or None for messages needing no action.

        Raises :class:`ProtocolError` for anything malformed, unknown or out of order.
        """
        ...

    def quick_audio(self, raw: bytes) -> bytes | None:
        """The audio of a media message read straight from its bytes when :meth:`parse` would
        answer exactly that audio; None otherwise (then parse it)."""
        ...

    @property
    def quick_shape(self) -> tuple[bytes, bytes] | None:
        """The stream key and stream id :meth:`quick_audio` reads messages with
        (:func:`gateway.mediaplane.carrier_media`'s last two arguments); None while it answers
        None to every message."""
        ...

    def media(self, payload: bytes) -> str:
        """Outbound audio (codec bytes, one or more whole 20 ms frames) → message text."""
        ...

    def mark(self, name: str) -> str:
        """A mark the carrier echoes once the audio sent before it has been played."""
        ...

    def clear(self) -> str:
        """Drop everything the carrier has buffered for playback (barge-in)."""
        ...
