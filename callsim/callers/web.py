"""A simulated browser call against a running gateway: what the console's Talk button does,
without a browser, so a deployment's browser path can be tested from a shell or a test.

:class:`WebCaller` shares the real-time engine of :class:`~callsim.callers.twilio.StreamCaller`
(absolute 20 ms schedules, the playback-buffer model, mark echoes, violations) and plays the
page around it, as the README's "The console" documents the protocol:

* **Issue**: ``POST /web/calls`` with the admin's bearer token (and ``{"phase": …}``) plays the
  carrier's webhook: the gateway names the call and mints its stream token. Any answer but 201
  is a violation and there is no call, as a refused webhook leaves none.
* **Stream**: open the issued ``stream_url`` with the same bearer header, send ``start`` naming
  the issued call and stream, then 20 ms of PCM16LE 16 kHz (640 bytes) per ``media`` message in
  real time, DTMF at its times, and ``stop`` (or a bare close) to hang up. No ``connected``
  message and no sequence numbers: the page sends neither.
* **Playback**: the gateway's PCM16LE 24 kHz is played on a 20 ms clock (960 bytes per tick)
  through the shared :class:`~callsim.callers.playback.PlaybackBuffer` (``silence=0``), so
  marks are echoed once played and ``clear`` flushes and echoes, as the page's jitter buffer
  does; ``heard`` is that 24 kHz PCM on the call timeline, exactly as received.

The protocol is written here from its documentation, not imported from ``gateway.carriers``:
a peer built on the gateway's own codec would agree with it by construction (the layering test
checks that ``callsim`` never imports it). :func:`parse_gateway_frame` is pure, so the checks
are testable with plain strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import ssl
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from functools import partial
from typing import Any, Final, Literal, NamedTuple

import httpx

from callsim.callers.audio import Segment, render_pcm
from callsim.callers.result import CallEvent, CallResult
from callsim.callers.state import StreamRules
from callsim.callers.twilio import MessageBuilder, StreamCaller, default_ssl_context
from callsim.twilio.peer import DuplicateKeyError, GatewayFrame, format_violation, loads_strict
from gateway.answers import error_detail

__all__ = [
    "DOWN_FRAME_BYTES",
    "DOWN_RATE",
    "DTMF_DIGITS",
    "ENCODING",
    "UP_FRAME_BYTES",
    "UP_RATE",
    "Violation",
    "WebCaller",
    "WebHangup",
    "parse_gateway_frame",
]

ENCODING: Final = "audio/pcm16le"
"""``start.mediaFormat.encoding``: PCM16 little-endian, mono, both ways."""
UP_RATE: Final = 16000
"""What the page sends: the model's input rate, so wideband speech reaches it untouched."""
DOWN_RATE: Final = 24000
"""What the gateway sends: the model's output rate, played as it is."""
UP_FRAME_BYTES: Final = 2 * UP_RATE // 50
"""One 20 ms ``media`` message from the page: 640 bytes."""
DOWN_FRAME_BYTES: Final = 2 * DOWN_RATE // 50
"""One 20 ms frame of the gateway's audio, and one playout tick: 960 bytes."""
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""The keys a ``dtmf`` message may carry (the page's keypad sends 0-9, * and #; the gateway
takes RFC 4733's A-D too)."""

WebHangup = Literal["stop", "close"]
"""How the page ends a call: ``stop`` then a close (Talk's hang-up), or a close alone (the tab
went away)."""


class Violation(StrEnum):
    """Kinds of browser-protocol violations; the prefix of every violation string.

    Kinds the carriers' peers share have the same values, so a test can match either.
    """

    # issuing the call
    ISSUE_FAILED = "issue-failed"  # POST /web/calls got no HTTP answer
    ISSUE_REFUSED = "issue-refused"  # POST /web/calls answered other than 201
    ISSUE_ANSWER = "issue-answer"  # a 201 without call_id, stream_id and stream_url strings
    # the stream
    STREAM_CONNECT_FAILED = "stream-connect-failed"  # handshake not 101, refused, timeout
    WEBSOCKET_PROTOCOL = "websocket-protocol-error"  # bad UTF-8, bad framing
    BINARY_FRAME = "binary-frame"  # the page reads text frames only
    INVALID_JSON = "invalid-json"
    DUPLICATE_KEY = "duplicate-key"
    NOT_AN_OBJECT = "not-an-object"
    UNKNOWN_EVENT = "unknown-event"  # event not media/mark/clear
    MISSING_FIELD = "missing-field"  # e.g. a mark without a name
    EXTRA_FIELD = "extra-field"  # not in the documented shape (ignored; the frame still acts)
    BAD_FIELD_TYPE = "bad-field-type"
    BAD_PAYLOAD = "bad-payload"  # empty or not strict base64
    MEDIA_PARTIAL_FRAME = "media-partial-frame"  # not whole 20 ms frames (960 bytes); plays


# --- messages the page sends --------------------------------------------------------------------
# The page numbers nothing; ``seq`` is the engine's (``MessageBuilder``) and is dropped.


def start_message(
    *, seq: int = 0, stream_id: str, call_id: str, parameters: Mapping[str, str]
) -> dict[str, Any]:
    """``start``: the issued call and stream, the media format, the page's parameters."""
    return {
        "event": "start",
        "start": {
            "streamSid": stream_id,
            "callSid": call_id,
            "mediaFormat": {"encoding": ENCODING, "sampleRate": UP_RATE, "channels": 1},
            "customParameters": dict(parameters),
        },
    }


def media_message(*, seq: int = 0, payload: bytes) -> dict[str, Any]:
    """20 ms of the microphone: 640 bytes of PCM16LE 16 kHz, base64."""
    return {"event": "media", "media": {"payload": base64.b64encode(payload).decode("ascii")}}


def dtmf_message(*, seq: int = 0, digit: str) -> dict[str, Any]:
    """A key of the page's keypad."""
    return {"event": "dtmf", "dtmf": {"digit": digit}}


def mark_message(*, seq: int = 0, name: str) -> dict[str, Any]:
    """The echo of a gateway mark: its audio played, or a ``clear`` flushed it."""
    return {"event": "mark", "mark": {"name": name}}


def stop_message(*, seq: int = 0) -> dict[str, Any]:
    """Talk's hang-up, before the page closes the socket."""
    return {"event": "stop"}


# --- messages the gateway sends -----------------------------------------------------------------

_INNER_KEY: dict[str, str] = {"media": "payload", "mark": "name"}
_EVENTS: dict[str, Literal["media", "mark", "clear"]] = {
    "media": "media",
    "mark": "mark",
    "clear": "clear",
}


def parse_gateway_frame(frame: str | bytes) -> GatewayFrame:
    """Parse and check one WebSocket frame the gateway sent on a browser stream.

    ``event`` is set when the page would act on the frame: a ``media`` with a non-empty strict
    base64 payload, a ``mark`` with a string name, a ``clear``. A payload that is not whole
    960-byte frames, and a field outside the documented shape, are violations that still act,
    because the page plays whatever whole samples arrive and reads only the fields it knows;
    everything else wrong is a violation the page could not act on, so nothing happens.
    """
    out = GatewayFrame()
    add = out.violations.append
    if isinstance(frame, bytes):
        add(format_violation(Violation.BINARY_FRAME, f"{len(frame)}-byte binary frame; send text"))
        return out
    try:
        message = loads_strict(frame)
    except DuplicateKeyError as exc:
        add(format_violation(Violation.DUPLICATE_KEY, f"keys {exc} repeated"))
        return out
    except ValueError as exc:
        add(format_violation(Violation.INVALID_JSON, f"{exc}: {frame[:80]!r}"))
        return out
    if not isinstance(message, dict):
        kind = type(message).__name__
        add(format_violation(Violation.NOT_AN_OBJECT, f"JSON {kind}, not an object"))
        return out
    out.message = message
    event = message.get("event")
    if not isinstance(event, str) or event not in _EVENTS:
        kind = Violation.MISSING_FIELD if "event" not in message else Violation.UNKNOWN_EVENT
        add(format_violation(kind, f"event {event!r}; the gateway may send media, mark or clear"))
        return out
    for name in sorted(message.keys() - {"event", event}):
        add(format_violation(Violation.EXTRA_FIELD, f"{event}: unexpected {name}"))
    if event != "clear" and not _check_inner(event, message.get(event), out):
        return out
    out.event = _EVENTS[event]
    return out


def _check_inner(event: str, inner: object, out: GatewayFrame) -> bool:
    """Check ``media.payload`` or ``mark.name``; True if the page can act on the message."""
    add = out.violations.append
    if inner is None:
        add(format_violation(Violation.MISSING_FIELD, f"{event}: no {event} object"))
        return False
    if not isinstance(inner, dict):
        kind = type(inner).__name__
        add(format_violation(Violation.BAD_FIELD_TYPE, f"{event}.{event} is {kind}, not object"))
        return False
    key = _INNER_KEY[event]
    for name in sorted(inner.keys() - {key}):
        add(format_violation(Violation.EXTRA_FIELD, f"{event}: unexpected {event}.{name}"))
    value = inner.get(key)
    if key not in inner:
        add(format_violation(Violation.MISSING_FIELD, f"{event}: no {event}.{key}"))
        return False
    if not isinstance(value, str):
        kind = type(value).__name__
        add(format_violation(Violation.BAD_FIELD_TYPE, f"{event}.{key} is {kind}, not string"))
        return False
    if event == "mark":
        out.mark_name = value
        return True
    try:
        audio = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        add(format_violation(Violation.BAD_PAYLOAD, f"not base64 ({exc}): {value[:40]!r}"))
        return False
    if not audio:
        add(format_violation(Violation.BAD_PAYLOAD, "media.payload is empty"))
        return False
    if len(audio) % DOWN_FRAME_BYTES:
        text = (
            f"{len(audio)} bytes of PCM16LE {DOWN_RATE} Hz is not whole 20 ms frames "
            f"({DOWN_FRAME_BYTES} bytes each)"
        )
        add(format_violation(Violation.MEDIA_PARTIAL_FRAME, text))
    out.payload = audio
    return True


def _whole_samples(payload: bytes) -> bytes:
    """What the page's player takes of a payload: its whole samples (an odd last byte is
    dropped, as ``byteLength >> 1`` does), so the heard timeline stays sample-aligned."""
    return payload[: len(payload) & ~1]


BROWSER_RULES: Final = StreamRules(
    parse=parse_gateway_frame,
    frame_bytes=DOWN_FRAME_BYTES,
    tick_bytes=DOWN_FRAME_BYTES,
    silence=0,
    decode=_whole_samples,
)
"""The shared state machine as the page plays: 24 kHz PCM16 ticks, zero-filled when dry. The
page's 30 s ring (which drops the oldest audio on overflow) is not modelled: the gateway paces
its audio a fraction of a second ahead."""


# --- the caller ---------------------------------------------------------------------------------


class WebCaller(StreamCaller):
    """One simulated browser call. Create, ``await run()`` once, inspect the result.

    ``speech`` is what the caller says, rendered at 16 kHz; ``linger_s`` of silence follows,
    then the caller hangs up as ``hangup`` says (the gateway closing the socket ends the call
    earlier). ``dtmf`` is ``(call time in seconds, digit)`` pairs. ``phase`` is the pipeline
    stage to start in (sent to ``POST /web/calls`` and in ``start``). ``admin_token`` is the
    gateway's ``ADMIN_API_TOKEN``, sent as a bearer token on the issue and on the upgrade.
    ``stream_url`` overrides where the WebSocket connects (e.g. the bare ``/web/stream``
    behind a proxy); the stream token then rides in ``start``'s ``customParameters.token``,
    as the gateway accepts it there. Other options as for
    :class:`~callsim.callers.twilio.TwilioCaller`.

    ``CallResult.call_sid``/``stream_sid`` are the issued ``call_id``/``stream_id`` (empty if
    the issue was refused), ``webhook_url``/``webhook_status``/``twiml`` the issue's URL,
    status and answer, ``heard`` PCM16LE at 24000 Hz.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        admin_token: str,
        speech: Sequence[Segment] = (),
        linger_s: float = 1.0,
        dtmf: Sequence[tuple[float, str]] = (),
        hangup: WebHangup = "stop",
        phase: str | None = None,
        stream_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        use_env_proxy: bool = False,
        issue_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        on_event: Callable[[CallEvent], None] | None = None,
    ) -> None:
        if not admin_token.strip():
            raise ValueError("admin_token is empty: a browser call needs the ADMIN_API_TOKEN")
        if hangup not in ("stop", "close"):
            raise ValueError(f"hangup must be stop or close, got {hangup!r}")
        self._pcm = render_pcm(speech, UP_RATE)
        super().__init__(
            CallResult(
                webhook_url=gateway_url.rstrip("/") + "/web/calls",
                call_sid="",
                account_sid="",
                stream_sid="",
                carrier="web",
                mode="browser",
                codec=f"{ENCODING}/{UP_RATE}",
                bidirectional_codec=f"{ENCODING}/{DOWN_RATE}",
                heard_rate=DOWN_RATE,
                heard_encoding="pcm16",
            ),
            audio_chunks=math.ceil(len(self._pcm) / UP_FRAME_BYTES),
            linger_s=linger_s,
            dtmf=dtmf,
            dtmf_digits=DTMF_DIGITS,
            hangup=hangup,
            ssl_context=ssl_context,
            use_env_proxy=use_env_proxy,
            webhook_timeout_s=issue_timeout_s,
            connect_timeout_s=connect_timeout_s,
            close_timeout_s=close_timeout_s,
            on_event=on_event,
        )
        self._state.use_rules(BROWSER_RULES)
        self._bearer = {"Authorization": f"Bearer {admin_token.strip()}"}
        self._phase = phase or None
        self._stream_url_override = stream_url

    # --- issuing the call -----------------------------------------------------------------------

    async def _setup(self) -> str | None:
        """``POST /web/calls``; return the stream URL to connect to, or None (a violation)."""
        res = self.result
        body = {"phase": self._phase} if self._phase else {}
        async with httpx.AsyncClient(
            timeout=self._webhook_timeout,
            trust_env=self._use_env_proxy,
            verify=self._ssl if self._ssl is not None else default_ssl_context(),
        ) as http:
            try:
                response = await http.post(res.webhook_url, json=body, headers=self._bearer)
            except httpx.HTTPError as exc:
                detail = f"POST {res.webhook_url}: {type(exc).__name__}: {exc}"
                self._violation(format_violation(Violation.ISSUE_FAILED, detail))
                return None
        res.webhook_status = response.status_code
        res.twiml = response.text
        if response.status_code != 201:
            detail = (
                f"POST {res.webhook_url}: HTTP {response.status_code}: {error_detail(response)}"
            )
            self._violation(format_violation(Violation.ISSUE_REFUSED, detail))
            return None
        issued = _Issued.of(response.text)
        if issued is None:
            detail = f"POST {res.webhook_url}: 201 without {', '.join(_Issued._fields)}"
            self._violation(format_violation(Violation.ISSUE_ANSWER, f"{detail}: {res.twiml!r}"))
            return None
        res.call_sid, res.stream_sid = issued.call_id, issued.stream_id
        res.twiml_stream_url = issued.stream_url
        if self._phase:
            res.parameters["phase"] = self._phase
        if self._stream_url_override is not None:
            res.parameters["token"] = issued.token
            return self._stream_url_override
        return issued.stream_url

    # --- the page's messages --------------------------------------------------------------------

    def _ws_headers(self, url: str) -> dict[str, str]:
        return dict(self._bearer)

    def _connected_message(self) -> dict[str, Any] | None:
        return None

    def _start_builder(self) -> MessageBuilder:
        res = self.result
        return partial(
            start_message,
            stream_id=res.stream_sid,
            call_id=res.call_sid,
            parameters=res.parameters,
        )

    def _media_builder(self, chunk: int) -> MessageBuilder:
        audio = self._pcm[(chunk - 1) * UP_FRAME_BYTES : chunk * UP_FRAME_BYTES]
        return partial(media_message, payload=audio.ljust(UP_FRAME_BYTES, b"\0"))

    def _dtmf_builder(self, digit: str) -> MessageBuilder:
        return partial(dtmf_message, digit=digit)

    def _stop_builder(self) -> MessageBuilder:
        return stop_message

    def _echo_builder(self, name: str) -> MessageBuilder:
        return partial(mark_message, name=name)


class _Issued(NamedTuple):
    """What ``POST /web/calls`` answers that the call needs."""

    call_id: str
    stream_id: str
    stream_url: str
    token: str

    @classmethod
    def of(cls, text: str) -> _Issued | None:
        """Read a 201 answer; None if any field is missing, empty or not a string."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        values = [data.get(name) for name in cls._fields]
        strings = [value for value in values if isinstance(value, str) and value]
        return cls(*strings) if len(strings) == len(values) else None
