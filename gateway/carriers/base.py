"""The carrier-neutral seam: what a phone carrier's media websocket means to the bridge.

A carrier module is a *codec*, not a transport: it turns one websocket text message into one
event and builds the text of outbound messages, with no socket inside (the h11 way). That keeps
each carrier testable with plain strings, and lets the call bridge, the audio path and the
Gemini session stay ignorant of Twilio's and Telnyx's field names.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.audio.transcode import AudioFormat


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """The stream is live: ids, the negotiated audio format, and the webhook's parameters."""

    stream_id: str
    call_id: str
    audio_format: AudioFormat
    parameters: Mapping[str, str] = field(default_factory=dict)


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


def load_object(text: str) -> dict[str, Any]:
    """A carrier message as a JSON object; both carriers send nothing else."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("message is not JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    return msg


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
        return media, base64.b64decode(payload, validate=True)
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

    def media(self, payload: bytes) -> str:
        """Outbound audio (codec bytes, one or more whole 20 ms frames) → message text."""
        ...

    def mark(self, name: str) -> str:
        """A mark the carrier echoes once the audio sent before it has been played."""
        ...

    def clear(self) -> str:
        """Drop everything the carrier has buffered for playback (barge-in)."""
        ...
