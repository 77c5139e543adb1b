"""Telnyx's side of the media-streaming WebSocket, as pure functions (no I/O).

The Telnyx caller simulator plays Telnyx against a gateway. This module says *what* Telnyx sends
on the media WebSocket (the JSON messages, exactly as in the Telnyx docs), *whether* each frame
the gateway sends back would be accepted, and how the negotiated codecs are encoded and decoded.
The webhook/TeXML side is :mod:`callsim.telnyx.webhook`, the Call Control API is
:mod:`callsim.telnyx.api`, sockets and clocks are in
:mod:`callsim.callers.telnyx`.

Telnyx differs from Twilio in ways a gateway gets wrong: outbound messages carry **no** stream id;
each outbound chunk must be 20 ms to 30 s of the *bidirectional* codec (which may differ from the
codec Telnyx sends); inbound order is not guaranteed; and Telnyx answers a frame it rejects with
an ``error`` event. Violations are ``"<kind>: <detail>"`` strings with a :class:`Violation` kind.
"""

from __future__ import annotations

import base64
import binascii
import random
import secrets
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from callsim.twilio.peer import (
    DuplicateKeyError,
    GatewayFrame,
    format_violation,
    loads_strict,
)
from gateway.audio import g711, g722
from gateway.audio.transcode import G722_16K, L16_16K, PCMA_8K, PCMU_8K, AudioFormat

#: Where Telnyx puts a Call Control stream's ``stream_auth_token``: this upgrade header, and the
#: same key in the ``connected`` frame (Telnyx AsyncAPI spec, "Stream call media over WebSocket").
#: Written here from the spec, not imported from the gateway: the peer checks the gateway.
STREAM_AUTH_HEADER = "x-telnyx-streaming-auth-token"

__all__ = [
    "DTMF_DIGITS",
    "FORMATS",
    "MAX_CHUNK_FRAMES",
    "STREAM_AUTH_HEADER",
    "Violation",
    "connected_message",
    "decoder_for",
    "dtmf_message",
    "encoder_for",
    "error_message",
    "mark_message",
    "media_message",
    "media_send_plan",
    "new_call_control_id",
    "new_uuid",
    "occurred_at",
    "parse_gateway_frame",
    "start_message",
    "stop_message",
]

DTMF_DIGITS = frozenset("0123456789*#ABCD")
"""RFC 4733 telephone events a phone can send (A-D exist on some keypads)."""

FORMATS: Final[dict[str, AudioFormat]] = {
    "PCMU": PCMU_8K,
    "PCMA": PCMA_8K,
    "G722": G722_16K,
    "L16": L16_16K,  # RTP L16 is network byte order (RFC 3551) [unverified for Telnyx]
}
"""The codecs the simulator speaks, as audio formats (G.722 carries 16 kHz audio)."""

MAX_CHUNK_FRAMES: Final = 1500
"""Telnyx plays outbound chunks "in a size of 20 milliseconds to 30 seconds": 1500 frames."""

_MALFORMED = (100003, "malformed_frame", "Received frame was not formed correctly")
_INVALID_MEDIA = (100004, "invalid_media", "Media provided was not base64 encoded")


class Violation(StrEnum):
    """Kinds of Telnyx protocol violations; the prefix of every violation string."""

    # webhook and TeXML
    WEBHOOK_FAILED = "webhook-failed"  # no HTTP answer
    WEBHOOK_STATUS = "webhook-status"  # not 2xx (TeXML: not 200) to a validly signed webhook
    WEBHOOK_CONTENT_TYPE = "webhook-content-type"  # TeXML not text/xml or application/xml
    TEXML_INVALID = "texml-invalid"  # not XML, or root is not <Response>
    TEXML_NO_STREAM = "texml-no-stream"  # no <Connect><Stream>: no two-way stream
    TEXML_MULTIPLE_STREAMS = "texml-multiple-streams"  # one bidirectional RTP stream per call
    PARAMETER_INVALID = "parameter-invalid"  # <Parameter>/custom_parameters without name/value
    # stream setup, TeXML and Call Control alike
    STREAM_URL_SCHEME = "stream-url-scheme"  # not wss:// (ws:// with require_wss)
    STREAM_URL_MALFORMED = "stream-url-malformed"  # missing, no host, fragment
    STREAM_TRACK = "stream-track"  # outbound_track: the gateway would not hear the caller
    BIDIRECTIONAL_MODE = "bidirectional-mode"  # missing or mp3: no live audio back
    CODEC = "codec"  # unknown or unsimulated codec
    SAMPLING_RATE = "sampling-rate"  # a rate the codec is not offered at
    # Call Control REST API
    API_UNAUTHORIZED = "api-unauthorized"  # no or wrong Authorization: Bearer (401)
    API_BAD_REQUEST = "api-bad-request"  # body not a JSON object
    API_INVALID_PARAMETER = "api-invalid-parameter"  # a field with a wrong type or value (422)
    API_UNKNOWN_ACTION = "api-unknown-action"  # no such command (404)
    API_UNKNOWN_CALL = "api-unknown-call"  # call_control_id the API never issued (404)
    CALL_CONTROL_ORDER = "call-control-order"  # e.g. streaming_start before answer (422)
    CALL_CONTROL_MISSING = "call-control-missing"  # answer/streaming_start never came
    CALL_LEFT_UP = "call-left-up"  # stream closed but the call never hung up (dead air)
    # the media WebSocket
    STREAM_CONNECT_FAILED = "stream-connect-failed"  # handshake not 101, refused, timeout
    WEBSOCKET_PROTOCOL = "websocket-protocol-error"  # bad UTF-8, bad framing
    BINARY_FRAME = "binary-frame"
    INVALID_JSON = "invalid-json"
    DUPLICATE_KEY = "duplicate-key"
    NOT_AN_OBJECT = "not-an-object"
    UNKNOWN_EVENT = "unknown-event"  # event not media/mark/clear
    MISSING_FIELD = "missing-field"
    EXTRA_FIELD = "extra-field"
    STREAM_ID_IN_OUTBOUND = "stream-id-in-outbound"  # Telnyx outbound frames carry no id
    BAD_FIELD_TYPE = "bad-field-type"
    BAD_PAYLOAD = "bad-payload"  # not strict base64 (100004)
    MEDIA_TOO_SHORT = "media-too-short"  # under 20 ms of the codec (100003)
    MEDIA_TOO_LONG = "media-too-long"  # over 30 s of the codec (100003)
    MEDIA_PARTIAL_FRAME = "media-partial-frame"  # not a whole number of 20 ms frames
    PAYLOAD_FILE_HEADER = "payload-file-header"  # a WAV or MP3 file in RTP mode


# --- ids and times ------------------------------------------------------------------------------


def new_call_control_id() -> str:
    """A Telnyx-style call_control_id: ``v3:`` and URL-safe random text (also TeXML's CallSid)."""
    return "v3:" + secrets.token_urlsafe(39)


def new_uuid(*, upper: bool = False) -> str:
    """A UUID as Telnyx writes them (stream ids upper case, session ids lower case)."""
    text = str(uuid.uuid4())
    return text.upper() if upper else text


def occurred_at(wall_time: float) -> str:
    """ISO 8601 UTC with microseconds, as in Telnyx's ``occurred_at``."""
    return datetime.fromtimestamp(wall_time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- messages Telnyx sends ----------------------------------------------------------------------


def connected_message(auth_token: str | None = None) -> dict[str, Any]:
    """First message on the socket: no ``protocol`` (unlike Twilio), no sequence number; the
    stream's ``stream_auth_token`` when one was given."""
    message: dict[str, Any] = {"event": "connected", "version": "1.0.0"}
    if auth_token is not None:
        message[STREAM_AUTH_HEADER] = auth_token
    return message


def start_message(
    *,
    seq: int = 1,
    stream_id: str,
    user_id: str,
    call_control_id: str,
    call_session_id: str,
    from_number: str,
    to_number: str,
    client_state: str | None,
    encoding: str,
    sample_rate: int,
    custom_parameters: Mapping[str, str] | None = None,
    parameters_key: str | None = "custom_parameters",
) -> dict[str, Any]:
    """The ``start`` message (``stream_id`` is top level only; ``media_format`` snake case).

    Where Telnyx puts ``<Parameter>``s is undocumented, so ``parameters_key`` names the key
    (``None``: leave them out); they are sent only when there are some.
    """
    start: dict[str, Any] = {
        "user_id": user_id,
        "call_control_id": call_control_id,
        "call_session_id": call_session_id,
        "from": from_number,
        "to": to_number,
        "client_state": client_state,
        "media_format": {"encoding": encoding, "sample_rate": sample_rate, "channels": 1},
    }
    if custom_parameters and parameters_key:
        start[parameters_key] = dict(custom_parameters)
    return {"event": "start", "sequence_number": str(seq), "start": start, "stream_id": stream_id}


def media_message(
    *, seq: int, stream_id: str, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    """An inbound ``media`` message; numeric fields are strings, as in the Telnyx examples."""
    return {
        "event": "media",
        "sequence_number": str(seq),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "stream_id": stream_id,
    }


def dtmf_message(*, seq: int, stream_id: str, digit: str, occurred: str) -> dict[str, Any]:
    """A key press (no ``track``, unlike Twilio; ``occurred_at`` orders it against media)."""
    return {
        "event": "dtmf",
        "stream_id": stream_id,
        "occurred_at": occurred,
        "sequence_number": str(seq),
        "dtmf": {"digit": digit},
    }


def mark_message(*, seq: int, stream_id: str, name: str) -> dict[str, Any]:
    """The echo of a gateway mark: its audio played, or a ``clear`` flushed it."""
    return {
        "event": "mark",
        "stream_id": stream_id,
        "sequence_number": str(seq),
        "mark": {"name": name},
    }


def stop_message(*, seq: int, stream_id: str, user_id: str, call_control_id: str) -> dict[str, Any]:
    """Sent when the call ends (either side), before Telnyx closes the socket."""
    return {
        "event": "stop",
        "sequence_number": str(seq),
        "stop": {"user_id": user_id, "call_control_id": call_control_id},
        "stream_id": stream_id,
    }


def error_message(*, stream_id: str, code: int, title: str, detail: str) -> dict[str, Any]:
    """Telnyx's answer to a frame it rejects (no sequence number in the documented example)."""
    return {
        "event": "error",
        "payload": {"code": code, "title": title, "detail": detail},
        "stream_id": stream_id,
    }


def media_send_plan(
    total: int,
    *,
    window: int = 0,
    duplicate_every: int = 0,
    rng: random.Random | None = None,
    shuffle: bool = True,
) -> list[list[int]]:
    """When each inbound media chunk is sent, to model Telnyx's unordered delivery.

    ``plan[k - 1]`` lists the chunks sent at the capture time of chunk ``k``, in wire order.
    Chunks go in consecutive blocks of ``window``; a block is shuffled (unless ``shuffle`` is
    False: a network that stalls and then delivers in order, in bursts) and sent once its last
    chunk is captured (never before a chunk exists). Every ``duplicate_every``-th message sent
    is sent again right after itself. ``window`` <= 1 and no duplicates: chunk ``k`` at ``k``.
    """
    if total < 0 or window < 0 or duplicate_every < 0:
        raise ValueError("total, window and duplicate_every must be >= 0")
    rng = rng or random.Random()
    plan: list[list[int]] = [[] for _ in range(total)]
    size = max(window, 1)
    sent = 0
    for first in range(1, total + 1, size):
        block = list(range(first, min(first + size, total + 1)))
        if len(block) > 1 and shuffle:
            rng.shuffle(block)
        slot = plan[max(block) - 1]
        for chunk in block:
            sent += 1
            slot.append(chunk)
            if duplicate_every and sent % duplicate_every == 0:
                slot.append(chunk)
    return plan


# --- codecs -------------------------------------------------------------------------------------


def encoder_for(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """PCM16LE at ``fmt.sample_rate`` -> payload bytes; stateful for G.722 (one per stream)."""
    if fmt.encoding == "PCMU":
        return g711.ulaw_encode
    if fmt.encoding == "PCMA":
        return g711.alaw_encode
    if fmt.encoding == "G722":
        return g722.G722Encoder().encode
    return g711.pcm16_byteswap if fmt.byteorder == "big" else bytes


def decoder_for(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """Payload bytes -> PCM16LE; stateful for G.722, so feed payloads in arrival order.

    A half L16 sample at the end of a payload is dropped rather than shifting every later
    sample (such a payload is already a violation).
    """
    if fmt.encoding == "PCMU":
        return g711.ulaw_decode
    if fmt.encoding == "PCMA":
        return g711.alaw_decode
    if fmt.encoding == "G722":
        return g722.G722Decoder().decode
    swap = fmt.byteorder == "big"
    return lambda data: g711.pcm16_byteswap(data) if swap else bytes(data[: len(data) & ~1])


# --- messages the gateway sends -----------------------------------------------------------------

_FIELDS: dict[str, frozenset[str]] = {
    "media": frozenset({"event", "media"}),
    "mark": frozenset({"event", "mark"}),
    "clear": frozenset({"event"}),
}
_EVENTS: dict[str, Literal["media", "mark", "clear"]] = {
    "media": "media",
    "mark": "mark",
    "clear": "clear",
}
_INNER: dict[str, str] = {"media": "payload", "mark": "name"}
_STREAM_ID_KEYS = frozenset({"stream_id", "streamSid", "streamId"})


def parse_gateway_frame(frame: str | bytes, *, fmt: AudioFormat, stream_id: str) -> GatewayFrame:
    """Parse and validate one WebSocket frame the gateway sent; ``fmt`` is the bidirectional
    codec (what the gateway must send).

    ``event`` is set when Telnyx would act on the frame. A chunk that is not a whole number of
    20 ms frames is a violation (RTP leaves with a fixed ptime) but still plays, because Telnyx
    documents any size from 20 ms to 30 s. ``reply`` is the ``error`` event Telnyx answers a
    rejected frame with: 100004 for bad base64, 100003 for anything else malformed.
    """
    out = GatewayFrame()
    _parse(frame, fmt, out)
    if out.event is None and out.violations:
        invalid_media = any(v.startswith(Violation.BAD_PAYLOAD) for v in out.violations)
        code, title, detail = _INVALID_MEDIA if invalid_media else _MALFORMED
        out.reply = error_message(stream_id=stream_id, code=code, title=title, detail=detail)
    return out


def _parse(frame: str | bytes, fmt: AudioFormat, out: GatewayFrame) -> None:
    add = out.violations.append
    if isinstance(frame, bytes):
        add(format_violation(Violation.BINARY_FRAME, f"{len(frame)}-byte binary frame; send text"))
        return
    try:
        message = loads_strict(frame)
    except DuplicateKeyError as exc:
        add(format_violation(Violation.DUPLICATE_KEY, f"keys {exc} repeated"))
        return
    except ValueError as exc:
        add(format_violation(Violation.INVALID_JSON, f"{exc}: {frame[:80]!r}"))
        return
    if not isinstance(message, dict):
        kind = type(message).__name__
        add(format_violation(Violation.NOT_AN_OBJECT, f"JSON {kind}, not an object"))
        return
    out.message = message
    event = message.get("event")
    if not isinstance(event, str) or event not in _FIELDS:
        kind = Violation.MISSING_FIELD if "event" not in message else Violation.UNKNOWN_EVENT
        add(format_violation(kind, f"event {event!r}; the gateway may send media, mark or clear"))
        return
    expected = _FIELDS[event]
    for name in sorted(expected - message.keys()):
        add(format_violation(Violation.MISSING_FIELD, f"{event}: no {name}"))
    for name in sorted(message.keys() - expected):
        if name in _STREAM_ID_KEYS:
            text = f"{event}: {name} present; Telnyx outbound messages carry no stream id"
            add(format_violation(Violation.STREAM_ID_IN_OUTBOUND, text))
        else:
            add(format_violation(Violation.EXTRA_FIELD, f"{event}: unexpected {name}"))
    if event in _INNER and event in message:
        _check_inner(event, message[event], fmt, out)
    if all(v.startswith(Violation.MEDIA_PARTIAL_FRAME) for v in out.violations):
        out.event = _EVENTS[event]


def _check_inner(event: str, inner: object, fmt: AudioFormat, out: GatewayFrame) -> None:
    add = out.violations.append
    if not isinstance(inner, dict):
        kind = type(inner).__name__
        add(format_violation(Violation.BAD_FIELD_TYPE, f"{event}.{event} is {kind}, not object"))
        return
    key = _INNER[event]
    if key not in inner:
        add(format_violation(Violation.MISSING_FIELD, f"{event}: no {event}.{key}"))
    for name in sorted(inner.keys() - {key}):
        add(format_violation(Violation.EXTRA_FIELD, f"{event}: unexpected {event}.{name}"))
    value = inner.get(key)
    if key in inner and not isinstance(value, str):
        kind = type(value).__name__
        add(format_violation(Violation.BAD_FIELD_TYPE, f"{event}.{key} is {kind}, not string"))
        return
    if event == "mark" and isinstance(value, str):
        out.mark_name = value
    elif isinstance(value, str):
        _check_payload(value, fmt, out)


def _check_payload(payload: str, fmt: AudioFormat, out: GatewayFrame) -> None:
    add = out.violations.append
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        add(format_violation(Violation.BAD_PAYLOAD, f"not base64 ({exc}): {payload[:40]!r}"))
        return
    frame, size = fmt.frame_bytes, len(audio)
    what = f"{size} bytes of {fmt}"
    if audio[:4] == b"RIFF" or audio[:3] == b"ID3":
        text = "media.payload is a WAV/MP3 file; RTP mode takes raw codec bytes (it plays as noise)"
        add(format_violation(Violation.PAYLOAD_FILE_HEADER, text))
    elif size < frame:
        text = f"{what} is under 20 ms ({frame} bytes); Telnyx takes 20 ms to 30 s per message"
        add(format_violation(Violation.MEDIA_TOO_SHORT, text))
    elif size > MAX_CHUNK_FRAMES * frame:
        text = f"{what} is over 30 s; Telnyx takes 20 ms to 30 s per message"
        add(format_violation(Violation.MEDIA_TOO_LONG, text))
    elif size % frame:
        text = f"{what} is not a whole number of 20 ms frames ({frame} bytes each)"
        add(format_violation(Violation.MEDIA_PARTIAL_FRAME, text))
    out.payload = audio
