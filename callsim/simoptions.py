"""Timing and detection knobs of a simulated model, the part both model simulators
(``callsim.live``, ``callsim.realtime``) share: they pace speech and detect the caller's speech
the same way, so the same knobs mean the same thing and are checked once. Each simulator's own
options (``callsim.live.model.ModelOptions``, ``callsim.realtime.model.EngineOptions``) extend
this with what only its protocol has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimOptions:
    """Timing and detection knobs shared by every connection of a simulator."""

    speed: float = 2.0
    chunk_ms: int = 40
    think_ms: int = 150
    vad_threshold_dbfs: float = -40.0
    vad_start_ms: int = 100
    vad_silence_ms: int = 400

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError("speed must be positive")
        if not 0 < self.chunk_ms <= 5000:  # larger chunks approach the SDK's 1 MiB frame cap
            raise ValueError("chunk_ms must be within 1..5000")
        if self.think_ms < 0:
            raise ValueError("think_ms must not be negative")
        if self.vad_start_ms <= 0 or self.vad_silence_ms <= 0:
            raise ValueError("vad_start_ms and vad_silence_ms must be positive")
