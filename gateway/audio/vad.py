"""Is there a voice in this frame? A level gate, cheap enough for every 20 ms of every call.

The Live session needs to know whether the caller spoke since the newest resumption handle
(then a resume must replay it) and whether the caller is speaking now (then a planned move to
a new connection waits). A phone line never goes quiet: it carries comfort noise and line hiss
around -60 to -50 dBFS, while speech sits around -30 to -20 dBFS. A frame whose RMS level is
above ``THRESHOLD_DBFS`` counts as voiced; the hangover that bridges the gaps between words is
the caller's business (:class:`gateway.live.machine.Policy`).
"""

from __future__ import annotations

import warnings
from typing import Final

with warnings.catch_warnings():  # deprecated in 3.11-3.12; audioop-lts provides it on 3.13+
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

THRESHOLD_DBFS: Final = -45.0
_FULL_SCALE: Final = 32768.0
#: ``THRESHOLD_DBFS`` as ``audioop.rms``'s figure: a frame at or above it is voiced.
THRESHOLD_RMS: Final = int(_FULL_SCALE * 10 ** (THRESHOLD_DBFS / 20))


def voiced(pcm16: bytes) -> bool:
    """Whether a chunk of PCM16 little-endian audio is louder than line noise."""
    if len(pcm16) & 1:  # a half sample at the end (a copy only then: this runs every frame)
        pcm16 = pcm16[:-1]
    return len(pcm16) >= 2 and audioop.rms(pcm16, 2) >= THRESHOLD_RMS
