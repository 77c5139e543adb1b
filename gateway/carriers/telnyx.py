"""Telnyx media streaming, as pure message ↔ event translation, plus the TeXML that starts it.

The protocol mirrors Twilio's with different names (``stream_id`` at the top level,
``start.call_control_id``, ``start.media_format.sample_rate``, ``sequence_number``), and three
differences that matter:

- outbound ``media``/``mark``/``clear`` carry **no** stream id;
- media order is not guaranteed, so frames are put back in order by ``media.chunk``
  (:class:`~gateway.carriers.reorder.Reorderer`) and duplicates dropped;
- the codec is negotiated per direction: ``start`` announces the one Telnyx streams the caller
  in, which need not be the one it expects the gateway's audio in (see :func:`downlink_format`).

Bidirectional audio needs ``bidirectionalMode="rtp"``: the default mode, ``mp3``, takes one MP3
file per second and cannot carry a conversation.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from gateway.audio.transcode import (
    G722_16K,
    L16_16K,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
    UnsupportedAudioFormat,
)
from gateway.carriers.base import (
    AudioReceived,
    CarrierEvent,
    CarrierReportedError,
    ProtocolError,
    StreamStarted,
    bounded_int,
    carrier_id,
    custom_parameters,
    is_carrier_id,
    media_object,
)
from gateway.carriers.markup import connect_stream
from gateway.carriers.reorder import Reorderer
from gateway.carriers.stream import StreamCodec, UnnamedOutbound

#: client_state prefix on streams the gateway started through Call Control. It comes back in
#: the stream's ``start`` (with the stream token after it): that is how the token reaches a
#: stream that has no <Parameter>s, and how the stream knows to hang up through the API.
CALL_CONTROL_PREFIX = "callbridge-cc:"

#: The stream <Parameter> carrying a TeXML call's ``AccountSid`` (the webhook form's field):
#: the TeXML REST API names the account in its path, and the stream itself does not say it.
ACCOUNT_PARAMETER = "account_sid"

#: Where Telnyx sends a Call Control stream's ``stream_auth_token``: this upgrade header, and
#: the same key in the ``connected`` frame (Telnyx AsyncAPI spec, "Stream call media over
#: WebSocket").
STREAM_AUTH_HEADER = "x-telnyx-streaming-auth-token"

#: Codecs the gateway can ask Telnyx for, and the sampling rate to ask with.
TELNYX_CODECS: dict[str, int] = {"PCMU": 8000, "PCMA": 8000, "G722": 16000, "L16": 16000}
#: The codecs TeXML's ``<Stream bidirectionalCodec>`` documents (of those above): not L16,
#: which only Call Control's ``stream_bidirectional_codec`` lists.
TEXML_CODECS: tuple[str, ...] = ("PCMU", "PCMA", "G722")

#: ``start.media_format`` (encoding, sample_rate) → the format of the frames that follow.
_FORMATS: dict[tuple[str, int], AudioFormat] = {
    ("PCMU", 8000): PCMU_8K,
    ("PCMA", 8000): PCMA_8K,
    ("L16", 16000): L16_16K,
    ("G722", 16000): G722_16K,
    ("G722", 8000): G722_16K,  # the RTP clock rate, not the audio rate
}


def telnyx_format(encoding: str, sample_rate: int) -> AudioFormat:
    """The format of a Telnyx media stream from its ``start.media_format`` fields.

    Telnyx reports G.722 at either 8000 (the RTP clock rate, set by mistake in RFC 1890 and kept by
    RFC 3551) or 16000 (the audio rate); both mean 16 kHz audio. L16 is network (big-endian) order.
    """
    name = encoding.strip().upper()
    fmt = _FORMATS.get((name, sample_rate))
    if fmt is not None:
        return fmt
    rates = sorted({rate for known, rate in _FORMATS if known == name})
    if not rates:
        raise UnsupportedAudioFormat(
            f"{encoding} at {sample_rate} Hz is not supported; use PCMU, PCMA, G722 or L16"
        )
    raise UnsupportedAudioFormat(
        f"{name} at {sample_rate} Hz is not supported; "
        f"Telnyx {name} must be at {' or '.join(map(str, rates))} Hz"
    )


# Which codec carries which direction. The gateway asks for one codec both ways (TELNYX_CODEC:
# TeXML <Stream codec=… bidirectionalCodec=…>, Call Control stream_codec and
# stream_bidirectional_codec), and Telnyx documents the two directions differently.
#
# Telnyx -> gateway, the streamed audio: `codec`/`stream_codec` "Specifies the codec to be used
# for the streamed audio. When set to 'default' or when transcoding is not possible, the codec
# from the call will be used. Currently, transcoding is only supported between PCMU and PCMA
# codecs." [1][2] So PCMU asked of a PCMA call streams PCMU, and G722 asked of a PCMU call
# streams PCMU. `start` "identifies the stream, call metadata, custom parameters, and media
# format" [3]; no page says whether media_format names the streamed codec or the call's. It is
# read as the encoding of the media frames that follow (the only reading under which they can
# be decoded), and the uplink decodes them with it.
#
# gateway -> Telnyx, the bidirectional RTP: the codec asked for, always. The guide's "RTP stream
# codec" section: "When the audio is sent using a different encoding than on the call, it will
# be transcoded, which may cause a degradation in quality" [4]; the client media frame:
# "Supported RTP codecs are PCMU, PCMA, G722, OPUS, AMR-WB, and L16" [3]. The PCMU/PCMA-only
# limit and the fall-back to the call's codec are documented for the streamed audio only, never
# for bidirectionalCodec; and L16, offered to AI agents for "eliminating transcoding overhead"
# [4], could not work on a G.711 phone call unless Telnyx transcoded it. So media_format does
# not say what to send: G722 asked of a PCMU call arrives as PCMU and is answered in G722.
#
# Where the docs are silent: the TeXML <Stream> page [1] says nothing about transcoding what the
# gateway sends (only Call Control's guide [4] does). TeXML starts the same media stream (the
# same frames, one AsyncAPI page [3]), so the same rule is applied to it. Under any reading,
# PCMU and PCMA are safe on the phone network (both directions are then the codec asked for);
# G722 on a narrowband TeXML call is the one case resting on this inference, and the gateway
# logs `telnyx.formats_differ` whenever the directions differ, so such a call shows why.
#
# [1] https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/stream
# [2] https://developers.telnyx.com/api-reference/call-commands/streaming-start
# [3] https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket
# [4] https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming


def downlink_format(requested: str | None, streamed: AudioFormat) -> AudioFormat | None:
    """The format Telnyx expects the gateway's audio in, when it is not ``streamed``.

    ``requested`` is the bidirectional codec asked for (None: unknown, so the streamed format
    is assumed both ways); ``streamed`` is what ``start.media_format`` announced. See the note
    above: Telnyx transcodes the bidirectional codec into the call, so it is the answer.
    """
    if requested is None:
        return None
    fmt = telnyx_format(requested, TELNYX_CODECS[requested])
    return None if fmt == streamed else fmt


class TelnyxCodec(UnnamedOutbound, StreamCodec):
    """One Telnyx stream's codec: ids from ``start``, reordering of inbound media.

    The order of events is :class:`~gateway.carriers.stream.StreamCodec`'s; this class reads
    Telnyx's ``start``, puts media back in order, reports Telnyx's ``error`` event and writes
    its outbound messages. ``requested`` is the codec the gateway asked Telnyx for
    (``TELNYX_CODEC``, both ways): the one the gateway's audio must be in, whatever ``start``
    says the caller's is.
    """

    carrier = "telnyx"
    stream_key = "stream_id"

    def __init__(self, *, requested: str | None = None, reorder_window: int = 3) -> None:
        if requested is not None and requested not in TELNYX_CODECS:
            raise ValueError(f"requested codec must be one of {', '.join(TELNYX_CODECS)}")
        super().__init__()
        self.requested = requested
        #: True for streams started by a Call Control ``streaming_start`` (not TeXML).
        self.call_control = False
        self.reorder = Reorderer(reorder_window, first=1)  # media.chunk counts from 1

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        start = self._start_object(msg)
        stream_id = carrier_id(msg.get("stream_id"), "stream_id")
        call_id = carrier_id(start.get("call_control_id"), "call_control_id")
        fmt = start.get("media_format")
        if not isinstance(fmt, dict):
            raise ProtocolError("'start' without media_format", fatal=True)
        rate = bounded_int(fmt.get("sample_rate"), high=192_000)
        encoding = str(fmt.get("encoding"))[:20]
        try:
            audio_format = telnyx_format(encoding, -1 if rate is None else rate)
        except UnsupportedAudioFormat as exc:
            raise ProtocolError(str(exc), fatal=True) from None
        if fmt.get("channels", 1) not in (1, "1"):
            raise ProtocolError(
                f"unsupported channel count {str(fmt.get('channels'))[:20]!r}", fatal=True
            )
        # <Parameter>s arrive as start.custom_parameters, an object (Telnyx's AsyncAPI spec,
        # "Stream call media over WebSocket"); the Twilio spelling and Call Control's request
        # shape, a list of {name, value}, are accepted too, as nothing has shown them unused.
        raw = start.get("custom_parameters", start.get("customParameters"))
        parameters = custom_parameters(raw)
        token = token_from_state(start.get("client_state"))
        if token is not None:
            self.call_control = True
            parameters.setdefault("token", token)
        # start.from/start.to are the call's numbers (AsyncAPI "Stream call media over
        # WebSocket"): the caller ids of a Call Control stream, which has no <Parameter>s from a
        # webhook form; a TeXML stream's own from/to parameters come first.
        for name in ("from", "to"):
            number = start.get(name)
            if isinstance(number, str) and number:
                parameters.setdefault(name, number[:200])
        # TeXML's AccountSid, for the TeXML REST API, arrives as a <Parameter> the gateway set.
        account = parameters.get(ACCOUNT_PARAMETER)
        return StreamStarted(
            stream_id=stream_id,
            call_id=call_id,
            audio_format=audio_format,
            parameters=parameters,
            account_id=account if is_carrier_id(account) else "",
            downlink_format=downlink_format(self.requested, audio_format),
        )

    def _audio(self, msg: dict[str, Any]) -> AudioReceived | None:
        media, audio = media_object(msg)
        number = bounded_int(media.get("chunk", msg.get("sequence_number")))
        if number is None:  # unnumbered (or numbered nonsensically): nothing to reorder by
            return AudioReceived(audio)
        frames = self.reorder.push(number, audio)
        if not frames:
            return None
        return AudioReceived(frames[0] if len(frames) == 1 else b"".join(frames))

    def _carrier_event(self, event: object, msg: dict[str, Any]) -> CarrierEvent | None:
        """Telnyx's ``error``: it rejected something the gateway sent (in any state)."""
        if event != "error":
            return super()._carrier_event(event, msg)
        payload = msg.get("payload")
        if not isinstance(payload, dict):
            payload = {}
        return CarrierReportedError(
            code=str(payload.get("code", "")),
            title=str(payload.get("title", ""))[:100],
            detail=str(payload.get("detail", ""))[:300],
        )


def call_control_state(token: str) -> str:
    """The client_state that carries a stream token through Call Control."""
    return base64.b64encode((CALL_CONTROL_PREFIX + token).encode()).decode()


def token_from_state(client_state: object) -> str | None:
    """The stream token inside a Call Control client_state, or None if it is not ours."""
    if not isinstance(client_state, str) or not client_state or len(client_state) > 4096:
        return None
    try:
        decoded = base64.b64decode(client_state, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded[len(CALL_CONTROL_PREFIX) :] if decoded.startswith(CALL_CONTROL_PREFIX) else None


def connect_stream_texml(
    stream_url: str, codec: str, parameters: Mapping[str, str], after: str = ""
) -> str:
    """TeXML that streams the call both ways in ``codec`` (RTP mode), one of TEXML_CODECS.

    As with Twilio, the verbs in ``after`` run when the gateway closes the stream (see
    :func:`~gateway.carriers.markup.connect_stream`).
    """
    if codec not in TEXML_CODECS:
        raise ValueError(f"TeXML streams take {', '.join(TEXML_CODECS)}, not {codec!r}")
    attributes = {
        "track": "inbound_track",
        "codec": codec,
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": codec,
        "bidirectionalSamplingRate": str(TELNYX_CODECS[codec]),
    }
    return connect_stream(stream_url, parameters, after, attributes)
