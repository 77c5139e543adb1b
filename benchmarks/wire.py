"""Latency on the wire: what the gateway adds, read from the kernel's timestamps of a loopback
capture, free of the load generators' own delays.

A load generator stamps a message when its event loop gets to it. On a machine where the
callers and the simulator share one busy core, that can be many milliseconds after the message
arrived, and the delay lands in the latency measured (``peer_load.py``'s lag probes put it at
4-15 ms at the p99 at 50 calls). A capture of the loopback (``tcpdump``) stamps each packet in
the kernel as it is written, in the writer's own system call: the caller's media message as it
reaches the gateway's socket, the gateway's model frame as the gateway writes it. The
difference is the gateway's alone: its read, its work, its event loop's lag and pacing, its
write; not the load generators' scheduling.

Pure functions over bytes, as a capture file holds them, so they are tested without a capture
(``tests/test_wire_capture.py``):

- :func:`packets`: a pcap file's TCP segments (Ethernet or Linux "cooked" framing, IPv4);
- :class:`Stream`: one direction of one TCP connection reassembled, with the kernel time of
  the segment that carried each byte;
- :func:`websocket_messages` and :func:`tls_records`: the messages in such a stream, each with
  the time its last byte was written (a message is complete only then);
- :class:`Traffic`: a gateway's capture read for what a load benchmark pairs, per call and
  per model connection; :func:`answer_latencies` and :func:`playback_holes`, the pairings.

:func:`capturing` runs ``tcpdump`` for a block of a benchmark (root, and the Debian package).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from websockets.utils import apply_mask

#: pcap's magic numbers: microsecond and nanosecond timestamps (as written, either byte order).
_MAGIC = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
_ETHERTYPE_IPV4 = 0x0800
_WS_OPCODES = {1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
_TLS_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


@dataclass(frozen=True, slots=True)
class Segment:
    """A TCP segment with data: kernel time (s, the capture's clock), ends, sequence number."""

    at: float
    source: tuple[str, int]
    destination: tuple[str, int]
    seq: int
    payload: bytes


class CaptureError(ValueError):
    """Not a capture this module reads (not pcap, or another link type)."""


def packets(data: bytes) -> Iterator[Segment]:
    """The TCP segments with data in a pcap file's bytes, in capture order (IPv4 only; the
    gateway's benchmarks run on 127.0.0.1). A segment truncated by the capture's snap length
    keeps what was captured."""
    if len(data) < 24:
        raise CaptureError("not a pcap file: shorter than its header")
    for endian in ("<", ">"):
        (magic,) = struct.unpack_from(endian + "I", data)
        if magic in _MAGIC:
            unit = _MAGIC[magic]
            break
    else:
        raise CaptureError("not a pcap file (pcapng is not read: write with tcpdump -w)")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype == LINKTYPE_ETHERNET:
        link_len, type_at = 14, 12
    elif linktype == LINKTYPE_LINUX_SLL:
        link_len, type_at = 16, 14
    else:
        raise CaptureError(f"link type {linktype}: only Ethernet and Linux cooked are read")
    record = struct.Struct(endian + "IIII")
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = record.unpack_from(data, offset)
        offset += 16
        frame = data[offset : offset + captured]
        offset += captured
        segment = _segment(frame, link_len, type_at, seconds + fraction * unit)
        if segment is not None:
            yield segment


def _segment(frame: bytes, link_len: int, type_at: int, at: float) -> Segment | None:
    if len(frame) < link_len + 20:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, type_at)
    if ethertype != _ETHERTYPE_IPV4:
        return None
    ip = link_len
    ihl = (frame[ip] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", frame, ip + 2)
    if frame[ip + 9] != 6 or len(frame) < ip + ihl + 20:  # not TCP, or cut short
        return None
    source_ip = socket.inet_ntoa(frame[ip + 12 : ip + 16])
    destination_ip = socket.inet_ntoa(frame[ip + 16 : ip + 20])
    tcp = ip + ihl
    source_port, destination_port, seq = struct.unpack_from("!HHI", frame, tcp)
    header = (frame[tcp + 12] >> 4) * 4
    payload = frame[tcp + header : ip + total]
    if not payload:
        return None
    return Segment(at, (source_ip, source_port), (destination_ip, destination_port), seq, payload)


@dataclass(eq=False)
class Stream:
    """One direction of a TCP connection, from its first segment with data: the bytes in order,
    and when the segment that carried each of them was written.

    A retransmitted segment adds only what it holds beyond the bytes already in; a segment
    beyond a hole (a packet the capture dropped) ends the stream there: nothing after it can
    be placed, so :attr:`broken` says the messages read stop short."""

    data: bytearray = field(default_factory=bytearray)
    #: (offset just past a segment's last byte, its time), in order.
    _ends: list[int] = field(default_factory=list)
    _times: list[float] = field(default_factory=list)
    _next_seq: int | None = None
    broken: bool = False

    def add(self, segment: Segment) -> None:
        if self.broken:
            return
        if self._next_seq is None:
            self._next_seq = segment.seq
        ahead = (segment.seq - self._next_seq) % 2**32
        if ahead >= 2**31:  # behind: a retransmission, wholly or partly of bytes already in
            payload = segment.payload[2**32 - ahead :]
        elif ahead:
            self.broken = True
            return
        else:
            payload = segment.payload
        if not payload:
            return
        self.data += payload
        self._next_seq = (self._next_seq + len(payload)) % 2**32
        self._ends.append(len(self.data))
        self._times.append(segment.at)

    def time_of(self, end: int) -> float:
        """When the byte just before offset ``end`` was written (so a message ending there was
        complete)."""
        return self._times[bisect.bisect_left(self._ends, end)]


def streams(segments: Iterator[Segment]) -> dict[tuple[tuple[str, int], tuple[str, int]], Stream]:
    """Every (source, destination) direction's :class:`Stream`."""
    out: dict[tuple[tuple[str, int], tuple[str, int]], Stream] = {}
    for segment in segments:
        key = (segment.source, segment.destination)
        stream = out.get(key)
        if stream is None:
            stream = out[key] = Stream()
        stream.add(segment)
    return out


@dataclass(frozen=True, slots=True)
class Message:
    """A websocket frame (its payload unmasked) or a TLS record (its size only: the payload is
    ciphertext), and the time its last byte was written."""

    at: float
    kind: str
    size: int
    payload: bytes = b""


def websocket_messages(stream: Stream) -> Iterator[Message]:
    """The frames of a websocket stream that starts with its HTTP upgrade (request or response),
    each unmasked; a frame cut off by the end of the capture is left out."""
    data = stream.data
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0 or not data.startswith((b"GET ", b"HTTP/1.1 101")):
        return
    offset = head_end + 4
    while offset + 2 <= len(data):
        first, second = data[offset], data[offset + 1]
        length, at = second & 0x7F, offset + 2
        if length == 126:
            if at + 2 > len(data):
                return
            (length,) = struct.unpack_from("!H", data, at)
            at += 2
        elif length == 127:
            if at + 8 > len(data):
                return
            (length,) = struct.unpack_from("!Q", data, at)
            at += 8
        mask = b""
        if second & 0x80:
            mask = bytes(data[at : at + 4])
            at += 4
        end = at + length
        if end > len(data):
            return
        payload = bytes(data[at:end])
        if mask:
            payload = apply_mask(payload, mask)
        kind = _WS_OPCODES.get(first & 0x0F, "other")
        yield Message(stream.time_of(end), kind, length, payload)
        offset = end


def tls_records(stream: Stream) -> Iterator[Message]:
    """The records of a TLS stream: ``kind`` is the content type (``application_data`` for
    every record once TLS 1.3 has shaken hands) and ``size`` the length of its body; a record
    cut off by the capture's end is left out."""
    data = stream.data
    offset = 0
    while offset + 5 <= len(data):
        content_type = data[offset]
        (length,) = struct.unpack_from("!H", data, offset + 3)
        end = offset + 5 + length
        if end > len(data):
            return
        kind = _TLS_TYPES.get(content_type, str(content_type))
        yield Message(stream.time_of(end), kind, length)
        offset = end


#: A media message's μ-law payload (Twilio's and Telnyx's JSON), base64.
_MEDIA_PAYLOAD = re.compile(rb'"payload":\s*"([A-Za-z0-9+/=]*)"')
#: A G.711 frame: 20 ms at 8 kHz, a byte a sample.
FRAME_S = 0.02
FRAME_BYTES = 160


def media_frames(message: bytes) -> int:
    """The 20 ms frames of G.711 in a carrier media message (its base64 payload's size)."""
    found = _MEDIA_PAYLOAD.search(message)
    if found is None:
        return 0
    encoded = found.group(1)
    size = len(encoded) * 3 // 4 - len(encoded) + len(encoded.rstrip(b"="))
    return round(size / FRAME_BYTES)


def playback_holes(media: list[tuple[float, float]]) -> int:
    """Frames of silence a carrier would play inside an answer, had it started each media
    message (its time, its frames) when it left the gateway, or when the one before it ended:
    gaps of up to 100 ms between one message's end and the next one's start (a longer gap is
    the pause between two answers)."""
    holes = 0
    play_end = float("-inf")
    for at, frames in media:
        gap = at - play_end
        if 0 < gap <= 5 * FRAME_S + 1e-9:
            holes += math.ceil(gap / FRAME_S - 1e-6)
        play_end = max(play_end, at) + frames * FRAME_S
    return holes


def answer_latencies(
    starts: list[float], model_records: list[float], media: list[float]
) -> list[tuple[float, float]]:
    """(when, ms) from each answer's first record leaving the model to its first media
    message leaving the gateway. ``starts``: the model's own stamps of each answer's first
    chunk, taken just before it wrote it, so its record is the first on the wire at or after
    the stamp; the answer's first media is the first after that record with none in the
    0.3 s before it (answers are apart; the last one's audio is long gone)."""
    out: list[tuple[float, float]] = []
    for start in starts:
        k = bisect.bisect_left(model_records, start)
        if k == len(model_records):
            continue
        left = model_records[k]
        j = bisect.bisect_left(media, left)
        if j < len(media) and (j == 0 or media[j - 1] < left - 0.3):
            out.append((left, (media[j] - left) * 1000))
    return out


_STREAM_SID = re.compile(rb'"streamSid":\s*"([^"]+)"')
_MEDIA_EVENT = re.compile(rb'"event":\s*"media"')
_HOST = "127.0.0.1"


class Traffic:
    """A capture of a gateway's loopback traffic, read for what a load benchmark pairs: per
    call, the caller's media messages in and the gateway's out (the carrier connection told by
    the ``streamSid`` of the gateway's messages), and per Live connection (told by the client
    port the simulator saw) the gateway's audio frames out and the simulator's records in.
    Times are on the monotonic clock: the capture's less ``offset``."""

    def __init__(self, capture: bytes, gateway_port: int, model_port: int, offset: float):
        self.flows = streams(packets(capture))
        self.broken = sum(1 for stream in self.flows.values() if stream.broken)
        self._gateway_port, self._model_port, self._offset = gateway_port, model_port, offset
        self._carrier: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {}
        for key, stream in self.flows.items():
            if key[0][1] != gateway_port:
                continue
            for message in websocket_messages(stream):
                found = _STREAM_SID.search(message.payload)
                if found:
                    self._carrier[found.group(1).decode()] = key
                    break
        self._to_model: dict[int, list[Message]] = {}
        sizes: Counter[int] = Counter()
        for (source, destination), stream in self.flows.items():
            if destination[1] == model_port:
                records = [r for r in tls_records(stream) if r.kind == "application_data"]
                self._to_model[source[1]] = records
                sizes.update(r.size for r in records)
        #: The size of a caller frame's record to the model: most of them are (its messages
        #: are of one size, base64 of 640 bytes of PCM).
        self.audio_size = sizes.most_common(1)[0][0] if sizes else -1

    def has_call(self, stream_sid: str) -> bool:
        return stream_sid in self._carrier

    def caller_frames(self, stream_sid: str) -> list[float]:
        """When each of the caller's media messages reached the gateway."""
        gateway, caller = self._carrier[stream_sid]
        stream = self.flows.get((caller, gateway))
        if stream is None:
            return []
        return [m.at - self._offset for m in websocket_messages(stream)
                if _MEDIA_EVENT.search(m.payload)]  # fmt: skip

    def gateway_media(self, stream_sid: str) -> list[tuple[float, int]]:
        """When each media message left the gateway for the caller, and its 20 ms frames."""
        stream = self.flows[self._carrier[stream_sid]]
        return [(m.at - self._offset, media_frames(m.payload)) for m in websocket_messages(stream)
                if _MEDIA_EVENT.search(m.payload)]  # fmt: skip

    def model_frames(self, client_ports: list[int | None]) -> list[float]:
        """When each caller frame left the gateway for the model, over these connections in
        turn (their audio records, in order)."""
        records = [m for port in client_ports for m in self._to_model.get(port or -1, [])]
        return [m.at - self._offset for m in records if m.size == self.audio_size]

    def model_records(self, client_ports: list[int | None]) -> list[float]:
        """When each of the model's records left it for the gateway, on these connections."""
        times: list[float] = []
        for port in client_ports:
            stream = self.flows.get(((_HOST, self._model_port), (_HOST, port or -1)))
            if stream is not None:
                records = [m for m in tls_records(stream) if m.kind == "application_data"]
                times += [m.at - self._offset for m in records]
        return sorted(times)


# ---------------------------------------------------------------------- capturing (I/O)


@dataclass(eq=False)
class Capture:
    """A running :func:`capturing`'s file, and what tcpdump said when it stopped."""

    path: Path
    received: int | None = None
    dropped: int | None = None
    stderr: str = ""
    #: :func:`monotonic_offset` as the capture started and as it stopped: they differ only if
    #: the wall clock was stepped meanwhile, and then no packet time can be trusted.
    offsets: tuple[float, float] = (0.0, 0.0)

    @property
    def offset(self) -> float:
        """The capture's clock less the monotonic one (see :attr:`offsets`)."""
        start, stop = self.offsets
        if abs(stop - start) > 0.001:
            raise CaptureError(
                f"the wall clock moved {(stop - start) * 1000:+.1f} ms during the capture: "
                "its packet times cannot be put on the monotonic clock; run it again"
            )
        return start


@contextlib.asynccontextmanager
async def capturing(path: Path, ports: list[int], cpus: set[int]) -> AsyncIterator[Capture]:
    """``tcpdump`` on the loopback for the block: the TCP segments with data to or from
    ``ports``, whole, with nanosecond kernel timestamps, written to ``path``; run on ``cpus``
    (the load generators': the capture's copying is then theirs, except the kernel's tap of
    each packet, done in the writer's system call). Needs root (or CAP_NET_RAW) and tcpdump
    (Debian: ``apt-get install tcpdump``)."""
    if shutil.which("tcpdump") is None:
        raise CaptureError("--wire needs tcpdump (Debian: apt-get install tcpdump) and root")
    with_data = "(((ip[2:2] - ((ip[0] & 0xf) << 2)) - ((tcp[12] & 0xf0) >> 2)) != 0)"
    where = " or ".join(f"port {port}" for port in ports)
    process = await asyncio.create_subprocess_exec(
        "tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "262144",
        "--time-stamp-precision=nano", "-w", str(path), f"tcp and ({where}) and {with_data}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    assert process.stderr is not None
    capture = Capture(path)
    started = monotonic_offset()
    first = await asyncio.wait_for(process.stderr.readline(), 10)
    if b"listening on" not in first:
        await process.wait()
        raise CaptureError(f"tcpdump did not start: {first.decode(errors='replace').strip()}")
    try:
        yield capture
    finally:
        process.send_signal(signal.SIGINT)
        rest = await process.stderr.read()
        await process.wait()
        capture.stderr = rest.decode(errors="replace")
        capture.offsets = (started, monotonic_offset())
        for line in capture.stderr.splitlines():
            count, _, what = line.partition(" packets ")
            if count.strip().isdigit():
                if what.startswith("received by filter"):
                    capture.received = int(count)
                elif what.startswith("dropped by kernel"):
                    capture.dropped = int(count)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory for a capture, in memory where there is a tmpfs (``/dev/shm``):
    writing it to disk would be work on the machine that no load generator accounts for."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as where:
        yield Path(where)


def monotonic_offset() -> float:
    """The capture's clock (CLOCK_REALTIME) less CLOCK_MONOTONIC, the load generators' clock:
    the closest of a few readings. Both advance alike (NTP slews both); only a step of the
    wall clock during a run would move it."""
    best: tuple[float, float] | None = None
    for _ in range(20):
        before = time.monotonic()
        real = time.time()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, real - (before + after) / 2)
    assert best is not None
    return best[1]
