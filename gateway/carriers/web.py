"""The browser as a third carrier (``/web/stream``): the console's "Talk" button, as pure
message ↔ event translation.

The protocol is Twilio's Media Streams shape (``start``, ``media``, ``mark``, ``dtmf``,
``stop`` in; ``media``, ``mark``, ``clear`` out), so the bridge, the playout's marks and
barge-in work for a browser exactly as for a phone, but the audio is what a browser has
rather than what a phone network has:

- **Up**: PCM16 little-endian, mono, 16 kHz: the model's input rate, so the caller's wideband
  audio reaches the model untouched (no μ-law, no resampling, no byte swap).
- **Down**: PCM16 little-endian, mono, 24 kHz: the model's output as it is, cut into 20 ms
  frames (960 bytes), played by the page's AudioWorklet with a small jitter buffer.

``start`` must name the call and stream the gateway issued (``POST /web/calls``) and may
declare ``mediaFormat``; a declared format other than the one above is refused, rather than
played at the wrong speed. The stream token travels in the URL's path like the carriers'
(``/web/stream/<token>``), or as ``customParameters.token`` on the bare path.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.audio.transcode import PCM16_16K, PCM16_24K
from gateway.carriers.base import ProtocolError, StreamStarted, carrier_id, custom_parameters
from gateway.carriers.stream import StreamCodec, UnnamedOutbound

CARRIER: Final = "web"
#: The ``mediaFormat.encoding`` of both directions.
ENCODING: Final = "audio/pcm16le"
#: The parameters the page may set on ``start``; anything else it sends is dropped.
ALLOWED_PARAMETERS: Final = frozenset({"token", "phase"})


class WebCodec(UnnamedOutbound, StreamCodec):
    """One browser stream's codec (its outbound messages name no stream, as Telnyx's)."""

    carrier = CARRIER
    stream_key = "streamSid"

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        start = self._start_object(msg)
        stream_id = carrier_id(start.get("streamSid"), "streamSid")
        call_id = carrier_id(start.get("callSid"), "callSid")
        fmt = start.get("mediaFormat")
        if fmt is not None and (
            not isinstance(fmt, dict)
            or fmt.get("encoding") != ENCODING
            or fmt.get("sampleRate") != PCM16_16K.sample_rate
            or fmt.get("channels", 1) != 1
        ):
            raise ProtocolError(
                f"unsupported media format {str(fmt)[:120]}: send {ENCODING} at 16000 Hz, mono",
                fatal=True,
            )
        sent = custom_parameters(start.get("customParameters"))
        parameters = {k: v for k, v in sent.items() if k in ALLOWED_PARAMETERS}
        parameters["from"] = "browser"
        return StreamStarted(
            stream_id=stream_id,
            call_id=call_id,
            audio_format=PCM16_16K,
            parameters=parameters,
            downlink_format=PCM16_24K,
        )
