"""How many cores this process may use: the container's CPU quota, read from its cgroup.

``gateway serve`` starts one worker per core by default (``gateway.workers``). A container's
CPU limit is not its visible core count — Docker's ``--cpus 1.5`` and a Kubernetes CPU limit
leave every host core visible to ``os.cpu_count()`` and only throttle — so the quota is read
where the kernel keeps it: cgroup v2's ``cpu.max``, else v1's ``cpu.cfs_quota_us``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cpu_quota(cgroup_root: Path) -> float | None:
    """The CPU quota of the cgroup at ``cgroup_root``, in cores (1.5 for "150000 100000"), or
    None when there is none: cgroup v2's ``cpu.max``, else v1's ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` (at the root or in its ``cpu`` controller's directory)."""
    v2 = _read(cgroup_root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period)
    for directory in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root):
        quota_us = _read(directory / "cpu.cfs_quota_us")
        if quota_us is not None:
            return _ratio(quota_us, _read(directory / "cpu.cfs_period_us") or "")
    return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), cores: int | None = None) -> int:
    """How many workers ``gateway serve`` starts by default: the container's CPU quota rounded
    up, at most the cores this process may run on (``cores``; default: its affinity), at
    least 1. A container limited to 1.5 cores gets 2 workers: a worker is idle most of the
    time between audio frames, and the quota is a budget over 100 ms, not a core count."""
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max", or nothing
        return None
    return q / p if q > 0 and p > 0 else None
