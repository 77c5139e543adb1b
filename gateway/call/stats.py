"""What a call counts: its own tallies, reported in ``call.ended``, and the process metrics.

The bridge says once what happened ("a barge-in dropped 12 frames"); this object keeps the
call's tally and moves the Prometheus counters, so the two never disagree and the bridge does
not carry a ``metrics is not None`` test at every step. Metrics are optional (unit tests and
the demo run without a registry).
"""

from __future__ import annotations

from typing import Any

from gateway.audio.budget import RealTimeBudget
from gateway.audio.transcode import FRAME_MS
from gateway.call.playout import Playout
from gateway.metrics import Metrics

#: Frames counted by a call before they are added to ``gateway_audio_frames_total``: a second of
#: audio. Adding each frame took a lock fifty times a second per call (1 % of the gateway's CPU
#: under load, and a shared-memory write per frame with several workers); a scrape now lags a
#: call's live count by under a second, and the end of a call adds the rest.
FRAMES_PER_METRIC_UPDATE = 50

#: End reasons where the caller is already gone, so there is nothing to hang up.
CALLER_ENDED = frozenset({"caller_hung_up", "caller_disconnected"})
#: End reasons where our side ended the call on purpose: the agent (``end_call``, or a quiet
#: line it said goodbye to), or an operator (the console's end-call button). The carrier is
#: asked to hang up, so nothing placed after ``</Connect>`` plays.
AGENT_ENDED = frozenset({"agent_ended", "idle_ended", "operator_ended"})
#: End reasons where the model is gone for good: the active agent's fallback runs.
MODEL_FAILED = frozenset({"model_ended", "model_unavailable"})


def outcome(end_reason: str) -> str:
    """The ``gateway_calls_total{outcome}`` label for an end reason (a small, fixed set)."""
    if end_reason in CALLER_ENDED or end_reason in AGENT_ENDED:
        return "completed"
    if end_reason == "transferred":
        return "transferred"
    if end_reason in MODEL_FAILED:
        return "model_failed"
    if end_reason in (
        "idle_timeout", "max_duration", "drained", "unauthorized", "protocol_error",
        "rejected_capacity",
    ):  # fmt: skip
        return end_reason
    if end_reason in ("no_start", "caller_disconnected_before_start"):
        return "abandoned"
    return "error"


class CallStats:
    """One call's tallies and the process metrics they feed."""

    __slots__ = (
        "_frames_in",
        "_frames_out",
        "_metrics",
        "_unreported_in",
        "_unreported_out",
        "audio_ahead",
        "bad_messages",
        "barge_ins",
        "frames_in",
        "frames_in_lane",
        "handoffs",
        "reconnects",
    )

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.bad_messages = 0
        #: Caller media messages received, whether or not the real-time budget admitted them.
        self.frames_in = 0
        #: Of those, the frames the compiled lane took (``gateway.call.lane``).
        self.frames_in_lane = 0
        #: Whether caller audio ever ran ahead of real time (and some was dropped).
        self.audio_ahead = False
        self.handoffs = 0
        self.reconnects = 0
        self.barge_ins = 0
        self._metrics = metrics
        self._frames_in = metrics.audio_frames.labels("in") if metrics else None
        self._frames_out = metrics.audio_frames.labels("out") if metrics else None
        self._unreported_in = 0
        self._unreported_out = 0

    def error(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.errors.labels(kind).inc()

    def call_began(self) -> None:
        if self._metrics is not None:
            self._metrics.active_calls.inc()

    def frame_admitted(self) -> None:
        """A caller frame within the real-time budget goes up to the model."""
        self.frames_admitted(1)

    def frames_admitted(self, count: int) -> None:
        """:meth:`frame_admitted` of ``count`` frames (the compiled lane's, as it settles)."""
        self._unreported_in += count
        if self._unreported_in >= FRAMES_PER_METRIC_UPDATE:
            self._report_frames()

    def frames_out(self, count: int) -> None:
        """Agent audio queued for the carrier (the hot path: keep it cheap)."""
        self._unreported_out += count
        if self._unreported_out >= FRAMES_PER_METRIC_UPDATE:
            self._report_frames()

    def _report_frames(self) -> None:
        if self._frames_in is not None and self._unreported_in:
            self._frames_in.inc(self._unreported_in)
        if self._frames_out is not None and self._unreported_out:
            self._frames_out.inc(self._unreported_out)
        self._unreported_in = self._unreported_out = 0

    def bad_message(self) -> int:
        """Count a dropped carrier message; returns how many the call has sent."""
        self.bad_messages += 1
        self.error("bad_message")
        return self.bad_messages

    def audio_ran_ahead(self) -> bool:
        """Caller audio beyond real time was dropped; True the first time (to say so once)."""
        if self.audio_ahead:
            return False
        self.audio_ahead = True
        self.error("caller_audio_ahead")
        return True

    def barge_in(self, frames_dropped: int) -> None:
        self.barge_ins += 1
        if self._metrics is not None:
            self._metrics.dropped_frames.labels("barge_in").inc(frames_dropped)

    def reconnected(self, reason: str) -> None:
        self.reconnects += 1
        if self._metrics is not None:
            self._metrics.live_reconnects.labels(reason).inc()

    def handed_off(self, elapsed_ms: float) -> None:
        self.handoffs += 1
        if self._metrics is not None:
            self._metrics.handoffs.inc()
            self._metrics.handoff_seconds.observe(elapsed_ms / 1000)

    def first_audio(self, latency_s: float) -> None:
        """The agent's first audio after a cue (connect, caller speech, handoff)."""
        if self._metrics is not None:
            self._metrics.first_audio_seconds.observe(latency_s)

    def call_ended(
        self,
        end_reason: str,
        *,
        began: bool,
        playout: Playout | None,
        model_audio_dropped_ms: float,
        budget: RealTimeBudget | None,
    ) -> dict[str, Any]:
        """Count the call's end; returns its tallies for the ``call.ended`` event.

        ``began``: the stream became a call (it was counted active); ``model_audio_dropped_ms``
        is caller audio the Live session's replay bound pushed out.
        """
        caller_dropped_s = budget.dropped_s if budget is not None else 0.0
        self._report_frames()
        metrics = self._metrics
        if metrics is not None:
            if began:
                metrics.active_calls.dec()
            metrics.calls.labels(outcome(end_reason)).inc()
            if playout is not None and playout.frames_overflowed:
                metrics.dropped_frames.labels("overflow").inc(playout.frames_overflowed)
            if model_audio_dropped_ms:
                frames = int(model_audio_dropped_ms // FRAME_MS)
                metrics.dropped_frames.labels("reconnect_buffer").inc(frames)
            if caller_dropped_s:
                metrics.caller_audio_dropped_seconds.inc(caller_dropped_s)
        return {
            "handoffs": self.handoffs,
            "reconnects": self.reconnects,
            "barge_ins": self.barge_ins,
            "bad_messages": self.bad_messages,
            "frames_in": self.frames_in,
            "frames_in_lane": self.frames_in_lane,
            "frames_out": playout.frames_sent if playout else 0,
            "frames_dropped": playout.frames_dropped if playout else 0,
            "audio_dropped_ms": round(model_audio_dropped_ms),
            "caller_audio_dropped_s": round(caller_dropped_s, 3),
        }
