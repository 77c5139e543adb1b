"""``websockets``' sans-I/O parser, seen from outside: whether it sits between two frames.

Both of the gateway's own frame cutters (the carriers' media frames in
:mod:`gateway.connections`, the model's messages in :mod:`gateway.model.websocket`) take whole
frames out of a read only while ``websockets`` is not in the middle of one: from the first
byte it has seen of a frame, every byte is its own.
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
