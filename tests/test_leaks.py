"""Hundreds of calls hung up at random moments leave nothing behind in the gateway.

The gateway runs as its own process (``gateway serve``), against the Live simulator in another
process (``gateway simulator``), so its memory and tasks are measured alone. Callers hang up
(``stop``, a clean close, or a dropped connection) at a random point: during the webhook, the
greeting, a caller turn, a tool call or a handoff. Afterwards the gateway's event loop holds as
many tasks as before, and its Python heap (traced: PYTHONTRACEMALLOC, measured after a full
collection) is back to where it was. RSS is only reported: the allocator keeps a high-water mark
that depends on the random peak concurrency, not on leaks. With several workers (the default on
a machine with several cores) the tasks and the heap are every worker's, summed by the scrape.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.twilio import TwilioCaller
from gateway.cpus import available_cpus
from tests.test_cli import ROOT, _env, _free_port

CALLS = 200
AUTH_TOKEN = "leak-test-twilio-auth-token"
CONCURRENCY = 20


@asynccontextmanager
async def gateway_process(tmp: Path) -> AsyncIterator[tuple[str, int]]:
    """``gateway simulator`` + ``gateway serve`` as two processes; yields (url, gateway pid)."""
    (tmp / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    sim_port, port = _free_port(), _free_port()
    env = _env(LOG_LEVEL="warning")
    sim = subprocess.Popen(  # noqa: ASYNC220 -- started once, then only polled
        [sys.executable, "-m", "gateway", "simulator", "--port", str(sim_port),
         "--ca-file", str(tmp / "ca.pem")],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gw: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(verify=False) as http:
            await _until_up(http, f"https://127.0.0.1:{sim_port}/_sim/health", sim)
            gw = subprocess.Popen(  # noqa: ASYNC220 -- started once, then only polled
                [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**env, "GEMINI_API_KEY": "leak-test-key", "SSL_CERT_FILE": str(tmp / "ca.pem"),
                     "GEMINI_BASE_URL": f"https://127.0.0.1:{sim_port}", "CARRIERS": "twilio",
                     "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                     "MAX_CONCURRENT_CALLS": "500", "PYTHONTRACEMALLOC": "1"},
            )  # fmt: skip
            await _until_up(http, url + "/healthz", gw)
        yield url, gw.pid
    finally:
        for proc in (gw, sim):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


async def _until_up(http: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            if (await http.get(url)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def _rss_mb(pid: int) -> float:
    """The gateway's resident memory: the process's, and its workers' when it has several."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match
    workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(match.group(1)) / 1024 + sum(_rss_mb(int(child)) for child in workers)


async def _gauges(http: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(event-loop tasks, traced Python heap bytes) from the gateway's metrics."""
    text = (await http.get(url + "/metrics")).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("gateway_event_loop_tasks", "gateway_python_traced_bytes"):
            values[name] = float(value)
    return values["gateway_event_loop_tasks"], values["gateway_python_traced_bytes"]


async def _one_call(url: str, rng: random.Random) -> None:
    # Two short utterances: the default simulated agent answers the first and hands off on
    # the second, so random hang-up points land in every phase of a call.
    audio = render([Silence(0.2), Tone(300, 0.3), Silence(0.6), Tone(300, 0.3), Silence(2.0)])
    caller = TwilioCaller(url, audio=audio, linger_s=0.5, auth_token=AUTH_TOKEN,
                          hangup=rng.choice(["stop", "close", "drop"]))  # fmt: skip

    async def hang_up_later() -> None:
        await asyncio.sleep(rng.uniform(0.0, 3.5))
        caller.hangup()

    timer = asyncio.create_task(hang_up_later())
    try:
        await caller.run()
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)


async def _load(url: str, rng: random.Random, calls: int, concurrency: int = CONCURRENCY) -> None:
    pending: set[asyncio.Task[None]] = set()
    for _ in range(calls):
        if len(pending) >= concurrency:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.create_task(_one_call(url, rng)))
    await asyncio.gather(*pending)


async def _settled(http: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """Wait until the gateway has no call up; returns (tasks, traced heap) then."""
    for _ in range(100):
        if (await http.get(url + "/healthz")).json()["active_calls"] == 0:
            await asyncio.sleep(1.0)
            return await _gauges(http, url)
        await asyncio.sleep(0.1)
    raise AssertionError("calls still up")


async def test_random_hang_ups_leak_no_task_or_memory(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    async with gateway_process(tmp_path) as (url, pid), httpx.AsyncClient() as http:
        # Warm up caches, pools and lazy imports: in every worker, which each take a share.
        workers = available_cpus()
        await _load(url, rng, 2 * CONCURRENCY * workers, concurrency=CONCURRENCY * workers)
        tasks_before, heap_before = await _settled(http, url)
        rss_before = _rss_mb(pid)
        await _load(url, rng, CALLS)
        tasks_after, heap_after = await _settled(http, url)
        rss_after = _rss_mb(pid)
        metrics = (await http.get(url + "/metrics")).text
    completed = re.search(r'^gateway_calls_total\{outcome="completed"\} (\S+)', metrics, re.M)
    assert completed and float(completed.group(1)) >= CALLS * 0.9
    assert tasks_after == tasks_before
    assert heap_before > 0  # tracing is on
    growth_kb = (heap_after - heap_before) / 1024
    assert growth_kb < 1024, f"Python heap grew {growth_kb:.0f} KB over {CALLS} calls"
    # RSS keeps the allocator's high-water mark (inflated further by tracing): reported only.
    print(f"RSS {rss_before:.1f} -> {rss_after:.1f} MB, Python heap +{growth_kb:.0f} KB")
