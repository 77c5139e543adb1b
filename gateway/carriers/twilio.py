"""Twilio Media Streams, as pure message ↔ event translation, plus the TwiML that starts one.

Inbound: ``connected``, ``start``, ``media``, ``mark``, ``dtmf``, ``stop``. Outbound: ``media``,
``mark``, ``clear``, carrying exactly the fields Twilio accepts — an extra field (``track``,
``sequenceNumber``) or a wrong ``streamSid`` makes Twilio discard the message (error 31951).

Outbound text is assembled from a prefix prepared once at ``start``: it runs ~50 times a second
per call, and ``json.dumps`` of a dict would cost more than the base64 of the payload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway import wire
from gateway.audio.transcode import PCMU_8K
from gateway.carriers.base import (
    ProtocolError,
    StreamStarted,
    carrier_id,
    custom_parameters,
    is_carrier_id,
)
from gateway.carriers.markup import connect_stream
from gateway.carriers.stream import StreamCodec

#: Twilio: "the combined length of each <Parameter> name and value must be under 500 characters".
MAX_PARAMETER_CHARS = 499


class TwilioCodec(StreamCodec):
    """One Twilio stream's codec: remembers the ``streamSid`` it must echo on every message.

    The order of events is :class:`~gateway.carriers.stream.StreamCodec`'s; this class reads
    Twilio's ``start`` and writes its outbound messages.
    """

    carrier = "twilio"
    stream_key = "streamSid"

    def __init__(self) -> None:
        super().__init__()
        self._media_prefix = ""
        self._mark_prefix = ""
        self._clear = ""

    def media(self, payload: bytes) -> str:
        return self._media_prefix + wire.b64encode(payload) + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        return self._clear

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        start = self._start_object(msg)
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


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str], after: str = "") -> str:
    """TwiML that hands the call's audio to ``stream_url`` both ways, then runs ``after``
    (see :func:`~gateway.carriers.markup.connect_stream`).

    The URL must not carry a query string (Twilio rejects it), so per-call data travels as
    ``<Parameter>``s and arrives in ``start.customParameters``, each under Twilio's size limit.
    """
    if "?" in stream_url:
        raise ValueError("Twilio stream URLs must not contain a query string")
    for name, value in parameters.items():
        if len(name) + len(value) > MAX_PARAMETER_CHARS:
            raise ValueError(f"<Parameter> {name!r} is too long for Twilio")
    return connect_stream(stream_url, parameters, after)
