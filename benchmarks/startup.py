"""Start-up time and idle cost of `gateway serve`: until /healthz answers, then RSS and CPU idle.

Run by hand (not a test)::

    .venv/bin/python benchmarks/startup.py                      # this checkout, one process
    .venv/bin/python benchmarks/startup.py --workers 2          # master + 2 workers
    .venv/bin/python benchmarks/startup.py --gateway-root ../baseline

Each run starts the gateway from a temporary directory (the repository's agents.yaml, records in
SQLite there), times ``exec`` → the first 200 from ``/healthz`` (best and median of
``--runs``), then reads the RSS of the whole process tree and its CPU over ``--idle`` seconds
with no calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return pids


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _cpu_s(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def one_run(root: Path, workers: int, idle_s: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "agents.yaml", Path(tmp) / "agents.yaml")
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "PYTHONPATH": str(root),
            "GEMINI_API_KEY": "startup-key-0123456789",
            "ALLOW_UNSIGNED_WEBHOOKS": "true",
            "AGENTS_FILE": str(Path(tmp) / "agents.yaml"),
            "DATABASE_URL": f"sqlite:///{tmp}/calls.db",
            "LOG_LEVEL": "warning",
            "WORKERS": str(workers),
        }
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"the gateway exited ({proc.returncode})")
                time.sleep(0.02)
            ready_s = time.perf_counter() - started
            time.sleep(2.0)  # every worker up, start-up work done
            pids = _tree(proc.pid)
            rss = _rss_mb(pids)
            before = _cpu_s(pids)
            time.sleep(idle_s)
            idle_cpu = (_cpu_s(_tree(proc.pid)) - before) / idle_s * 100
            return ready_s, rss, idle_cpu
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway-root", default=str(ROOT))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    runs = [one_run(Path(args.gateway_root), args.workers, args.idle) for _ in range(args.runs)]
    ready = sorted(r[0] for r in runs)
    print(f"gateway: {args.gateway_root}, WORKERS={args.workers}, {args.runs} runs")
    print("| start-up to healthz s, best / median | RSS MB idle, median | idle CPU % of a core |")
    print("|---|---|---|")
    print(f"| {ready[0]:.2f} / {statistics.median(ready):.2f} "
          f"| {statistics.median(r[1] for r in runs):.0f} "
          f"| {statistics.median(r[2] for r in runs):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
