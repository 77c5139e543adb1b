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
    """The loud part of a burst, minus 100 ms at each edge (fades, filter transients).

    Silent 10 ms windows inside the burst are left out. A heard timeline is a caller's: when the
    gateway's frames arrive late, it plays silence meanwhile, as a carrier does. On a loaded test
    machine the whole process (gateway, simulated model and caller) can stall for longer than the
    playout lead, and the burst then has a gap of whole 20 ms ticks. The burst's level is a
    property of the sound, not of the machine's scheduling: measured across a 0.3 s gap, a -12
    dBFS tone read -21 dBFS. Removing whole ticks of inserted silence gives back the sound as
    sent, phase included (windows and ticks both start at the timeline's start). Lost audio is
    not hidden by this: ``audible_s`` still counts it.
    """
    window = rate // 100 * 2
    loud = _loud_windows(pcm, rate, -40.0)
    assert loud, "no audio at all"
    joined = b"".join(pcm[i : i + window] for i in loud)
    edge = rate // 10 * 2
    assert len(joined) > 2 * edge, "burst too short"
    return joined[edge:-edge]
