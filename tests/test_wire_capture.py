"""``benchmarks/wire.py``: the capture reader behind ``peer_load.py --wire``.

The latency it reports is only as good as its reading of the capture, so the reader is tested
the way the gateway's codecs are: with bytes. Frames come from ``websockets``' own serializer,
segments are cut at every possible place, and the time of a message must be that of the
segment that carried its last byte.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import wire

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8080)


def _tcp_packet(
    source: tuple[str, int], destination: tuple[str, int], seq: int, payload: bytes
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", source[1], destination[1], seq, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp) + len(payload),
        0,
        0,
        64,
        6,
        0,
        bytes(int(x) for x in source[0].split(".")),
        bytes(int(x) for x in destination[0].split(".")),
    )
    return ip + tcp + payload


def _pcap(
    segments: list[tuple[float, tuple[str, int], tuple[str, int], int, bytes]],
    *,
    nano: bool = True,
    endian: str = "<",
    linktype: int = wire.LINKTYPE_ETHERNET,
    padding: bytes = b"",
) -> bytes:
    """A capture file of ``(time, source, destination, seq, payload)`` segments; ``padding``
    follows each IP packet inside its frame (Ethernet pads short frames)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for at, source, destination, seq, payload in segments:
        packet = _tcp_packet(source, destination, seq, payload) + padding
        if linktype == wire.LINKTYPE_ETHERNET:
            frame = b"\0" * 12 + b"\x08\x00" + packet
        else:
            frame = b"\0" * 14 + b"\x08\x00" + packet
        seconds = int(at)
        fraction = round((at - seconds) * (1e9 if nano else 1e6))
        out += struct.pack(endian + "IIII", seconds, fraction, len(frame), len(frame)) + frame
    return out


def _read(capture: bytes) -> dict[tuple[tuple[str, int], tuple[str, int]], wire.Stream]:
    return wire.streams(wire.packets(capture))


def test_segments_are_read_with_their_times_ends_and_payload() -> None:
    capture = _pcap(
        [(100.25, CLIENT, SERVER, 7, b"hello"), (100.5, SERVER, CLIENT, 9, b"there")],
        padding=b"\0\0\0",
    )
    segments = list(wire.packets(capture))
    assert [(s.at, s.source, s.destination, s.seq, s.payload) for s in segments] == [
        (pytest.approx(100.25), CLIENT, SERVER, 7, b"hello"),
        (pytest.approx(100.5), SERVER, CLIENT, 9, b"there"),
    ]


@pytest.mark.parametrize("nano", [True, False])
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("linktype", [wire.LINKTYPE_ETHERNET, wire.LINKTYPE_LINUX_SLL])
def test_both_timestamp_units_byte_orders_and_link_types_are_read(
    nano: bool, endian: str, linktype: int
) -> None:
    capture = _pcap(
        [(12.000_125, CLIENT, SERVER, 1, b"x")], nano=nano, endian=endian, linktype=linktype
    )
    (segment,) = wire.packets(capture)
    assert segment.at == pytest.approx(12.000_125, abs=1e-9 if nano else 1e-6)
    assert segment.payload == b"x"


def test_segments_without_data_and_other_protocols_are_skipped() -> None:
    capture = _pcap([(1.0, CLIENT, SERVER, 1, b""), (2.0, CLIENT, SERVER, 1, b"data")])
    udp = bytearray(_tcp_packet(CLIENT, SERVER, 1, b"udp?"))
    udp[9] = 17
    frame = b"\0" * 12 + b"\x08\x00" + bytes(udp)
    capture += struct.pack("<IIII", 3, 0, len(frame), len(frame)) + frame
    assert [s.payload for s in wire.packets(capture)] == [b"data"]


def test_what_is_not_a_pcap_file_is_refused() -> None:
    with pytest.raises(wire.CaptureError, match="pcapng"):
        list(wire.packets(b"\x0a\x0d\x0d\x0a" + b"\0" * 40))
    with pytest.raises(wire.CaptureError, match="link type"):
        list(wire.packets(_pcap([], linktype=101)))
    with pytest.raises(wire.CaptureError):
        list(wire.packets(b"short"))


def test_a_retransmission_adds_only_its_new_bytes_and_a_hole_ends_the_stream() -> None:
    stream = wire.Stream()
    for at, seq, payload in [
        (1.0, 1000, b"abc"),
        (2.0, 1000, b"abc"),  # retransmitted whole
        (3.0, 1001, b"bcdef"),  # partly new
        (4.0, 1010, b"zz"),  # beyond a hole (1006-1009 never captured)
        (5.0, 1006, b"ghij"),
    ]:
        stream.add(wire.Segment(at, CLIENT, SERVER, seq, payload))
    assert bytes(stream.data) == b"abcdef"
    assert stream.broken
    assert stream.time_of(3) == 1.0
    assert stream.time_of(4) == 3.0


def test_sequence_numbers_wrap_around() -> None:
    stream = wire.Stream()
    stream.add(wire.Segment(1.0, CLIENT, SERVER, 2**32 - 2, b"ab"))
    stream.add(wire.Segment(2.0, CLIENT, SERVER, 0, b"cd"))
    stream.add(wire.Segment(3.0, CLIENT, SERVER, 2**32 - 1, b"bc"))  # behind, across the wrap
    assert bytes(stream.data) == b"abcd"
    assert not stream.broken


def _frame(payload: bytes, *, mask: bool, opcode: Opcode = Opcode.TEXT) -> bytes:
    return Frame(opcode, payload).serialize(mask=mask, extensions=[])


def _stream_of(chunks: list[tuple[float, bytes]]) -> wire.Stream:
    stream = wire.Stream()
    seq = 5000
    for at, chunk in chunks:
        stream.add(wire.Segment(at, CLIENT, SERVER, seq, chunk))
        seq += len(chunk)
    return stream


def test_websocket_frames_are_unmasked_and_timed_by_their_last_byte() -> None:
    upgrade = b"GET /media HTTP/1.1\r\nHost: x\r\n\r\n"
    small = _frame(b'{"event":"media"}', mask=True)
    medium = _frame(b"m" * 300, mask=True)  # 16-bit length
    large = _frame(b"L" * 70_000, mask=True, opcode=Opcode.BINARY)  # 64-bit length
    data = upgrade + small + medium + large
    cut1 = len(upgrade) + len(small) + 10  # inside the medium frame
    cut2 = len(upgrade) + len(small) + len(medium) + 3  # inside the large frame's header
    stream = _stream_of([(1.0, data[:cut1]), (2.0, data[cut1:cut2]), (3.0, data[cut2:])])
    messages = list(wire.websocket_messages(stream))
    assert [(m.at, m.kind, m.size, m.payload) for m in messages] == [
        (1.0, "text", 17, b'{"event":"media"}'),
        (2.0, "text", 300, b"m" * 300),
        (3.0, "binary", 70_000, b"L" * 70_000),
    ]


def test_a_websocket_response_stream_and_a_frame_cut_off_by_the_capture() -> None:
    response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    whole = _frame(b"first", mask=False)
    cut = _frame(b"second", mask=False)[:-2]
    messages = list(wire.websocket_messages(_stream_of([(1.0, response + whole + cut)])))
    assert [m.payload for m in messages] == [b"first"]


def test_a_stream_that_does_not_start_with_its_upgrade_has_no_messages() -> None:
    stream = _stream_of([(1.0, _frame(b"mid-stream", mask=False))])
    assert list(wire.websocket_messages(stream)) == []


def _record(content_type: int, body: bytes) -> bytes:
    return struct.pack("!BHH", content_type, 0x0303, len(body)) + body


def test_tls_records_are_sized_and_timed_by_their_last_byte() -> None:
    data = _record(22, b"h" * 40) + _record(23, b"a" * 955) + _record(23, b"b" * 955)
    stream = _stream_of([(1.0, data[:100]), (2.0, data[100:1000]), (3.0, data[1000:])])
    records = list(wire.tls_records(stream))
    assert [(r.at, r.kind, r.size) for r in records] == [
        (1.0, "handshake", 40),
        (3.0, "application_data", 955),
        (3.0, "application_data", 955),
    ]


@given(
    bodies=st.lists(st.binary(min_size=0, max_size=400), min_size=1, max_size=8),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
)
def test_any_segmentation_reads_the_same_frames_at_the_segments_that_end_them(
    bodies: list[bytes], masked: bool, cuts: list[int]
) -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    frames = [_frame(body, mask=masked, opcode=Opcode.BINARY) for body in bodies]
    data = upgrade + b"".join(frames)
    edges = sorted({c for c in cuts if c < len(data)} | {len(data)})
    chunks, start = [], 0
    for i, edge in enumerate(edges):
        chunks.append((float(i), data[start:edge]))
        start = edge
    messages = list(wire.websocket_messages(_stream_of(chunks)))
    assert [m.payload for m in messages] == bodies
    ends, end = [], len(upgrade)
    for frame in frames:
        end += len(frame)
        ends.append(end)
    # Each frame's time is that of the chunk holding its last byte.
    expected = [float(next(i for i, edge in enumerate(edges) if edge >= e)) for e in ends]
    assert [m.at for m in messages] == expected


def test_a_media_message_counts_its_frames_by_its_payload() -> None:
    five = base64.b64encode(b"\xff" * 800).decode()
    message = json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": five}})
    assert wire.media_frames(message.encode()) == 5
    assert wire.media_frames(b'{"event":"mark"}') == 0


def test_playback_holes_are_the_gaps_inside_an_answer_a_carrier_would_play() -> None:
    # 5 frames at 0, 5 more at 0.1 (on time), 5 at 0.23 (30 ms late: 2 frames of silence),
    # then a new answer 2 s later (a pause between answers, not a hole).
    media = [(0.0, 5), (0.1, 5), (0.23, 5), (2.5, 5)]
    assert wire.playback_holes(media) == 2
    # Ahead of time: each message queues behind the one before; no hole.
    assert wire.playback_holes([(0.0, 5), (0.01, 5), (0.05, 5)]) == 0


def test_an_answer_is_timed_from_its_first_record_to_its_first_media_message() -> None:
    records = [0.9, 1.0005, 1.02, 1.04, 3.0004, 3.02]
    media = [0.5, 0.52, 1.002, 1.1, 1.2, 3.003, 3.1]
    # Stamped 1.0 and 3.0: their records left at 1.0005 and 3.0004, their first media went at
    # 1.002 and 3.003; an answer stamped after the last record is not paired.
    latencies = wire.answer_latencies([1.0, 3.0, 5.0], records, media)
    assert [(at, round(ms, 3)) for at, ms in latencies] == [(1.0005, 1.5), (3.0004, 2.6)]
    # Media already flowing within 0.3 s before the record: not this answer's first.
    assert wire.answer_latencies([1.0], records, [0.8, 1.002]) == []


GATEWAY = ("127.0.0.1", 8080)
CALLER = ("127.0.0.1", 50001)
OTHER_CALLER = ("127.0.0.1", 50002)
MODEL = ("127.0.0.1", 9443)
MODEL_CLIENT = ("127.0.0.1", 40001)
OFFSET = 1_000.0  # the capture's clock less the monotonic one


def _twilio(event: str, sid: str, frames: int = 1) -> bytes:
    body: dict[str, object] = {"event": event, "streamSid": sid}
    if event == "media":
        body["media"] = {"payload": base64.b64encode(b"\xff" * 160 * frames).decode()}
    return json.dumps(body).encode()


class _Capture:
    """Segments of several connections, each numbered on from its own sequence number."""

    def __init__(self) -> None:
        self.segments: list[tuple[float, tuple[str, int], tuple[str, int], int, bytes]] = []
        self._seq: dict[tuple[tuple[str, int], tuple[str, int]], int] = {}

    def send(
        self, at: float, source: tuple[str, int], destination: tuple[str, int], data: bytes
    ) -> None:
        seq = self._seq.get((source, destination), 1)
        self.segments.append((at + OFFSET, source, destination, seq, data))
        self._seq[(source, destination)] = seq + len(data)

    def bytes(self) -> bytes:
        return _pcap(sorted(self.segments, key=lambda s: s[0]))


def test_traffic_tells_calls_and_model_connections_apart_and_times_their_messages() -> None:
    c = _Capture()
    for caller, sid in ((CALLER, "MZ-one"), (OTHER_CALLER, "MZ-two")):
        c.send(0.0, caller, GATEWAY, b"GET /streams HTTP/1.1\r\n\r\n")
        c.send(0.001, GATEWAY, caller, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        c.send(0.01, caller, GATEWAY, _frame(_twilio("start", sid), mask=True))
    c.send(0.002, MODEL_CLIENT, MODEL, _record(22, b"hello"))  # TLS: no HTTP to skip
    c.send(0.003, MODEL_CLIENT, MODEL, _record(23, b"s" * 1500))  # the setup
    c.send(0.004, MODEL, MODEL_CLIENT, _record(23, b"setupComplete"))
    for i in range(3):  # three caller frames, each a model frame 1.5 ms later
        c.send(0.02 + i * 0.02, CALLER, GATEWAY, _frame(_twilio("media", "MZ-one"), mask=True))
        c.send(0.0215 + i * 0.02, MODEL_CLIENT, MODEL, _record(23, b"a" * 955))
    c.send(0.05, OTHER_CALLER, GATEWAY, _frame(_twilio("media", "MZ-two"), mask=True))
    c.send(0.2, MODEL, MODEL_CLIENT, _record(23, b"answer" * 300))
    c.send(0.2016, GATEWAY, CALLER, _frame(_twilio("media", "MZ-one", frames=5), mask=False))
    c.send(0.21, GATEWAY, CALLER, _frame(_twilio("mark", "MZ-one"), mask=False))
    c.send(0.3, GATEWAY, OTHER_CALLER, _frame(_twilio("clear", "MZ-two"), mask=False))

    traffic = wire.Traffic(c.bytes(), GATEWAY[1], MODEL[1], OFFSET)

    assert traffic.broken == 0
    assert traffic.has_call("MZ-one") and traffic.has_call("MZ-two")
    assert not traffic.has_call("MZ-three")
    assert traffic.caller_frames("MZ-one") == pytest.approx([0.02, 0.04, 0.06])
    assert traffic.caller_frames("MZ-two") == pytest.approx([0.05])
    assert traffic.audio_size == 955
    assert traffic.model_frames([MODEL_CLIENT[1]]) == pytest.approx([0.0215, 0.0415, 0.0615])
    assert traffic.model_frames([None, 12345]) == []
    assert traffic.model_records([MODEL_CLIENT[1]]) == pytest.approx([0.004, 0.2])
    assert traffic.gateway_media("MZ-one") == [(pytest.approx(0.2016), 5)]
    assert traffic.gateway_media("MZ-two") == []


def test_a_capture_across_a_step_of_the_wall_clock_is_refused(tmp_path: Path) -> None:
    steady = wire.Capture(tmp_path / "lo.pcap", offsets=(1_000.0, 1_000.0002))
    assert steady.offset == 1_000.0
    stepped = wire.Capture(tmp_path / "lo.pcap", offsets=(1_000.0, 1_000.5))
    with pytest.raises(wire.CaptureError, match="wall clock moved"):
        _ = stepped.offset
