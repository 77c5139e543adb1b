"""Measuring a tone burst that went through the whole gateway: how long it was audible, and its
steady middle (where pitch and level are measured without fades and filter transients)."""

from __future__ import annotations

from gateway.audio.analysis import rms_dbfs


def _loud_windows(pcm: bytes, rate: int, floor_dbfs: float) -> list[int]:
    """Byte offsets of the 10 ms windows of PCM16 louder than ``floor_dbfs``."""
    window = rate // 100 * 2
    return [
        i
        for i in range(0, len(pcm) - window + 1, window)
        if rms_dbfs(pcm[i : i + window]) > floor_dbfs
    ]


def audible_s(pcm: bytes, rate: int, floor_dbfs: float = -40.0) -> float:
    """Total duration of the 10 ms windows above the floor."""
    return 0.010 * len(_loud_windows(pcm, rate, floor_dbfs))


def steady_part(pcm: bytes, rate: int) -> bytes:
    """The loud part of a burst, minus 100 ms at each edge (fades, filter transients)."""
    loud = _loud_windows(pcm, rate, -40.0)
    assert loud, "no audio at all"
    start, end = loud[0] + rate // 10 * 2, loud[-1] - rate // 10 * 2
    assert end > start, "burst too short"
    return pcm[start:end]
