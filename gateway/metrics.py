"""Prometheus metrics, one registry per app (so several gateways can share a test process).

Names are a contract with dashboards and alerts; keep them stable.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Seconds; handoffs are dominated by Gemini's session setup (~0.2–0.5 s on the real service).
_HANDOFF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
_FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: How often the event loop's responsiveness is sampled.
LAG_PROBE_S = 0.05


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the loop (not how the app does it)
        return 0.0


def _traced_bytes() -> float:
    if not tracemalloc.is_tracing():
        return 0.0
    gc.collect()
    return float(tracemalloc.get_traced_memory()[0])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("gateway_active_calls", "Calls being bridged now.", registry=r)
        self.calls = Counter(
            "gateway_calls", "Calls by how they ended or were refused.", ["outcome"], registry=r
        )
        self.handoffs = Counter("gateway_handoffs", "Completed agent handoffs.", registry=r)
        self.console_watchers = Gauge(
            "gateway_console_watchers", "Consoles watching the live calls now.", registry=r
        )
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
        #: One count per POST of a finished call's record to CALL_RECORDS_URL: ``delivered``
        #: (2xx), ``retried`` (failed, tried again later) or ``abandoned`` (failed for 24 h).
        self.call_record_deliveries = Counter(
            "gateway_call_record_deliveries",
            "Call record deliveries to CALL_RECORDS_URL, by result.",
            ["result"],
            registry=r,
        )
        #: Re-reads of agents.yaml (SIGHUP, POST /admin/reload): ``error`` kept the old config.
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "agents.yaml reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):  # both series exist from the start, for rate() alerts
            self.config_reloads.labels(result)
        self.caller_audio_dropped_seconds = Counter(
            "gateway_caller_audio_dropped_seconds",
            "Caller audio dropped for arriving faster than real time (plus a 1 s allowance).",
            registry=r,
        )
        #: A leak detector: with no calls up, this returns to the same small number.
        self.event_loop_tasks = Gauge(
            "gateway_event_loop_tasks", "Asyncio tasks alive in the gateway's loop.", registry=r
        )
        self.event_loop_tasks.set_function(_task_count)
        #: Python heap in use, traced only when PYTHONTRACEMALLOC is set (a leak hunt): unlike
        #: RSS it falls back when objects are freed, so growth means something is kept. Each
        #: scrape then runs a full garbage collection first, so cycles awaiting collection are
        #: not mistaken for leaks; without tracing the gauge costs nothing and reads 0.
        self.traced_memory = Gauge(
            "gateway_python_traced_bytes",
            "Python memory allocated now (0 unless PYTHONTRACEMALLOC is set).",
            registry=r,
        )
        self.traced_memory.set_function(_traced_bytes)

        self.event_loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late a timer fires on the event loop: audio waits this long on a busy loop.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )

    async def watch_event_loop_lag(self) -> None:
        """Sample loop lag forever (cancel to stop): a 20 Hz timer's overshoot."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.event_loop_lag.observe(max(0.0, loop.time() - before - LAG_PROBE_S))

    def render(self) -> bytes:
        return generate_latest(self.registry)
