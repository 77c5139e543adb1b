"""A call's frame counts reach the process metrics in batches, and in full by its end."""

from __future__ import annotations

from gateway.call.stats import FRAMES_PER_METRIC_UPDATE, CallStats
from gateway.metrics import Metrics


def _frames(metrics: Metrics, direction: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_audio_frames_total", {"direction": direction}
    )
    return value or 0.0


def test_frame_counts_are_batched_and_complete_at_the_end_of_the_call() -> None:
    metrics = Metrics()
    stats = CallStats(metrics)
    stats.call_began()
    for _ in range(FRAMES_PER_METRIC_UPDATE - 1):
        stats.frame_admitted()
    stats.frames_out(FRAMES_PER_METRIC_UPDATE - 2)
    assert _frames(metrics, "in") == 0  # under a second of audio: not yet reported
    stats.frame_admitted()
    assert _frames(metrics, "in") == FRAMES_PER_METRIC_UPDATE
    assert _frames(metrics, "out") == FRAMES_PER_METRIC_UPDATE - 2  # reported together
    stats.frames_out(5)
    assert _frames(metrics, "out") == FRAMES_PER_METRIC_UPDATE - 2
    for _ in range(7):
        stats.frame_admitted()
    stats.frames_out(1)
    stats.call_ended(
        "caller_hung_up", began=True, playout=None, model_audio_dropped_ms=0, budget=None
    )
    assert _frames(metrics, "in") == FRAMES_PER_METRIC_UPDATE + 7
    assert _frames(metrics, "out") == FRAMES_PER_METRIC_UPDATE + 4
