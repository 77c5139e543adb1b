"""Twilio's side of the Media Streams WebSocket, as pure functions (no I/O).

The caller simulator plays Twilio against a gateway. This module says *what* Twilio sends on the
media WebSocket (the JSON messages, exactly) and *whether* each frame the gateway sends back would
be accepted by Twilio. The webhook and TwiML side is :mod:`callsim.twilio.webhook`;
sockets and clocks live in :mod:`callsim.callers.twilio`. Keeping these parts pure lets them be
tested with plain strings.

Validation is deliberately strict: each rule is one Twilio documents (error codes in the texts),
so a gateway that passes here does not produce debugger errors on a real call. A problem is
reported as a violation string ``"<kind>: <detail>"``, where ``<kind>`` is a :class:`Violation`
value, stable for tests to match.

:class:`GatewayFrame`, :func:`format_violation` and :func:`loads_strict` are carrier-neutral and
shared with :mod:`callsim.telnyx.peer`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from callsim.jsontext import compact

__all__ = [
    "DTMF_DIGITS",
    "FRAME_BYTES",
    "FRAME_S",
    "DuplicateKeyError",
    "GatewayFrame",
    "Violation",
    "connected_message",
    "dtmf_message",
    "encode",
    "format_violation",
    "loads_strict",
    "mark_message",
    "media_message",
    "new_sid",
    "parse_gateway_frame",
    "start_message",
    "stop_message",
    "violation_kind",
]

FRAME_BYTES = 160
"""Twilio sends 20 ms of μ-law 8 kHz per inbound ``media`` message."""
FRAME_S = 0.020

DTMF_DIGITS = frozenset("0123456789*#")


class Violation(StrEnum):
    """Kinds of protocol violations; the prefix of every violation string."""

    WEBHOOK_FAILED = "webhook-failed"  # no HTTP answer (11200 / 11205 timeout)
    WEBHOOK_STATUS = "webhook-status"  # not HTTP 200 (11200)
    WEBHOOK_CONTENT_TYPE = "webhook-content-type"  # not text/xml or application/xml (12300)
    TWIML_INVALID = "twiml-invalid"  # not XML, or root is not <Response> (12100)
    TWIML_NO_STREAM = "twiml-no-stream"  # no <Connect><Stream>, so no two-way stream
    TWIML_MULTIPLE_STREAMS = "twiml-multiple-streams"  # one bidirectional Stream per call
    TWIML_TRACK = "twiml-track"  # track other than inbound_track on <Connect><Stream> (31941)
    PARAMETER_INVALID = "parameter-invalid"  # <Parameter> without name or value
    PARAMETER_TOO_LONG = "parameter-too-long"  # len(name) + len(value) >= 500
    STREAM_URL_SCHEME = "stream-url-scheme"  # not wss:// (31922)
    STREAM_URL_QUERY = "stream-url-query"  # query string in <Stream url>
    STREAM_URL_MALFORMED = "stream-url-malformed"  # no host, fragment, ... (31923)
    STREAM_CONNECT_FAILED = "stream-connect-failed"  # handshake not 101, refused, timeout (31920)
    WEBSOCKET_PROTOCOL = "websocket-protocol-error"  # bad UTF-8, fragmented control frame (31924)
    BINARY_FRAME = "binary-frame"  # (31950)
    INVALID_JSON = "invalid-json"  # (31951)
    DUPLICATE_KEY = "duplicate-key"  # same key twice in one JSON object (31951)
    NOT_AN_OBJECT = "not-an-object"  # JSON that is not an object (31951)
    UNKNOWN_EVENT = "unknown-event"  # event not media/mark/clear (31951)
    MISSING_FIELD = "missing-field"  # (31951)
    EXTRA_FIELD = "extra-field"  # (31951)
    BAD_FIELD_TYPE = "bad-field-type"  # e.g. media not an object, name not a string (31951)
    WRONG_STREAM_SID = "wrong-stream-sid"  # (31951)
    BAD_PAYLOAD = "bad-payload"  # empty or not strict base64 (31951)
    PAYLOAD_FILE_HEADER = "payload-file-header"  # a WAV header inside media.payload
    BUFFER_OVERFLOW = "buffer-overflow"  # > 10 minutes of audio buffered (31931)
    API_UNAUTHORIZED = "api-unauthorized"  # REST: no or wrong Basic AccountSid:AuthToken (20003)
    API_BAD_REQUEST = "api-bad-request"  # REST: update with neither Twiml nor Status, or bad XML


def format_violation(kind: StrEnum, detail: str) -> str:
    """A violation string: ``"<kind>: <detail>"``."""
    return f"{kind.value}: {detail}"


def violation_kind(text: str) -> str:
    """The :class:`Violation` value a violation string starts with."""
    return text.partition(":")[0]


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix and 32 lowercase hex digits (34 chars)."""
    return prefix + secrets.token_hex(16)


# --- Messages Twilio sends ----------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> str:
    """Serialize a message compactly, as Twilio does."""
    return compact(message)


def connected_message() -> dict[str, Any]:
    """First message on the socket; it has no ``streamSid`` and no ``sequenceNumber``."""
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(
    *,
    seq: int = 1,
    account_sid: str,
    call_sid: str,
    stream_sid: str,
    custom_parameters: Mapping[str, str],
) -> dict[str, Any]:
    """The ``start`` message; it is always ``sequenceNumber`` "1" on a real stream."""
    return {
        "event": "start",
        "sequenceNumber": str(seq),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": dict(custom_parameters),
        },
        "streamSid": stream_sid,
    }


def media_message(
    *, seq: int, stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    """An inbound ``media`` message; numeric fields are strings, as on the wire."""
    return {
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def dtmf_message(*, seq: int, stream_sid: str, digit: str) -> dict[str, Any]:
    """A key press on the caller's phone (two-way streams only)."""
    return {
        "event": "dtmf",
        "streamSid": stream_sid,
        "sequenceNumber": str(seq),
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


def mark_message(*, seq: int, stream_sid: str, name: str) -> dict[str, Any]:
    """The echo of a gateway mark: its audio played, or a ``clear`` flushed it."""
    return {
        "event": "mark",
        "sequenceNumber": str(seq),
        "streamSid": stream_sid,
        "mark": {"name": name},
    }


def stop_message(*, seq: int, stream_sid: str, account_sid: str, call_sid: str) -> dict[str, Any]:
    """Sent when the caller hangs up, before Twilio closes the socket."""
    return {
        "event": "stop",
        "sequenceNumber": str(seq),
        "stop": {"accountSid": account_sid, "callSid": call_sid},
        "streamSid": stream_sid,
    }


# --- Messages the gateway sends -----------------------------------------------------------------

_TOP_LEVEL_FIELDS: dict[str, frozenset[str]] = {
    "media": frozenset({"event", "streamSid", "media"}),
    "mark": frozenset({"event", "streamSid", "mark"}),
    "clear": frozenset({"event", "streamSid"}),
}
_INNER_FIELDS: dict[str, frozenset[str]] = {
    "media": frozenset({"payload"}),
    "mark": frozenset({"name"}),
}


@dataclass
class GatewayFrame:
    """One frame from the gateway, parsed and checked.

    The carrier ignores a message with any violation, so ``event`` is ``None`` unless the message
    is valid and should be acted on; ``message`` is the parsed JSON object whenever there was one.
    ``reply`` is what the carrier sends back about this frame (Telnyx's ``error`` event; Twilio
    never answers).
    """

    event: Literal["media", "mark", "clear"] | None = None
    message: dict[str, Any] | None = None
    payload: bytes = b""
    mark_name: str = ""
    violations: list[str] = field(default_factory=list)
    reply: dict[str, Any] | None = None


class DuplicateKeyError(ValueError):
    """A JSON object repeats a key; ``json`` would silently keep the last value."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise DuplicateKeyError(sorted({k for k in keys if keys.count(k) > 1}))
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str) -> Any:
    """Parse JSON as a strict peer must: repeated keys raise :class:`DuplicateKeyError`, and
    ``NaN``/``Infinity`` (accepted by Python's ``json``, not JSON) raise ``ValueError``."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def parse_gateway_frame(frame: str | bytes, stream_sid: str) -> GatewayFrame:
    """Parse and validate one WebSocket frame the gateway sent on stream ``stream_sid``."""
    out = GatewayFrame()
    if isinstance(frame, bytes):
        out.violations.append(
            format_violation(
                Violation.BINARY_FRAME, f"{len(frame)}-byte binary frame; send text (31950)"
            )
        )
        return out
    try:
        message = loads_strict(frame)
    except DuplicateKeyError as exc:
        out.violations.append(
            format_violation(Violation.DUPLICATE_KEY, f"keys {exc} repeated (31951)")
        )
        return out
    except ValueError as exc:
        out.violations.append(
            format_violation(Violation.INVALID_JSON, f"{exc}: {frame[:80]!r} (31951)")
        )
        return out
    if not isinstance(message, dict):
        out.violations.append(
            format_violation(
                Violation.NOT_AN_OBJECT, f"JSON {type(message).__name__}, not an object (31951)"
            )
        )
        return out
    out.message = message
    event = message.get("event")
    if event not in _TOP_LEVEL_FIELDS:
        kind = Violation.MISSING_FIELD if "event" not in message else Violation.UNKNOWN_EVENT
        out.violations.append(
            format_violation(
                kind, f"event {event!r}; the gateway may send media, mark or clear (31951)"
            )
        )
        return out
    _check_fields(event, message, _TOP_LEVEL_FIELDS[event], "", out.violations)
    sid = message.get("streamSid")
    if "streamSid" in message and sid != stream_sid:
        out.violations.append(
            format_violation(
                Violation.WRONG_STREAM_SID, f"{event}: streamSid {sid!r}, expected {stream_sid!r}"
            )
        )
    if event in _INNER_FIELDS:
        _check_inner(event, message, out)
    if not out.violations:
        out.event = event
    return out


def _check_fields(
    event: str, obj: Mapping[str, Any], expected: frozenset[str], where: str, into: list[str]
) -> None:
    for name in sorted(expected - obj.keys()):
        into.append(format_violation(Violation.MISSING_FIELD, f"{event}: no {where}{name} (31951)"))
    for name in sorted(obj.keys() - expected):
        into.append(
            format_violation(Violation.EXTRA_FIELD, f"{event}: unexpected {where}{name} (31951)")
        )


def _check_inner(event: str, message: dict[str, Any], out: GatewayFrame) -> None:
    inner = message.get(event)
    if inner is None:
        return  # already reported as a missing field
    if not isinstance(inner, dict):
        out.violations.append(
            format_violation(
                Violation.BAD_FIELD_TYPE, f"{event}.{event} is {type(inner).__name__}, not object"
            )
        )
        return
    _check_fields(event, inner, _INNER_FIELDS[event], f"{event}.", out.violations)
    if event == "mark":
        name = inner.get("name")
        if "name" in inner and not isinstance(name, str):
            out.violations.append(
                format_violation(
                    Violation.BAD_FIELD_TYPE, f"mark.name is {type(name).__name__}, not string"
                )
            )
        elif isinstance(name, str):
            out.mark_name = name
        return
    if "payload" in inner:
        _check_payload(inner["payload"], out)


def _check_payload(payload: object, out: GatewayFrame) -> None:
    if not isinstance(payload, str):
        out.violations.append(
            format_violation(
                Violation.BAD_FIELD_TYPE, f"media.payload is {type(payload).__name__}, not string"
            )
        )
        return
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        out.violations.append(
            format_violation(
                Violation.BAD_PAYLOAD, f"media.payload is not base64 ({exc}): {payload[:40]!r}"
            )
        )
        return
    if not audio:
        out.violations.append(format_violation(Violation.BAD_PAYLOAD, "media.payload is empty"))
        return
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        out.violations.append(
            format_violation(
                Violation.PAYLOAD_FILE_HEADER,
                "media.payload starts with a WAV header; send raw μ-law (it plays as noise)",
            )
        )
        return
    out.payload = audio
