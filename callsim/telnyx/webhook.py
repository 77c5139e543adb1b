"""Telnyx's webhooks and the stream setup they lead to, as pure functions (no I/O).

Telnyx drives a call through webhooks to the gateway: a form-encoded TeXML fetch (answered with
TeXML) or JSON Call Control events (answered by REST commands, see
:mod:`callsim.telnyx.api`). Both are signed with Ed25519 over
``"{telnyx-timestamp}|{raw body}"``. This module builds those bodies and signatures, checks a
TeXML answer as Telnyx would, and negotiates the stream's codecs from either the TeXML
``<Stream>`` attributes or the Call Control ``stream_*`` fields, so both paths apply one rule set.

The rule that matters most: ``bidirectionalMode``/``stream_bidirectional_mode`` defaults to
``mp3``, in which Telnyx plays one MP3 file per second and cannot carry a conversation, so a
missing or ``mp3`` mode is a violation. Problems are violation strings
(:class:`~callsim.telnyx.peer.Violation`); legitimate things worth knowing are warnings.

Codecs, per direction, as Telnyx documents them (quotes and URLs in
:mod:`gateway.carriers.telnyx`): the caller is streamed in ``codec``/``stream_codec`` where the
call's codec is that codec or transcodes to it (only PCMU <-> PCMA), and in the call's own codec
otherwise; ``start.media_format`` names what is streamed. The gateway's audio is read as the
bidirectional codec, always, and transcoded into the call. TeXML documents neither ``codec`` nor
``bidirectionalCodec`` as L16 (Call Control does), so L16 in TeXML is a violation.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callsim.telnyx.peer import FORMATS, Violation
from callsim.twilio.peer import format_violation
from gateway.audio.transcode import AudioFormat

__all__ = [
    "CC_FIELDS",
    "SIGNATURE_HEADER",
    "TEXML_FIELDS",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "CallIds",
    "SignatureMode",
    "StreamSetup",
    "call_event",
    "check_stream_url",
    "check_texml",
    "encode_json",
    "negotiate",
    "signature_headers",
    "texml_form",
]

SignatureMode = Literal["valid", "tampered", "stale", "missing"]
"""How a webhook is signed: correctly, over other bytes than sent, 301 s old, or not at all."""

SIGNATURE_HEADER: Final = "telnyx-signature-ed25519"
TIMESTAMP_HEADER: Final = "telnyx-timestamp"
TOLERANCE_S: Final = 300
"""Telnyx's SDK rejects ``abs(now - telnyx-timestamp) > 300``."""

_UNSIMULATED_CODECS: Final = frozenset({"OPUS", "AMR-WB"})
_CODEC_RATES: Final[dict[str, frozenset[int]]] = {
    "PCMU": frozenset({8000}),
    "PCMA": frozenset({8000}),
    "G722": frozenset({8000, 16000}),  # listed at 8000 (its RTP clock); 16 kHz audio either way
    "L16": frozenset({16000}),
}
_TRANSCODABLE: Final = frozenset({"PCMU", "PCMA"})
_CALL_CONTROL_ONLY: Final = frozenset({"L16"})  # not among TeXML's codec/bidirectionalCodec


def signature_headers(
    key: Ed25519PrivateKey, body: bytes, *, mode: SignatureMode, now: float
) -> dict[str, str]:
    """The headers Telnyx signs a webhook with, or a deliberately wrong version of them."""
    if mode == "missing":
        return {}
    timestamp = int(now) - (TOLERANCE_S + 1 if mode == "stale" else 0)
    signed = body + b" " if mode == "tampered" else body
    signature = key.sign(f"{timestamp}|".encode() + signed)
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: str(timestamp),
    }


def texml_form(
    *,
    call_sid: str,
    account_sid: str,
    call_session_id: str,
    connection_id: str,
    from_number: str,
    to_number: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The form TeXML POSTs for a new inbound call (Twilio-style names; ``extra`` may override).

    ``CallSid`` is the call_control_id, so the gateway can use Call Control commands on it.
    """
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallSidLegacy": call_sid,
        "CallSessionId": call_session_id,
        "CallStatus": "ringing",
        "CallerId": from_number,
        "ConnectionId": connection_id,
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
    }
    form.update(extra or {})
    return form


@dataclass(frozen=True)
class CallIds:
    """The ids every Call Control event payload repeats."""

    call_control_id: str
    call_leg_id: str
    call_session_id: str
    connection_id: str
    from_number: str
    to_number: str


def call_event(
    event_type: str,
    ids: CallIds,
    *,
    event_id: str,
    occurred: str,
    delivered_to: str,
    payload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Call Control webhook body: ``{"data": {...event...}, "meta": {...}}``."""
    body: dict[str, Any] = {
        "call_control_id": ids.call_control_id,
        "call_leg_id": ids.call_leg_id,
        "call_session_id": ids.call_session_id,
        "connection_id": ids.connection_id,
        "from": ids.from_number,
        "to": ids.to_number,
    }
    body.update(payload or {})
    return {
        "data": {
            "event_type": event_type,
            "id": event_id,
            "occurred_at": occurred,
            "record_type": "event",
            "payload": body,
        },
        "meta": {"attempt": 1, "delivered_to": delivered_to},
    }


def encode_json(body: Mapping[str, Any]) -> bytes:
    """Serialize a webhook body compactly (the signature covers these exact bytes)."""
    return json.dumps(body, separators=(",", ":")).encode()


# --- stream setup -------------------------------------------------------------------------------


@dataclass
class StreamSetup:
    """A requested stream, negotiated: where to connect, codecs both ways, what is wrong.

    ``inbound`` is what the caller is streamed in (``start.media_format``: the codec asked for,
    or the call's where Telnyx cannot transcode), ``outbound`` what the gateway must send back
    (the bidirectional codec asked for, which Telnyx transcodes into the call). They are always
    set (falling back to the call's codec or PCMU after a violation), so the rest of the call is
    still exercised; ``url`` is None when unusable.
    """

    url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    #: Call Control's ``stream_auth_token``: sent as the ``x-telnyx-streaming-auth-token``
    #: upgrade header and in the ``connected`` frame (Telnyx AsyncAPI spec).
    auth_token: str | None = None
    inbound: AudioFormat = FORMATS["PCMU"]
    outbound: AudioFormat = FORMATS["PCMU"]
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


TEXML_FIELDS: Final = {
    "url": "url",
    "track": "track",
    "codec": "codec",
    "mode": "bidirectionalMode",
    "bidirectional_codec": "bidirectionalCodec",
    "rate": "bidirectionalSamplingRate",
}
CC_FIELDS: Final = {
    "url": "stream_url",
    "track": "stream_track",
    "codec": "stream_codec",
    "mode": "stream_bidirectional_mode",
    "bidirectional_codec": "stream_bidirectional_codec",
    "rate": "stream_bidirectional_sampling_rate",
}


def negotiate(
    fields: Mapping[str, object],
    names: Mapping[str, str],
    *,
    call_codec: str,
    out: StreamSetup,
    texml: bool = False,
) -> None:
    """Check the stream fields (TeXML attributes or Call Control body, named by ``names``) and
    set ``out.inbound``/``out.outbound``: the codec the caller is streamed in, and the one the
    gateway must answer in."""
    bad = out.violations.append
    track = fields.get(names["track"])
    if track == "both_tracks":
        out.warnings.append(
            f"{names['track']}=both_tracks streams the gateway's own audio back to it, "
            "which can trip the model's barge-in"
        )
    elif track not in (None, "inbound_track"):
        text = (
            f"{names['track']}={track!r}: the gateway would not hear the caller; use inbound_track"
        )
        bad(format_violation(Violation.STREAM_TRACK, text))
    mode = fields.get(names["mode"])
    if mode != "rtp":
        what = "missing (default mp3)" if mode is None else f"{mode!r}"
        text = (
            f"{names['mode']} is {what}: mp3 mode plays one MP3 file per second and refuses raw "
            'audio, so the gateway could not speak; set "rtp"'
        )
        bad(format_violation(Violation.BIDIRECTIONAL_MODE, text))
    known = len(out.violations)
    out.outbound = _codec(fields.get(names["bidirectional_codec"]), "PCMU", names, out, texml=texml)
    rate_field = names["rate"]
    raw_rate = fields.get(rate_field)
    try:
        rate = 8000 if raw_rate is None else int(str(raw_rate))
    except ValueError:
        rate = -1
    allowed = _CODEC_RATES[out.outbound.encoding]
    if rate not in allowed and len(out.violations) == known:  # judge the rate of a known codec
        text = (
            f"{rate_field}={raw_rate!r} (default 8000) with {out.outbound.encoding}: "
            f"Telnyx offers it at {' or '.join(map(str, sorted(allowed)))} Hz"
        )
        bad(format_violation(Violation.SAMPLING_RATE, text))
    requested = fields.get(names["codec"])
    inbound = call_codec if requested in (None, "default") else requested
    field_name = names["codec"]
    asked = _codec(inbound, call_codec, names, out, field_name=field_name, texml=texml).encoding
    if asked == call_codec or {asked, call_codec} <= _TRANSCODABLE:
        out.inbound = FORMATS[asked]
    else:  # "when transcoding is not possible, the codec from the call will be used"
        out.inbound = FORMATS[call_codec]
        out.warnings.append(
            f"{field_name}={asked} on a {call_codec} call: Telnyx transcodes only between PCMU "
            f"and PCMA, so it streams the call's {call_codec} (the gateway must still answer "
            f"in {out.outbound.encoding})"
        )


def _codec(
    value: object,
    fallback: str,
    names: Mapping[str, str],
    out: StreamSetup,
    *,
    field_name: str | None = None,
    texml: bool = False,
) -> AudioFormat:
    name = field_name or names["bidirectional_codec"]
    if value is None:
        return FORMATS[fallback]
    if texml and value in _CALL_CONTROL_ONLY:
        text = (
            f"{name}={value!r}: TeXML's <Stream> documents PCMU, PCMA, G722, OPUS and AMR-WB; "
            f"{value} is Call Control's (stream_bidirectional_codec) only"
        )
        out.violations.append(format_violation(Violation.CODEC, text))
        return FORMATS[fallback]
    if isinstance(value, str) and value in FORMATS:
        return FORMATS[value]
    if value in _UNSIMULATED_CODECS:
        hint = "valid on Telnyx, but the simulator (and the gateway) speak PCMU, PCMA, G722, L16"
    elif isinstance(value, str) and value.upper() in FORMATS:
        hint = f"codec names are case-sensitive: {value.upper()}"
    else:
        hint = "use PCMU, PCMA, G722 or L16"
    out.violations.append(format_violation(Violation.CODEC, f"{name}={value!r}: {hint}"))
    return FORMATS[fallback]


def check_stream_url(
    raw: object, *, require_wss: bool, field_name: str
) -> tuple[str | None, list[str], list[str]]:
    """Check a stream URL; return ``(url to connect to or None, violations, warnings)``.

    Telnyx keeps query strings (a per-call token there is fine); it needs an absolute URL.
    """
    violations: list[str] = []
    warnings: list[str] = []
    if not isinstance(raw, str) or not raw.strip():
        text = f"{field_name} is missing or empty"
        return None, [format_violation(Violation.STREAM_URL_MALFORMED, text)], warnings
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        text = f"{field_name}={raw!r}: must be an absolute wss:// URL"
        return None, [format_violation(Violation.STREAM_URL_SCHEME, text)], warnings
    if not parts.hostname:
        text = f"{field_name}={raw!r}: no host"
        return None, [format_violation(Violation.STREAM_URL_MALFORMED, text)], warnings
    if parts.scheme == "ws":
        text = f"{field_name}={raw!r}: scheme is ws://; Telnyx streams to wss:// URLs"
        if require_wss:
            violations.append(format_violation(Violation.STREAM_URL_SCHEME, text))
        else:
            warnings.append(text)
    if parts.fragment:
        text = f"{field_name}={raw!r}: URL has a fragment"
        violations.append(format_violation(Violation.STREAM_URL_MALFORMED, text))
    return url, violations, warnings


_STREAM_ATTRIBUTES: Final = frozenset(
    {*TEXML_FIELDS.values(), "name", "statusCallback", "statusCallbackMethod"}
)


def check_texml(
    *, status: int, content_type: str | None, body: bytes, require_wss: bool, call_codec: str
) -> StreamSetup:
    """Validate a TeXML answer as Telnyx would and negotiate its ``<Connect><Stream>``."""
    out = StreamSetup(inbound=FORMATS[call_codec])
    bad = out.violations.append
    if status != 200:
        bad(format_violation(Violation.WEBHOOK_STATUS, f"HTTP {status}, expected 200"))
        return out
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in ("text/xml", "application/xml"):
        text = f"Content-Type {content_type!r}, expected text/xml or application/xml"
        bad(format_violation(Violation.WEBHOOK_CONTENT_TYPE, text))
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        bad(format_violation(Violation.TEXML_INVALID, f"not well-formed XML: {exc}"))
        return out
    if root.tag != "Response":
        bad(format_violation(Violation.TEXML_INVALID, f"root is <{root.tag}>, not <Response>"))
        return out
    stream = _find_stream(root, out)
    if stream is None:
        return out
    unknown = sorted(set(stream.attrib) - _STREAM_ATTRIBUTES)
    if unknown:
        out.warnings.append(f"unknown <Stream> attributes ignored by Telnyx: {unknown}")
    for child in stream:
        if child.tag != "Parameter":
            out.warnings.append(f"unexpected <{child.tag}> inside <Stream>")
            continue
        name, value = child.get("name"), child.get("value")
        if name is None or value is None:
            text = f"<Parameter> needs name and value: {child.attrib}"
            bad(format_violation(Violation.PARAMETER_INVALID, text))
            continue
        if name in out.parameters:
            out.warnings.append(f"<Parameter name={name!r}> given twice; the last one wins")
        out.parameters[name] = value
    out.url, violations, warnings = check_stream_url(
        stream.get("url"), require_wss=require_wss, field_name="<Stream url>"
    )
    out.violations += violations
    out.warnings += warnings
    negotiate(dict(stream.attrib), TEXML_FIELDS, call_codec=call_codec, out=out, texml=True)
    return out


def _find_stream(root: ET.Element, out: StreamSetup) -> ET.Element | None:
    verbs = [child.tag for child in root]
    if "Connect" not in verbs:
        hint = " (<Start><Stream> forks one way: the gateway could not speak)" * ("Start" in verbs)
        text = f"no <Connect> in <Response>: {verbs}{hint}"
        out.violations.append(format_violation(Violation.TEXML_NO_STREAM, text))
        return None
    at = verbs.index("Connect")
    if verbs[:at]:
        out.warnings.append(f"verbs before <Connect> are not simulated: {verbs[:at]}")
    if verbs[at + 1 :]:
        out.warnings.append(
            f"verbs after <Connect> run when the stream ends (not simulated): {verbs[at + 1 :]}"
        )
    connect = root[at]
    streams = connect.findall("Stream")
    if not streams:
        nouns = [child.tag for child in connect]
        text = f"<Connect> holds {nouns}, no <Stream>"
        out.violations.append(format_violation(Violation.TEXML_NO_STREAM, text))
        return None
    if len(streams) > 1:
        text = f"{len(streams)} <Stream> in <Connect>; a call has one bidirectional RTP stream"
        out.violations.append(format_violation(Violation.TEXML_MULTIPLE_STREAMS, text))
    return streams[0]
