"""Twilio Media Streams, as pure message ↔ event translation, plus the TwiML that starts one.

Inbound: ``connected``, ``start``, ``media``, ``mark``, ``dtmf``, ``stop``. Outbound: ``media``,
``mark``, ``clear``, carrying exactly the fields Twilio accepts — an extra field (``track``,
``sequenceNumber``) or a wrong ``streamSid`` makes Twilio discard the message (error 31951).

Outbound text is assembled from a prefix prepared once at ``start``: it runs ~50 times a second
per call, and ``json.dumps`` of a dict would cost more than the base64 of the payload.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from gateway.audio.transcode import PCMU_8K
from gateway.carriers.base import (
    AudioReceived,
    CarrierEvent,
    DtmfReceived,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
    carrier_id,
    custom_parameters,
    is_carrier_id,
    load_object,
    media_object,
)

_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
#: Twilio: "the combined length of each <Parameter> name and value must be under 500 characters".
MAX_PARAMETER_CHARS = 499


class TwilioCodec:
    """One Twilio stream's codec: remembers the ``streamSid`` it must echo on every message."""

    carrier = "twilio"

    def __init__(self) -> None:
        self.stream_sid: str | None = None
        self._media_prefix = ""
        self._mark_prefix = ""
        self._clear = ""

    def parse(self, text: str) -> CarrierEvent | None:
        msg = load_object(text)
        event = msg.get("event")
        if event == "media":  # the hot path: ~50 per second per call
            return self._media(msg)
        if event == "start":
            return self._start(msg)
        if event == "connected":
            return None
        if event not in ("mark", "dtmf", "stop"):
            raise ProtocolError(f"unknown event {str(event)[:40]!r}")
        if self.stream_sid is None:
            raise ProtocolError(f"{event!r} before 'start'")
        self._check_sid(msg)
        if event == "stop":
            return StreamStopped()
        if event == "mark":
            name = _field(msg, "mark", "name")
            if not isinstance(name, str):
                raise ProtocolError("mark without a name")
            return MarkPlayed(name)
        digit = _field(msg, "dtmf", "digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in _DTMF_DIGITS:
            raise ProtocolError("dtmf without a valid digit")
        return DtmfReceived(digit.upper())

    def media(self, payload: bytes) -> str:
        return self._media_prefix + base64.b64encode(payload).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        return self._clear

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        if self.stream_sid is not None:
            raise ProtocolError("second 'start' on one stream")
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError("'start' without a start object", fatal=True)
        sid = carrier_id(start.get("streamSid", msg.get("streamSid")), "streamSid")
        call_sid = carrier_id(start.get("callSid"), "callSid")
        account = start.get("accountSid")  # only used in a REST URL, which checks its shape
        account_sid = account if is_carrier_id(account) else ""
        fmt = start.get("mediaFormat")
        if isinstance(fmt, dict) and (
            fmt.get("encoding") != "audio/x-mulaw"
            or fmt.get("sampleRate") != 8000
            or fmt.get("channels", 1) != 1
        ):
            raise ProtocolError(f"unsupported media format {fmt!r}", fatal=True)
        params = custom_parameters(start.get("customParameters"))
        self.stream_sid = sid
        quoted = json.dumps(sid)
        self._media_prefix = '{"event":"media","streamSid":' + quoted + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + quoted + ',"mark":{"name":'
        self._clear = '{"event":"clear","streamSid":' + quoted + "}"
        return StreamStarted(
            stream_id=sid,
            call_id=call_sid,
            audio_format=PCMU_8K,
            parameters=params,
            account_id=account_sid,
        )

    def _media(self, msg: dict[str, Any]) -> AudioReceived:
        if self.stream_sid is None:
            raise ProtocolError("'media' before 'start'")
        self._check_sid(msg)
        _, audio = media_object(msg)
        return AudioReceived(audio)

    def _check_sid(self, msg: dict[str, Any]) -> None:
        sid = msg.get("streamSid")
        if sid is not None and sid != self.stream_sid:
            raise ProtocolError("message for another streamSid")


def _field(msg: Mapping[str, Any], obj: str, key: str) -> Any:
    inner = msg.get(obj)
    return inner.get(key) if isinstance(inner, dict) else None


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str], after: str = "") -> str:
    """TwiML that hands the call's audio to ``stream_url`` both ways.

    ``<Connect>`` (not ``<Start>``) makes the stream bidirectional and holds the call for as long
    as the websocket is open. The verbs in ``after`` run only when the *gateway* closes the
    socket (a caller who hangs up has ended the call already): that is where the fallback goes,
    so a gateway that has to give up on a call still says something instead of dead air. The URL
    must not carry a query string (Twilio rejects it), so per-call data travels as
    ``<Parameter>``s and arrives in ``start.customParameters``.
    """
    if "?" in stream_url:
        raise ValueError("Twilio stream URLs must not contain a query string")
    params = []
    for name, value in parameters.items():
        if len(name) + len(value) > MAX_PARAMETER_CHARS:
            raise ValueError(f"<Parameter> {name!r} is too long for Twilio")
        params.append(f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(stream_url)}>"
        + "".join(params)
        + "</Stream></Connect>"
        + after
        + "</Response>"
    )


def fallback_verbs(say: str, transfer_to: str = "") -> str:
    """TwiML (and TeXML) verbs for a call the gateway cannot continue: dial, or apologise."""
    if transfer_to.startswith("sip"):
        return f"<Dial><Sip>{escape(transfer_to)}</Sip></Dial>"
    if transfer_to:
        return f"<Dial>{escape(transfer_to)}</Dial>"
    return f"<Say>{escape(say)}</Say><Hangup/>" if say else "<Hangup/>"


def say_twiml(message: str) -> str:
    """A polite spoken message and hang-up, for calls the gateway cannot take."""
    return twiml_document(fallback_verbs(message))


def twiml_document(verbs: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response>' + verbs + "</Response>"
