"""The media plane's two C functions against their Python forms, and against what they stand
in for: the carrier codec's full parse, and a websocket frame as ``websockets`` reads it."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway import mediaplane
from gateway.carriers.base import AudioReceived, ProtocolError
from gateway.carriers.telnyx import TelnyxCodec
from gateway.carriers.twilio import TwilioCodec
from gateway.live.fast_path import read_model_audio


@pytest.fixture(autouse=True)
def _compiled() -> None:
    """Skip without the extension, or fail where the run must have it (CI has a compiler)."""
    if mediaplane.COMPILED:
        return
    if os.environ.get("CALLBRIDGE_REQUIRE_COMPILED") == "1":
        pytest.fail("CALLBRIDGE_REQUIRE_COMPILED=1 but gateway/_mediaplane.c is not built")
    pytest.skip("the media plane's C extension is not built (no C compiler at install)")


_SID = "MZ0123456789abcdef0123456789abcdef"
_START = json.dumps({
    "event": "start",
    "streamSid": _SID,
    "start": {"streamSid": _SID, "callSid": "CA1", "accountSid": "AC1",
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
})  # fmt: skip


def _twilio_media(payload: bytes, n: int = 1) -> bytes:
    """A media message exactly as Twilio sends one (key order and all)."""
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(n + 1),
            "media": {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n),
                      "payload": base64.b64encode(payload).decode()},
            "streamSid": _SID,
        },
        separators=(",", ":"),
    ).encode()  # fmt: skip


def _streaming(codec: Any) -> Any:
    codec.parse(_START)
    return codec


# --------------------------------------------------------------------- messages to read

_B64_GOOD = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
_B64_ODD = st.sampled_from(["", "QQ", "QR==", "QQ=", "Q===", "QUJD=", "QU JD", "QUJD\n", "-_-_"])
_STRINGS = st.one_of(
    st.sampled_from(["media", "inbound", "outbound", _SID, "MZ2", "start", "x"]),
    _B64_GOOD,
    _B64_ODD,
    st.text(max_size=6),  # escapes, quotes, unicode once serialised
)
_KEYS = st.sampled_from(
    ["event", "streamSid", "stream_id", "media", "track", "payload", "chunk", "sequenceNumber"]
)
_SCALARS = st.one_of(_STRINGS, st.integers(-5, 99), st.none(), st.booleans())


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _SCALARS
    inner = st.lists(st.tuples(_KEYS, _values(depth - 1)), max_size=6)
    return st.one_of(_SCALARS, inner.map(_Object), st.lists(_SCALARS, max_size=2))


class _Object(list[tuple[str, Any]]):
    """Members in order, repeats allowed: JSON that a dict cannot express."""


def _dump(value: Any, space: str, ascii_only: bool) -> str:
    if isinstance(value, _Object):
        members = [
            json.dumps(k, ensure_ascii=ascii_only)
            + space
            + ":"
            + space
            + _dump(v, space, ascii_only)
            for k, v in value
        ]
        return "{" + space + ("," + space).join(members) + space + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v, space, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    """Media-like messages: mostly Twilio's shape with a thing or two changed, some anything."""
    space = draw(st.sampled_from(["", "", " ", "\n\t"]))
    ascii_only = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        top = draw(st.lists(st.tuples(_KEYS, _values(2)), max_size=7))
        return _dump(_Object(top), space, ascii_only).encode()
    media = _Object([("track", "inbound"), ("chunk", "1"), ("timestamp", "20"),
                     ("payload", draw(st.one_of(_B64_GOOD, _B64_GOOD, _B64_ODD)))])  # fmt: skip
    top = _Object([("event", "media"), ("sequenceNumber", "2"), ("media", media),
                   ("streamSid", _SID)])  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from([top, media]))
        how = draw(st.sampled_from(["drop", "add", "change"]))
        if how == "drop" and where:
            where.pop(draw(st.integers(0, len(where) - 1)))
        elif how == "add":
            where.insert(draw(st.integers(0, len(where))), (draw(_KEYS), draw(_values(1))))
        elif where:
            i = draw(st.integers(0, len(where) - 1))
            where[i] = (where[i][0], draw(_values(1)))
    return _dump(top, space, ascii_only).encode()


_ANY_BYTES = st.one_of(_messages(), st.binary(max_size=60))


# --------------------------------------------------------------------- carrier_media


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_ANY_BYTES, key=st.sampled_from([b"streamSid", b"stream_id"]))
def test_carrier_media_in_c_answers_as_its_python_form(raw: bytes, key: bytes) -> None:
    expected = mediaplane.py_carrier_media(raw, key, _SID.encode())
    assert mediaplane.carrier_media(raw, key, _SID.encode()) == expected


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_ANY_BYTES)
def test_what_carrier_media_reads_the_full_parse_reads_the_same(raw: bytes) -> None:
    """Sound: whenever the quick read answers, the codec's parse answers that very audio. (It
    may decline what the parse reads; the parse then reads it, so nothing changes.)"""
    codec = _streaming(TwilioCodec())
    quick = codec.quick_audio(raw)
    if quick is None:
        return
    assert codec.parse(raw.decode()) == AudioReceived(quick)


@given(payload=st.binary(max_size=400), n=st.integers(0, 10**6))
def test_twilio_media_messages_are_read_quickly(payload: bytes, n: int) -> None:
    """Complete where it matters: every media message in Twilio's own shape is read."""
    codec = _streaming(TwilioCodec())
    assert codec.quick_audio(_twilio_media(payload, n)) == payload


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"event":"media","media":{"payload":"AAAA"},"streamSid":"MZ2"}', "another stream"),
        (b'{"event":"media","media":{"track":"outbound","payload":"AAAA"}}', "another track"),
        (b'{"event":"media","media":{"payload":"AAA="},"media":{"payload":"AAAA"}}', "repeat"),
        (b'{"event":"media","media":{"payload":"AAAA","payload":"AAAA"}}', "repeated payload"),
        (b'{"event":"media","media":{"payload":"AA\\u0041A"}}', "an escape"),
        (b'{"event":"media","media":{"payload":"AAB="}}', "bits past the data"),
        (b'{"event":"media","media":{"payload":"AAAA"}} x', "trailing bytes"),
        (b'{"event":"media","n":1,"media":{"payload":"AAAA"}}', "a number"),
        (b'{"event":"media","media":{"payload":"AAAA","x":{}}}', "deeper nesting"),
        (b'{"event":"media","media":"AAAA"}', "media as a string"),
        (b'{"event":"m\xc3\xa9dia","media":{"payload":"AAAA"}}', "beyond ASCII"),
        (b'{"event":"mark","media":{"payload":"AAAA"}}', "another event"),
    ],
)
def test_carrier_media_declines_what_it_does_not_read(raw: bytes, why: str) -> None:
    for read in (mediaplane.carrier_media, mediaplane.py_carrier_media):
        assert read(raw, b"streamSid", _SID.encode()) is None, why


def test_the_quick_read_is_off_before_start_and_for_telnyx() -> None:
    raw = b'{"event":"media","media":{"payload":"AAAA"}}'
    codec = TwilioCodec()
    assert codec.quick_audio(raw) is None  # not streaming: parse refuses it
    with pytest.raises(ProtocolError):
        codec.parse(raw.decode())
    telnyx = TelnyxCodec()
    telnyx.parse(json.dumps({"event": "start", "stream_id": "s1", "start": {
        "call_control_id": "v3:1", "media_format": {"encoding": "PCMU", "sample_rate": 8000,
                                                    "channels": 1}}}))  # fmt: skip
    assert telnyx.quick_audio(raw) is None  # Telnyx reorders by its numbering: always parsed


# --------------------------------------------------------------------- base64_frame


def _read_frame(data: bytes, *, masked: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=masked)
    try:
        next(parser)
    except StopIteration as done:
        assert reader.at_eof() or not reader.buffer, "the frame is all of the bytes"
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("an incomplete frame")


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(max_size=300),
    data=st.one_of(st.binary(max_size=300), st.binary(min_size=49000, max_size=49200)),
    suffix=st.binary(max_size=40),
    mask=st.one_of(st.just(b""), st.binary(min_size=4, max_size=4)),
    urlsafe=st.booleans(),
    first=st.sampled_from([0x81, 0x82, 0x01]),
)
def test_base64_frame_is_the_frame_websockets_reads(
    prefix: bytes, data: bytes, suffix: bytes, mask: bytes, urlsafe: bool, first: int
) -> None:
    frame = mediaplane.base64_frame(first, prefix, data, suffix, mask, urlsafe)
    assert frame == mediaplane.py_base64_frame(first, prefix, data, suffix, mask, urlsafe)
    read = _read_frame(frame, masked=bool(mask))
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    assert read.data == prefix + encode(data) + suffix
    assert read.opcode is Opcode(first & 0x0F) and read.fin is bool(first & 0x80)


def test_base64_frame_refuses_a_bad_mask_or_first_byte() -> None:
    for build in (mediaplane.base64_frame, mediaplane.py_base64_frame):
        with pytest.raises(ValueError, match="mask"):
            build(0x81, b"", b"x", b"", b"abc", False)
        with pytest.raises(ValueError, match="byte"):
            build(256, b"", b"x", b"", b"", False)


# --------------------------------------------------------------------- data_frame


@st.composite
def _client_frames(draw: st.DrawFn) -> bytes:
    """A client's frames as ``websockets`` writes them (any opcode, fin, length), or junk."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 5)) == 0:
            out += draw(st.binary(min_size=1, max_size=12))
            continue
        opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.TEXT, Opcode.BINARY, Opcode.PING,
                                       Opcode.CONT]))  # fmt: skip
        sizes = [0, 1, 125] if opcode is Opcode.PING else [0, 1, 125, 126, 127, 300, 65535, 65536]
        size = draw(st.sampled_from(sizes))
        frame = Frame(opcode, draw(st.binary(min_size=size, max_size=size)),
                      fin=draw(st.booleans()) or opcode is Opcode.PING)  # fmt: skip
        out += frame.serialize(mask=draw(st.booleans()), extensions=[])
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_client_frames(),
    cut=st.integers(0, 10**6),
    limit=st.sampled_from([-1, 0xFFFF, 200]),
    masked=st.booleans(),
)
def test_data_frame_in_c_answers_as_its_python_form(
    data: bytes, cut: int, limit: int, masked: bool
) -> None:
    """Both sides' frames (masked or not), every way the read may end: C and Python agree."""
    data = data[: 1 + cut % len(data)]
    at = 0
    while at < len(data):
        got = mediaplane.data_frame(data, at, limit, masked)
        assert got == mediaplane.py_data_frame(data, at, limit, masked)
        if not isinstance(got, tuple):
            break
        at = got[2]


def test_data_frame_reads_what_websockets_wrote() -> None:
    for opcode in (Opcode.TEXT, Opcode.BINARY):
        for mask in (True, False):
            frame = Frame(opcode, b"x" * 3000).serialize(mask=mask, extensions=[])
            assert mediaplane.data_frame(frame, 0, -1, mask) == (
                opcode.value,
                b"x" * 3000,
                len(frame),
            )
            assert mediaplane.data_frame(frame, 0, -1, not mask) is None  # masked the other way
            assert mediaplane.data_frame(frame[:-1], 0, -1, mask) == len(frame)
            assert mediaplane.data_frame(frame, 0, 2999, mask) is None


# --------------------------------------------------------------------- model_audio


def _gemini_audio(pcm_parts: list[bytes], space: str, role: bool) -> bytes:
    turn: dict[str, Any] = {"parts": [
        {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(p).decode()}}
        for p in pcm_parts
    ]}  # fmt: skip
    if role:
        turn = {"role": "model", **turn}
    separators = (",", ":") if not space else (", ", ": ")
    return json.dumps({"serverContent": {"modelTurn": turn}}, separators=separators).encode()


@given(
    parts=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
    space=st.sampled_from(["", " "]),
    role=st.booleans(),
)
def test_model_audio_reads_gemini_audio_in_c(parts: list[bytes], space: str, role: bool) -> None:
    raw = _gemini_audio(parts, space, role)
    assert mediaplane.model_audio(raw) == b"".join(parts)


def test_model_audio_reads_the_live_simulators_audio() -> None:
    from callsim.jsontext import compact
    from callsim.live.messages import audio_chunk

    pcm = bytes(range(256)) * 8
    raw = compact(audio_chunk(pcm)).encode()
    assert mediaplane.model_audio(raw) == pcm


_MODEL_KEYS = st.sampled_from(
    ["serverContent", "modelTurn", "parts", "role", "inlineData", "mimeType", "data", "x"]
)
_MODEL_STRINGS = st.one_of(
    st.sampled_from(
        [
            "audio/pcm;rate=24000",
            "audio/pcm; rate=24000",
            "audio/pcm;rate=16000",
            "model",
            "",
            "AAAA",
            "AA-_",
            "AAB=",
            "QQ==",
        ]
    ),
    _B64_GOOD,
    st.text(max_size=4),
)


def _model_values(depth: int) -> st.SearchStrategy[Any]:
    scalars = st.one_of(_MODEL_STRINGS, st.integers(0, 9), st.none())
    if depth == 0:
        return scalars
    inner = st.lists(st.tuples(_MODEL_KEYS, _model_values(depth - 1)), max_size=3)
    return st.one_of(scalars, inner.map(_Object), st.lists(_model_values(depth - 1), max_size=3))


@st.composite
def _model_messages(draw: st.DrawFn) -> bytes:
    """Gemini's audio message with a thing or two changed, or anything of its parts."""
    space = draw(st.sampled_from(["", " "]))
    if draw(st.integers(0, 3)) == 0:
        return _dump(draw(_model_values(5)), space, draw(st.booleans())).encode()
    blob = _Object([("mimeType", "audio/pcm;rate=24000"), ("data", draw(_B64_GOOD))])
    part = _Object([("inlineData", blob)])
    parts = [part] + [_Object([("inlineData", _Object([("mimeType", "audio/pcm;rate=24000"),
                                                       ("data", draw(_B64_GOOD))]))])
                      for _ in range(draw(st.integers(0, 2)))]  # fmt: skip
    turn = _Object([("parts", parts)])
    top = _Object([("serverContent", _Object([("modelTurn", turn)]))])
    objects = [blob, part, turn, top[0][1]]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(objects))
        how = draw(st.sampled_from(["drop", "add", "change"]))
        if how == "drop" and where:
            where.pop(draw(st.integers(0, len(where) - 1)))
        elif how == "add":
            where.insert(
                draw(st.integers(0, len(where))), (draw(_MODEL_KEYS), draw(_model_values(1)))
            )
        elif where:
            i = draw(st.integers(0, len(where) - 1))
            where[i] = (where[i][0], draw(_model_values(1)))
    return _dump(top, space, draw(st.booleans())).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(_model_messages(), st.binary(max_size=40)))
def test_what_model_audio_reads_in_c_the_python_reader_reads_the_same(raw: bytes) -> None:
    quick = mediaplane.model_audio(raw)
    if quick is not None:
        assert read_model_audio(raw) == quick


# Bytes that end a plain string's run (the C scan reads eight bytes at a time, then judges the
# byte that stopped it): a quote, a backslash, control characters, DEL, anything not ASCII.
_STOPS = st.sampled_from([b'"', b"\\", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9"])


@settings(max_examples=400, deadline=None)
@given(
    pcm=st.binary(min_size=30, max_size=120),
    at=st.integers(0, 10**6),
    stop=st.one_of(_STOPS, st.just(b"")),
)
def test_a_long_string_is_read_to_its_end_wherever_a_stop_falls(
    pcm: bytes, at: int, stop: bytes
) -> None:
    """Model audio and a carrier's payload, long strings, with one stop byte (or none) at any
    offset of any word: read only when there is none; and as the Python forms read them."""
    data = base64.b64encode(pcm)
    cut = at % (len(data) + 1)
    spoiled = data[:cut] + stop + data[cut:]
    model = (
        b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":'
        b'{"mimeType":"audio/pcm;rate=24000","data":"' + spoiled + b'"}}]}}}'
    )
    carrier = (
        b'{"event":"media","media":{"track":"inbound","payload":"' + spoiled + b'"},'
        b'"streamSid":"' + _SID.encode() + b'"}'
    )
    got_model = mediaplane.model_audio(model)
    got_carrier = mediaplane.carrier_media(carrier, b"streamSid", _SID.encode())
    assert got_carrier == mediaplane.py_carrier_media(carrier, b"streamSid", _SID.encode())
    if stop:
        assert got_model is None
        assert got_carrier is None
    else:
        assert got_model == pcm
        assert got_carrier == pcm
