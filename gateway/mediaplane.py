"""A call's per-frame byte work, one C call per step: the media plane.

Fifty times a second per call a caller's frame goes from the carrier's websocket to the model's:
the frame is cut and unmasked, its JSON parsed into dicts, the payload picked out and
base64-decoded, the model's message built as text, encoded, framed and masked; the model's
answers come back as frames of JSON and base64 the other way. Every step was already C
(``orjson``, ``pybase64``, ``websockets``' mask), but each is reached through a Python call, an
object or two made and dropped, and a few checks: at 50 calls those hops were about a sixth of
the gateway's CPU (benchmarks/README.md, "The media plane (seventh pass)"). Here each step is
one C call (``gateway/_mediaplane.c``):

- :func:`data_frame` cuts a whole text or binary frame out of a read and unmasks it: a
  carrier's masked media frames, the model's unmasked ones (and the simulators' side of theirs).
- :func:`carrier_media` reads a carrier's media message straight from its bytes, without
  building its JSON, when it has the narrow shape the carriers send: an object of plain strings
  (no escape, printable ASCII), with one nested object, ``media``, of plain strings too. It
  answers the audio only when the full parse (:meth:`~gateway.carriers.stream.StreamCodec.parse`)
  would answer exactly that audio, and None for anything else, which the full parse then reads
  and judges as before: a number, an escape, a repeated key, other nesting, base64 that is not
  in its strict form.
- :func:`base64_frame` builds the model's websocket frame whole: header, masking key and the
  masked ``prefix + base64(data) + suffix``, the bytes ``DirectSender`` writes. Given no key
  (None) it draws a fresh one from ``os.urandom``, through a pool of its own.
- :func:`model_audio` reads the audio of a Gemini Live message in its plain form; its
  specification is the fast path's own reader (``gateway.live.fast_path.read_model_audio``).

Each has a Python form here, answer for answer (tests/test_mediaplane.py compares the two on
arbitrary input); it is used when the extension was not built (an install without a C
compiler: pyproject.toml marks it optional) and stands as its specification. The Python
form of :func:`model_audio` declines every message, leaving each to the fast path's reader.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover -- websockets built without its C extension
    from websockets.utils import apply_mask

from gateway.wsparser import frame_bounds, frame_header

__all__ = [
    "COMPILED", "base64_frame", "carrier_media", "data_frame", "fresh_key", "model_audio",
    "py_base64_frame", "py_carrier_media", "py_data_frame", "py_model_audio",
]  # fmt: skip

#: A plain JSON string's body: printable ASCII, no quote, no escape.
_PLAIN = rb'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_WS = rb"[ \t\n\r]*"
_MEMBER = re.compile(_WS + rb"(" + _PLAIN + rb")" + _WS + rb":" + _WS)
_STRING = re.compile(_PLAIN)
_STRICT_B64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def py_carrier_media(raw: bytes, stream_key: bytes, stream_id: bytes) -> bytes | None:
    """:func:`carrier_media` in Python (see the module's docstring for what it accepts)."""
    top = _plain_object(raw, _skip_ws(raw, 0), (b"event", stream_key, b"media"), b"media")
    if top is None:
        return None
    members, end = top
    if _skip_ws(raw, end) != len(raw):
        return None
    media = members.get(b"media")
    if members.get(b"event") != b"media" or not isinstance(media, dict):
        return None
    stream = members.get(stream_key)
    if stream is not None and stream != stream_id:
        return None
    track, payload = media.get(b"track"), media.get(b"payload")
    if (track is not None and track != b"inbound") or not isinstance(payload, bytes):
        return None
    return _strict_b64decode(payload)


_Members = dict[bytes, "bytes | _Members"]


def _plain_object(
    raw: bytes, at: int, read: tuple[bytes, ...], nested: bytes | None
) -> tuple[_Members, int] | None:
    """The object of plain strings at ``raw[at]``, and where it ends; its ``nested`` member
    (if any) must be such an object itself, with ``track`` and ``payload`` read in it.

    Only the keys in ``read`` are kept: a repeated one declines (so "the last one wins" never
    has to be decided), other keys may repeat and are skipped, as in C."""
    if raw[at : at + 1] != b"{":
        return None
    at = _skip_ws(raw, at + 1)
    if raw[at : at + 1] == b"}":
        return None if nested is not None else ({}, at + 1)
    members: _Members = {}
    while True:
        match = _MEMBER.match(raw, at)
        if match is None:
            return None
        key, at = match.group(1)[1:-1], match.end()
        if raw[at : at + 1] == b"{":
            if nested is None or key != nested or key in members:
                return None
            inner = _plain_object(raw, at, (b"track", b"payload"), None)
            if inner is None:
                return None
            members[key], at = inner
        else:
            string = _STRING.match(raw, at)
            if string is None:
                return None
            value, at = string.group()[1:-1], string.end()
            first = next((k for k in read if k == key), None)  # the C's order of tests
            if first is not None:
                if first == nested or first in members:
                    return None  # a nested key holding a string, or a repeated key
                members[key] = value
        at = _skip_ws(raw, at)
        end = raw[at : at + 1]
        if end == b"}":
            return members, at + 1
        if end != b",":
            return None
        at = _skip_ws(raw, at + 1)


def _skip_ws(raw: bytes, at: int) -> int:
    while raw[at : at + 1] in (b" ", b"\t", b"\n", b"\r"):
        at += 1
    return at


def _strict_b64decode(data: bytes) -> bytes | None:
    if len(data) % 4 or _STRICT_B64.fullmatch(data) is None:
        return None
    decoded = binascii.a2b_base64(data, strict_mode=True)
    if base64.b64encode(decoded) != data:
        return None  # bits set past the data
    return decoded


def py_data_frame(
    data: bytes, at: int, limit: int, masked: bool
) -> tuple[int, bytes, int] | int | None:
    """:func:`data_frame` in Python: the frame at ``data[at]`` if it is a whole (FIN) text or
    binary frame, masked as ``masked`` says, of at most ``limit`` bytes (negative: any), as its
    opcode, payload (unmasked) and end; its end (past ``len(data)``) if only its start is here;
    None for a frame of another shape."""
    if not 0 <= at < len(data):
        raise ValueError("at must be within data")
    first = data[at]
    if first not in (0x81, 0x82):
        return None
    bounds = frame_bounds(data, at, masked=masked, limit=limit if limit >= 0 else None)
    if bounds is None:
        return None
    start, end = bounds
    if end > len(data):
        return end
    payload = data[start:end]
    if masked:
        payload = apply_mask(payload, data[start - 4 : start])
    return first & 0x0F, payload, end


def py_model_audio(raw: bytes | str) -> bytes | None:
    """:func:`model_audio` without the extension: it declines every message, which leaves
    each to the fast path's own reader (``gateway.live.fast_path.model_audio``), the
    specification the compiled one answers a part of."""
    return None


#: Masking keys for ``mask=None``: ``os.urandom``'s bytes, 1024 keys at a time, each used once.
_KEY_POOL_BYTES = 4096
_key_pool = b""
_key_at = _KEY_POOL_BYTES


def fresh_key() -> bytes:
    """A fresh masking key (RFC 6455 5.3: unpredictable, from a strong source of entropy)."""
    global _key_pool, _key_at
    if _key_at + 4 > len(_key_pool):
        _key_pool, _key_at = os.urandom(_KEY_POOL_BYTES), 0
    key = _key_pool[_key_at : _key_at + 4]
    _key_at += 4
    return key


def py_base64_frame(
    first: int, prefix: bytes, data: bytes, suffix: bytes, mask: bytes | None, urlsafe: bool
) -> bytes:
    """:func:`base64_frame` in Python."""
    if not 0 <= first <= 255:
        raise ValueError("first must be a byte")
    if mask is None:
        mask = fresh_key()
    if len(mask) not in (0, 4):
        raise ValueError("mask must be 4 bytes, empty for none, or None")
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    payload = prefix + encoded + suffix
    header = frame_header(first, len(payload), masked=bool(mask))
    if not mask:
        return header + payload
    return header + mask + apply_mask(payload, mask)


try:
    from gateway._mediaplane import (
        base64_frame,
        carrier_media,
        data_frame,
        model_audio,
    )

    COMPILED = True
except ImportError:  # pragma: no cover -- built without a C compiler
    carrier_media = py_carrier_media
    base64_frame = py_base64_frame
    data_frame = py_data_frame
    model_audio = py_model_audio
    COMPILED = False
