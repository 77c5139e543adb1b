"""The gateway's own websocket frame cutting, next to ``websockets``' sans-I/O parser.

Both of the gateway's frame cutters (the carriers' media frames in :mod:`gateway.connections`,
the model's messages in :mod:`gateway.model.websocket`) take whole frames out of a read only
while ``websockets`` is not in the middle of one (:func:`between_frames`): from the first byte
it has seen of a frame, every byte is its own. They cut each frame in C
(:mod:`gateway.mediaplane`), whose Python forms read its header with :func:`frame_bounds`.
"""

from __future__ import annotations

from typing import Any


def between_frames(protocol: Any) -> bool:
    """Whether ``protocol``'s parser (a ``websockets.protocol.Protocol``) waits for the first
    byte of a frame, with nothing buffered, no fragmented message under way and no extension.

    Between frames the parser waits in ``reader.at_eof()`` (``websockets`` 13-17), at the end
    of its chain of ``yield from``; inside a frame it waits in ``Frame.parse``. Any other shape
    reads as "not between frames", which leaves every byte to ``websockets``.
    """
    if protocol.extensions or protocol.current_size is not None or protocol.reader.buffer:
        return False
    waiting = protocol.parser
    while (inner := getattr(waiting, "gi_yieldfrom", None)) is not None:
        waiting = inner
    return waiting is not protocol.parser and getattr(waiting, "__name__", None) == "at_eof"


def frame_bounds(
    data: bytes | bytearray, at: int, *, masked: bool, limit: int | None
) -> tuple[int, int] | None:
    """Where the payload of the frame starting at ``data[at]`` starts and the frame ends, read
    from its header (RFC 6455 5.2; the first byte is the caller's to judge).

    ``end > len(data)`` when the frame, or its header, is cut off by the end of ``data``. None
    for a frame not to cut: masked the other way than ``masked`` says (the side reading it
    must fail the connection) or with a payload longer than ``limit``. When ``masked``, the
    four bytes before the payload are its mask.
    """
    size = len(data)
    if size - at < 2:
        return at + 2, at + 2
    second = data[at + 1]
    if (second & 0x80) != (0x80 if masked else 0):
        return None
    length, header = second & 0x7F, 2
    if length == 126:
        header = 4
        if size - at < header:
            return at + header, at + header
        length = (data[at + 2] << 8) | data[at + 3]
    elif length == 127:
        header = 10
        if size - at < header:
            return at + header, at + header
        length = int.from_bytes(data[at + 2 : at + 10], "big")
    if limit is not None and length > limit:
        return None
    start = at + header + (4 if masked else 0)
    return start, start + length


def frame_header(first: int, length: int, *, masked: bool) -> bytes:
    """The header of a frame (RFC 6455 5.2) whose first byte is ``first`` (FIN and the opcode)
    with a payload of ``length`` bytes, the mask bit set when ``masked`` (its key follows)."""
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes((first, bit | length))
    if length < 65536:
        return bytes((first, bit | 126)) + length.to_bytes(2, "big")
    return bytes((first, bit | 127)) + length.to_bytes(8, "big")
