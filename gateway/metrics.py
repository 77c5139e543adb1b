"""Prometheus metrics, one registry per app (so several gateways can share a test process).

Names are a contract with dashboards and alerts; keep them stable.

**Workers.** ``gateway serve --workers N`` runs N processes behind one port, and a scrape
reaches whichever one accepts it: each must answer for all. prometheus_client's multiprocess
mode does that: with ``PROMETHEUS_MULTIPROC_DIR`` set when it is first imported (the master
sets it for every worker), every value lives in a file of that directory, and
:meth:`Metrics.render` sums the files of every worker, the dead ones' counters included (the
master drops a dead worker's gauges). Two things differ there: a gauge says how its workers'
values combine (``livesum``: the calls, consoles and tasks of the workers alive), and a gauge
cannot be computed at scrape time in another process, so the two that were
(``gateway_event_loop_tasks``, ``gateway_python_traced_bytes``) are sampled by each worker's
lag probe instead. Without the variable (one process, the tests) nothing of this applies.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import os
import time
import tracemalloc
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

#: Seconds; handoffs are dominated by Gemini's session setup (~0.2–0.5 s on the real service).
_HANDOFF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
_FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: How often the event loop's responsiveness is sampled.
LAG_PROBE_S = 0.05
#: Workers sample their scrape-time gauges every this many lag probes (half a second).
GAUGE_EVERY_PROBES = 10


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


def multiprocess_dir() -> str | None:
    """The directory of every worker's values when prometheus_client runs in multiprocess mode
    (it chose so from ``PROMETHEUS_MULTIPROC_DIR`` when first imported), else None."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The gateway's metrics. ``since`` matters to a worker only: when the counts it reports
    began (its master's start; the workers' files live as long as the master), given as every
    aggregated series' ``_created``."""

    def __init__(self, *, since: float | None = None) -> None:
        self._since = time.time() if since is None else since
        self.registry = CollectorRegistry()
        r = self.registry
        #: Where every worker's values are (None: this process's registry is the whole story).
        self.shared_dir = multiprocess_dir()
        self.active_calls = Gauge(
            "gateway_active_calls", "Calls being bridged now.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.calls = Counter(
            "gateway_calls", "Calls by how they ended or were refused.", ["outcome"], registry=r
        )
        self.handoffs = Counter("gateway_handoffs", "Completed agent handoffs.", registry=r)
        self.console_watchers = Gauge(
            "gateway_console_watchers", "Consoles watching the live calls now.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
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
            "gateway_event_loop_tasks", "Asyncio tasks alive in the gateway's loop.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        #: Python heap in use, traced only when PYTHONTRACEMALLOC is set (a leak hunt): unlike
        #: RSS it falls back when objects are freed, so growth means something is kept. Each
        #: scrape then runs a full garbage collection first, so cycles awaiting collection are
        #: not mistaken for leaks; without tracing the gauge costs nothing and reads 0.
        self.traced_memory = Gauge(
            "gateway_python_traced_bytes",
            "Python memory allocated now (0 unless PYTHONTRACEMALLOC is set).",
            registry=r,
            multiprocess_mode="livesum",
        )
        if self.shared_dir is None:  # computed at each scrape (else: see _sample_gauges)
            self.event_loop_tasks.set_function(_task_count)
            self.traced_memory.set_function(_traced_bytes)

        self.event_loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late a timer fires on the event loop: audio waits this long on a busy loop.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )

    async def watch_event_loop_lag(self) -> None:
        """Sample loop lag forever (cancel to stop): a 20 Hz timer's overshoot. A worker also
        samples its scrape-time gauges here, for the scrapes other workers answer."""
        loop = asyncio.get_running_loop()
        probes = 0
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.event_loop_lag.observe(max(0.0, loop.time() - before - LAG_PROBE_S))
            probes += 1
            if self.shared_dir is not None and probes % GAUGE_EVERY_PROBES == 0:
                self._sample_gauges()

    def _sample_gauges(self) -> None:
        self.event_loop_tasks.set(_task_count())
        self.traced_memory.set(_traced_bytes())

    def render(self) -> bytes:
        """The Prometheus text: this process's metrics, or, in a worker, every worker's."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        self._sample_gauges()  # this worker's own, fresh
        return generate_latest(_AcrossWorkers(self.registry, self.shared_dir, self._since))


class _AcrossWorkers:
    """A collector of every worker's values (the files in ``directory``), with what one
    process would show: the families of this process's registry, in its order (a family no
    worker has a value for yet, such as a labelled counter before its first event, is still
    announced), and each counter's and histogram's ``_created`` series, which the files do not
    keep (``since``)."""

    def __init__(self, own: CollectorRegistry, directory: str, since: float) -> None:
        self._own = own
        self._directory = directory
        self._since = since

    def collect(self) -> Iterator[Metric]:
        files = glob.glob(os.path.join(self._directory, "*.db"))
        merged = {m.name: m for m in MultiProcessCollector.merge(files)}  # type: ignore[no-untyped-call]
        for family in self._own.collect():
            found = merged.pop(family.name, None)
            if found is None:
                yield Metric(family.name, family.documentation, family.type)
                continue
            counted = {"counter": "_total", "histogram": "_count"}.get(found.type)
            if counted is not None:
                found.samples += [
                    Sample(found.name + "_created", s.labels, self._since)
                    for s in found.samples
                    if s.name == found.name + counted
                ]
            yield found
        yield from merged.values()
