"""Prometheus metrics, one registry per app (so several gateways can share a test process).

Names are a contract with dashboards and alerts; keep them stable.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Seconds; handoffs are dominated by Gemini's session setup (~0.2–0.5 s on the real service).
_HANDOFF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
_FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("gateway_active_calls", "Calls being bridged now.", registry=r)
        self.calls = Counter(
            "gateway_calls", "Calls by how they ended or were refused.", ["outcome"], registry=r
        )
        self.handoffs = Counter("gateway_handoffs", "Completed agent handoffs.", registry=r)
        self.live_reconnects = Counter(
            "gateway_live_reconnects",
            "Gemini Live reconnections not asked for by a handoff.",
            ["reason"],
            registry=r,
        )
        self.handoff_seconds = Histogram(
            "gateway_handoff_seconds",
            "Time to replace the Live connection on a handoff.",
            buckets=_HANDOFF_BUCKETS,
            registry=r,
        )
        self.first_audio_seconds = Histogram(
            "gateway_first_audio_seconds",
            "From the cue for an agent turn (connect, caller speech, handoff) to its first audio.",
            buckets=_FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.audio_frames = Counter(
            "gateway_audio_frames", "20 ms audio frames bridged.", ["direction"], registry=r
        )
        self.dropped_frames = Counter(
            "gateway_dropped_frames", "Audio frames dropped, by cause.", ["reason"], registry=r
        )
        self.errors = Counter("gateway_errors", "Errors by kind.", ["kind"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
