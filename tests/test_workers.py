"""``gateway serve --workers N``: several processes behind one port, as users run them.

A real ``gateway serve --workers 2 --simulator`` on a free port, real callers (``callsim``) over
real HTTP and websockets, its JSON log read as it is written (each worker's lines say
``worker``). Which worker accepts a connection is the kernel's choice; to make a test choose,
the other workers are stopped (SIGSTOP) while the connection is made, so only the chosen one
can accept it, and continued (SIGCONT) at once after. So a call's webhook and its stream are
put on different workers, a replayed token is sent to the worker that did not admit it, and a
scrape is answered by each worker in turn.

The pure parts (the CPU count from cgroup files, the shared stream claims) are plain function
calls on fake files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.result import CallEvent, CallResult
from callsim.callers.twilio import TwilioCaller
from gateway.aio import cancel_and_wait
from gateway.claims import SharedStreamLedger, prune_claims
from gateway.cpus import available_cpus, cpu_quota
from gateway.security import StreamGrant
from gateway.workers import restart_delay, shared_directory
from tests.test_cli import ROOT, _env, _free_port

WORKERS = 2
ADMIN = "admin-token-workers-0123456789abcdef"
#: The agent greets; the caller speaks once; about 3 s in all.
SHORT = render([Silence(1.2), Tone(300, 0.5), Silence(1.0)])
#: Just the greeting, heard: about 1.7 s.
TINY = render([Silence(1.5)])
#: Long enough for something to happen to the gateway while it runs (about 4.5 s).
LONG = render([Silence(1.5), Tone(300, 0.5), Silence(2.5)])


# --- the server ----------------------------------------------------------------------------------


class Served:
    """A ``gateway serve --workers 2 --simulator`` process and its log, read as it is written."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._stopped: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.events.append(event)

    def named(self, name: str, **match: object) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    def pids(self) -> dict[int, int]:
        """Each worker's pid now (a replacement's once it listens)."""
        return {e["worker"]: e["pid"] for e in self.named("gateway.listening")}

    def worker_of(self, event: str, call_id: str) -> list[int]:
        return [e["worker"] for e in self.named(event, call_id=call_id)]

    def only(self, index: int) -> None:
        """Let only worker ``index`` accept connections: stop the others until :meth:`resume`
        (and wait until they are stopped: a signal is delivered when the kernel gets to it)."""
        self.resume()
        for worker, pid in self.pids().items():
            if worker != index:
                os.kill(pid, signal.SIGSTOP)
                self._stopped.append(pid)
        deadline = time.monotonic() + 5
        while not all(_state(pid) in ("T", "") for pid in self._stopped):
            assert time.monotonic() < deadline, "a worker did not stop"
            time.sleep(0.001)

    def resume(self) -> None:
        while self._stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._stopped.pop(), signal.SIGCONT)

    async def until(self, predicate: Callable[[], object], within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not predicate():
            assert time.monotonic() < deadline, "not reached:\n" + "".join(self.lines[-30:])
            await asyncio.sleep(0.02)

    def through(self, index: int) -> httpx.AsyncClient:
        """A client whose first connection worker ``index`` accepts (call :meth:`resume`
        once it has answered)."""
        self.only(index)
        return httpx.AsyncClient(base_url=self.url, timeout=10)


def _state(pid: int) -> str:
    """The process's state letter (``T``: stopped), or "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


@contextlib.contextmanager
def serving(tmp: Path, **env: str) -> Iterator[Served]:
    """``gateway serve --workers 2 --simulator`` on a free port, up once every worker listens."""
    (tmp / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--workers", str(WORKERS),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp, env=_env(LOG_FORMAT="json", DATABASE_URL="", **env), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    served = Served(proc, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while len(served.pids()) < WORKERS:
            assert proc.poll() is None, "".join(served.lines)
            assert time.monotonic() < deadline, "workers did not come up:\n" + "".join(served.lines)
            time.sleep(0.05)
        yield served
    finally:
        served.resume()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        served._reader.join(5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("workers")
    with serving(tmp, DRAIN_TIMEOUT="20", ADMIN_API_TOKEN=ADMIN) as s:
        yield s


class SteeredCaller(TwilioCaller):
    """A Twilio call whose webhook only worker ``webhook_on`` can accept and whose stream only
    ``stream_on`` can (the others are stopped while each connection is made)."""

    def __init__(self, served: Served, webhook_on: int, stream_on: int, audio: bytes) -> None:
        self._served = served
        self._webhook_on, self._stream_on = webhook_on, stream_on
        self.opened = asyncio.Event()
        super().__init__(served.url, audio=audio, linger_s=0.2, on_event=self._seen)

    async def run(self) -> CallResult:
        try:
            return await super().run()
        finally:
            self._served.resume()

    async def _setup(self) -> str | None:
        self._served.only(self._webhook_on)
        try:
            return await super()._setup()
        finally:
            self._served.only(self._stream_on)  # the stream's connection is made next

    def _seen(self, event: CallEvent) -> None:
        if event.kind == "stream_open":
            self._served.resume()
            self.opened.set()


async def placed(caller: SteeredCaller) -> asyncio.Task[CallResult]:
    """Start ``caller``; return once its stream is open (so the next can be steered)."""
    task = asyncio.create_task(caller.run())
    waiting = asyncio.create_task(caller.opened.wait())
    await asyncio.wait({task, waiting}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    await cancel_and_wait(waiting)
    assert caller.opened.is_set(), (await task).summary()
    return task


def worked(result: CallResult) -> list[str]:
    """Why the call did not work as a caller expects (empty: it did)."""
    found = list(result.violations)
    if result.closed_by != "caller":
        found.append(f"ended by {result.closed_by} ({result.close_code} {result.close_reason})")
    if result.media_bytes_received < 4000:  # half a second of the agent's greeting
        found.append(f"heard only {result.media_bytes_received} bytes of agent audio")
    return found


def sample(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def scrape(served: Served, index: int) -> str:
    async with served.through(index) as http:
        try:
            response = await http.get("/metrics")
        finally:
            served.resume()
    assert response.status_code == 200
    return response.text


COMPLETED = 'gateway_calls_total{outcome="completed"}'


# --- calls across workers -----------------------------------------------------------------------


async def test_calls_land_on_each_worker_and_a_stream_is_bridged_where_its_webhook_was_not(
    served: Served,
) -> None:
    """Tokens are valid across workers: the webhook answered by one, the stream served by the
    other, both ways; calls the kernel places as it likes work alongside."""
    crossing = SteeredCaller(served, webhook_on=0, stream_on=1, audio=SHORT)
    back = SteeredCaller(served, webhook_on=1, stream_on=0, audio=SHORT)
    tasks = [await placed(crossing), await placed(back)]
    tasks += [asyncio.create_task(TwilioCaller(served.url, audio=SHORT, linger_s=0.2).run())
              for _ in range(2)]  # fmt: skip
    results = await asyncio.gather(*tasks)
    for result in results:
        assert worked(result) == [], result.summary()
    ids = [r.call_sid for r in results]
    await served.until(lambda: all(served.worker_of("call.ended", i) for i in ids))
    assert served.worker_of("twilio.voice", crossing.result.call_sid) == [0]
    assert served.worker_of("call.started", crossing.result.call_sid) == [1]
    assert served.worker_of("twilio.voice", back.result.call_sid) == [1]
    assert served.worker_of("call.started", back.result.call_sid) == [0]
    for call_id in ids:  # each half once, somewhere; the call ends where its stream ran
        assert len(served.worker_of("twilio.voice", call_id)) == 1
        assert served.worker_of("call.ended", call_id) == served.worker_of("call.started", call_id)
    # Each worker leads a session of its own: a terminal's Ctrl-C (SIGINT to the foreground
    # process group) reaches the master alone, which passes it on once: one drain, not two
    # signals, the second of which would end the calls at once.
    for pid in served.pids().values():
        assert os.getsid(pid) == pid != os.getsid(served.proc.pid)


async def test_any_worker_s_scrape_counts_the_calls_of_every_worker(served: Served) -> None:
    before = [await scrape(served, 0), await scrape(served, 1)]
    assert sample(before[0], COMPLETED) == sample(before[1], COMPLETED)
    callers = [SteeredCaller(served, n, n, audio=TINY) for n in range(WORKERS)]
    tasks = [await placed(caller) for caller in callers]
    ids = [caller.result.call_sid for caller in callers]
    await served.until(lambda: all(served.worker_of("call.started", i) for i in ids))
    during = await scrape(served, 0)
    results = await asyncio.gather(*tasks)
    assert [worked(r) for r in results] == [[], []]
    await served.until(lambda: all(served.worker_of("call.ended", i) for i in ids))
    after = [await scrape(served, 0), await scrape(served, 1)]
    # One call on each worker, and each worker answers for both.
    assert [served.worker_of("call.started", i) for i in ids] == [[0], [1]]
    assert sample(during, "gateway_active_calls") == 2
    for text in after:
        assert sample(text, COMPLETED) == sample(before[0], COMPLETED) + 2
        assert sample(text, "gateway_active_calls") == 0
        frames = 'gateway_audio_frames_total{direction="in"}'
        assert sample(text, frames) >= sample(before[0], frames) + 2 * 50  # 1 s each, 2 calls
        # The names and types of one process, the aggregate's _created series included.
        for line in ("# TYPE gateway_calls_total counter", "# TYPE gateway_active_calls gauge",
                     "# TYPE gateway_handoff_seconds histogram",
                     "# TYPE gateway_live_reconnects_total counter",
                     "# TYPE gateway_calls_created gauge"):  # fmt: skip
            assert line in text
        assert sample(text, "gateway_event_loop_tasks") > 0


async def test_a_token_used_on_one_worker_is_refused_by_the_other(served: Served) -> None:
    call = SteeredCaller(served, webhook_on=0, stream_on=0, audio=TINY)
    result = await (await placed(call))
    assert worked(result) == [], result.summary()
    assert result.twiml_stream_url is not None
    served.only(1)
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(result.twiml_stream_url, open_timeout=10):
                pass
        form = {"CallSid": result.call_sid, "From": "+14155550123", "To": "+18005550100"}
        async with httpx.AsyncClient(timeout=10) as http:
            webhook = await http.post(served.url + "/twilio/voice", data=form)
    finally:
        served.resume()
    assert refused.value.response.status_code == 403
    assert webhook.status_code == 409  # a replayed webhook: no fresh token either
    # The worker logs as it answers; its stderr is read a moment later.
    await served.until(
        lambda: served.named("twilio.webhook_replayed", worker=1, call_id=result.call_sid)
    )
    (stream,) = served.named("twilio.stream_refused", worker=1)
    assert stream["reason"] == "stream token already used"


async def test_a_reload_through_the_admin_api_reaches_every_worker(served: Served) -> None:
    """The request reaches one worker, which has the master pass SIGHUP to the others."""
    before = len(served.named("config.reloaded"))
    async with served.through(0) as http:
        try:
            answer = await http.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        finally:
            served.resume()
    assert answer.status_code == 200, answer.text
    await served.until(
        lambda: sorted(e["worker"] for e in served.named("config.reloaded")[before:]) == [0, 1]
    )


async def test_a_killed_worker_is_replaced_and_the_other_worker_s_call_goes_on(
    served: Served,
) -> None:
    victim = served.pids()[1]
    call = SteeredCaller(served, webhook_on=0, stream_on=0, audio=SHORT)
    task = await placed(call)
    await asyncio.sleep(0.5)
    counted = sample(await scrape(served, 0), COMPLETED)
    os.kill(victim, signal.SIGKILL)
    await served.until(lambda: served.pids()[1] != victim, within_s=15)
    result = await task
    assert worked(result) == [], result.summary()
    (exited,) = served.named("gateway.worker_exited", pid=victim)
    assert exited["signal"] == "SIGKILL" and exited["level"] == "warning"
    (restarted,) = served.named("gateway.worker_restarted", replaced=victim)
    assert restarted["worker"] == 1 and restarted["pid"] == served.pids()[1]
    # The replacement serves calls; what the dead worker counted still counts.
    again = SteeredCaller(served, webhook_on=1, stream_on=1, audio=TINY)
    assert worked(await (await placed(again))) == []
    await served.until(lambda: served.worker_of("call.ended", again.result.call_sid))
    assert served.worker_of("call.started", again.result.call_sid) == [1]
    assert sample(await scrape(served, 1), COMPLETED) == counted + 2


async def test_sigterm_drains_the_calls_of_every_worker_and_the_master_exits_0(
    served: Served,
) -> None:
    """(Last: it stops the module's server.)"""
    calls = [SteeredCaller(served, n, n, audio=LONG) for n in range(WORKERS)]
    tasks = [await placed(caller) for caller in calls]
    served.proc.send_signal(signal.SIGTERM)
    await served.until(lambda: len(served.named("gateway.draining")) == WORKERS)
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        ready = await http.get("/readyz")
        busy = await http.post("/twilio/voice", data={"CallSid": "CA" + "3" * 32})
    results = await asyncio.gather(*tasks)
    code = await asyncio.to_thread(served.proc.wait, 30)
    assert ready.status_code == 503
    assert "<Connect>" not in busy.text and "<Say>" in busy.text
    assert [worked(r) for r in results] == [[], []]
    assert code == 0
    draining = served.named("gateway.draining")
    assert sorted((e["worker"], e["active_calls"]) for e in draining) == [(0, 1), (1, 1)]
    exits = served.named("gateway.worker_exited", exit_code=0)
    assert sorted(e["worker"] for e in exits) == [0, 1]
    assert not served.named("gateway.stopping_now")


def test_when_no_worker_can_start_the_master_says_why_once_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--workers", "2",
         "--port", str(_free_port())],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=_env(DATABASE_URL=f"sqlite:///{tmp_path}/no/such/dir/calls.db"),
    )  # fmt: skip
    error = "error: DATABASE_URL: the call records database cannot be used: "
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == error + "unable to open database file"
    assert done.stderr.count(error) == 1 and "Traceback" not in done.stderr


def test_workers_must_be_a_whole_number_of_at_least_one(tmp_path: Path) -> None:
    for bad in ("0", "two"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--workers", bad],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
        assert done.returncode == 2 and "argument --workers:" in done.stderr


#: A stand-in worker: accepts on the master's socket and answers with what it was given.
FAKE_WORKER = """
import hashlib, os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sock = socket.socket(fileno=int(os.environ["CALLBRIDGE_LISTEN_FD"]))
os.write(int(os.environ["CALLBRIDGE_STATUS_FD"]), b"ready\\n")
secret = hashlib.sha256(os.environ["GATEWAY_SECRET"].encode()).hexdigest()
said = [os.getpid(), os.environ["CALLBRIDGE_WORKER"], secret, os.environ["MAX_CONCURRENT_CALLS"]]
while True:
    conn, _ = sock.accept()
    conn.sendall(" ".join(map(str, said)).encode())
    conn.close()
"""


async def test_the_master_binds_port_0_once_and_gives_every_worker_the_same_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The master alone, with stand-in workers: port 0 is bound once and shared; the secret it
    makes is the same in every worker and on no command line; the limits are shared out."""
    from gateway.settings import load_settings
    from gateway.workers import Master

    monkeypatch.delenv("GATEWAY_SECRET", raising=False)
    settings = load_settings(_env_file=None, max_concurrent_calls=61)
    master = Master(settings, host="127.0.0.1", port=0, count=2,
                    command=[sys.executable, "-c", FAKE_WORKER])  # fmt: skip
    running = asyncio.create_task(master.run())
    try:
        while not master.url or len(master._workers) < 2:
            assert not running.done(), running.result()
            await asyncio.sleep(0.01)
        port = int(master.url.rsplit(":", 1)[1])
        answers = set()
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers.add(tuple((await reader.read()).decode().split()))
            writer.close()
        secret = master._env["GATEWAY_SECRET"].encode()
        for worker in master._workers.values():
            cmdline = await asyncio.to_thread(Path(f"/proc/{worker.pid}/cmdline").read_bytes)
            assert secret not in cmdline
        assert master._any_ready
    finally:
        master._stop(signal.SIGTERM)
        code = await running
    pids = {str(w.pid) for w in master._workers.values()}
    assert port > 0 and code == 0
    assert {a[0] for a in answers} <= pids and {a[1] for a in answers} <= {"0", "1"}
    assert len({a[2] for a in answers}) == 1  # one secret
    assert {a[3] for a in answers} == {"31"}  # 61 calls over 2 workers, rounded up
    assert not Path(master._env["CALLBRIDGE_CLAIMS_DIR"]).parent.exists()  # removed on exit


# --- how many workers ---------------------------------------------------------------------------


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


@pytest.mark.parametrize(
    ("files", "quota", "workers"),
    [
        ({"cpu.max": "max 100000"}, None, 8),  # cgroup v2, no quota: the cores
        ({"cpu.max": "150000 100000"}, 1.5, 2),  # 1.5 cores: 2 workers
        ({"cpu.max": "50000 100000"}, 0.5, 1),
        ({"cpu.max": "400000 50000"}, 8.0, 8),
        ({"cpu.max": "2000000 100000"}, 20.0, 8),  # more quota than cores: the cores
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None, 8),  # v1
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3.0, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
         2.5, 3),
        ({}, None, 8),  # no cgroup files at all
    ],
)  # fmt: skip
def test_workers_default_to_the_cpu_quota_rounded_up_within_the_cores(
    tmp_path: Path, files: dict[str, str], quota: float | None, workers: int
) -> None:
    root = _cgroup(tmp_path, files)
    assert cpu_quota(root) == quota
    assert available_cpus(root, cores=8) == workers
    assert available_cpus(root, cores=1) == 1


def test_this_machine_gets_at_least_one_worker() -> None:
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_a_worker_dying_young_is_restarted_later_each_time_one_that_ran_at_once() -> None:
    waits, delay = [], 0.0
    for _ in range(7):
        delay = restart_delay(delay, lived_s=0.5)
        waits.append(delay)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(30.0, lived_s=9.9) == 30.0
    assert restart_delay(30.0, lived_s=10.0) == 0.0  # it ran: replaced now, and the count resets
    assert restart_delay(0.0, lived_s=3600) == 0.0


# --- stream claims shared by the workers ---------------------------------------------------------


def test_two_workers_share_one_stream_per_call_through_the_claims_directory(
    tmp_path: Path,
) -> None:
    now = 1_800_000_000.0
    first, second = SharedStreamLedger(tmp_path), SharedStreamLedger(tmp_path)
    grant = StreamGrant("twilio", "CA" + "1" * 32, int(now + 120))
    assert first.claim(grant, now)
    assert not second.claim(grant, now + 1)  # the same token at another worker
    assert not first.claim(grant, now + 2)
    assert second.streamed("twilio", grant.call_id, now + 3)
    assert not second.streamed("telnyx", grant.call_id, now + 3)  # another carrier's call
    assert second.claim(StreamGrant("telnyx", grant.call_id, int(now + 120)), now)
    first.release(grant)  # passed on to another replica, unopened
    assert second.claim(grant, now + 4)
    # Names are hashes: a carrier's call id never becomes a path.
    assert all(re.fullmatch(r"[0-9a-f]{64}", p.name) for p in tmp_path.iterdir())

    old = StreamGrant("twilio", "CA-old", int(now))
    assert first.claim(old, now - 1000)
    assert prune_claims(tmp_path, before=now - 900) == 1  # the master's minute timer
    assert not second.streamed("twilio", "CA-old", now)
    assert second.streamed("twilio", grant.call_id, now + 5)  # recent ones stay
    assert second.claim(old, now)


def test_a_killed_master_s_directory_goes_once_no_process_of_it_is_left(tmp_path: Path) -> None:
    """What a SIGKILLed master leaves is removed by the next one, but not while any of its
    workers (which inherited its lock) still drain."""
    killed, held = shared_directory(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], pass_fds=(held,)
    )
    try:
        os.close(held)  # the master is gone; its worker goes on
        _, mine = shared_directory(tmp_path)
        assert killed.exists()
    finally:
        worker.kill()
        worker.wait()
    _, another = shared_directory(tmp_path)
    assert not killed.exists()
    assert len(list(tmp_path.iterdir())) == 2  # the live masters' own
    os.close(mine)
    os.close(another)
