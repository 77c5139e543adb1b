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
from peer_load import _tree_cpu_s, _tree_rss_mb  # the process tree: master and workers

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            rss = _tree_rss_mb(proc.pid)
            before = _tree_cpu_s(proc.pid)
            time.sleep(idle_s)
            idle_cpu = (_tree_cpu_s(proc.pid) - before) / idle_s * 100
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
