"""``gateway serve --workers N``: N processes serving calls on one port, so one container uses
every core it has.

One gateway process is one event loop on one core (``benchmarks/README.md``). Threads would
not help (the loop is Python), so a container with more cores runs more processes: a small
master binds the listening socket once and starts N workers, each today's ``gateway serve``
accepting on that same socket (the kernel hands each new connection to one of them).

**The master** (:class:`Master`) imports neither uvicorn, numpy nor the SDKs; it only starts,
watches and signals its workers:

* each worker is ``python -m gateway serve`` with the socket and a status pipe passed as file
  descriptors and the rest in its environment (:data:`ENV_WORKER`…), in a session of its own:
  Ctrl-C in a terminal reaches the master alone, which passes it on, so a worker never takes
  the terminal's signal for a second one;
* SIGTERM/SIGINT: every worker gets SIGTERM and drains as one process does, and the master
  exits when they all have (0, or 1 if one failed); a second signal is passed on too (stop at
  once). SIGHUP is passed on (each worker re-reads agents.yaml);
* a worker that dies while the master is not stopping is replaced on the same socket, the
  other workers untouched; one that dies within :data:`QUICK_EXIT_S` of starting waits 1, 2,
  4 … 30 s first. If every worker fails before any was ready, start-up has failed: the master
  exits with the first worker's status and error, as one process would;
* what the workers must share, it provides: the stream token secret when GATEWAY_SECRET is
  unset (one random key in their environment, never on a command line or in a log), a
  directory of stream claims (``gateway.claims``), prometheus_client's multiprocess
  directory (``gateway.metrics``), both in one directory of their own that outlives none of
  them (:func:`shared_directory`), and the start time that tells a previous run's open call
  records from a sibling's (``gateway.records.store``). MAX_CONCURRENT_CALLS and
  MAX_PENDING_STREAMS stay totals: each worker gets its share, rounded up.

**A worker** (:class:`WorkerContext`) tells the master over its status pipe when it is ready,
when the admin API reloaded it (so the others reload too) and why it could not start; it
watches for its master's death (re-parented: the master was killed) and then drains itself,
so nothing is left running forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.agents import AgentGraph
from gateway.aio import cancel_and_wait
from gateway.claims import prune_claims
from gateway.logs import configure_logging, register_secrets
from gateway.settings import ConfigError, Settings
from gateway.startup import announce, prepare_recordings_dir

__all__ = [
    "Master",
    "WorkerContext",
    "restart_delay",
    "run_master",
    "shared_directory",
]

#: The worker's index (0…N-1), which also marks a ``gateway serve`` as a worker.
ENV_WORKER = "CALLBRIDGE_WORKER"
#: The inherited listening socket's descriptor.
ENV_LISTEN_FD = "CALLBRIDGE_LISTEN_FD"
#: The write end of the worker's status pipe to the master.
ENV_STATUS_FD = "CALLBRIDGE_STATUS_FD"
#: The master's pid: the worker's parent until the master dies.
ENV_MASTER_PID = "CALLBRIDGE_MASTER_PID"
#: When the master started (Unix seconds): records open from before are a previous run's.
ENV_STARTED_AT = "CALLBRIDGE_STARTED_AT"
#: The stream claims every worker shares.
ENV_CLAIMS_DIR = "CALLBRIDGE_CLAIMS_DIR"
#: prometheus_client's multiprocess directory (its own variable name).
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: A worker that exits sooner than this after its start is crash-looping: wait before the next.
QUICK_EXIT_S = 10.0
#: Longest wait before restarting a crash-looping worker.
MAX_BACKOFF_S = 30.0
#: How often a worker checks its master is alive.
MASTER_POLL_S = 1.0
#: How often the master prunes the stream claims.
PRUNE_EVERY_S = 60.0
#: uvicorn's default listen backlog.
BACKLOG = 2048


# ---------------------------------------------------------------------------- a worker's side


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a worker was given by its master (see the module docstring)."""

    index: int
    listen_fd: int
    status_fd: int
    master_pid: int
    #: When the master started: the workers' metrics count from then, and call records open
    #: from before it are a previous run's.
    started_at: float
    claims_dir: Path

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> WorkerContext | None:
        """This process's context, or None when it is not a worker."""
        if ENV_WORKER not in environ:
            return None
        return cls(
            index=int(environ[ENV_WORKER]),
            listen_fd=int(environ[ENV_LISTEN_FD]),
            status_fd=int(environ[ENV_STATUS_FD]),
            master_pid=int(environ[ENV_MASTER_PID]),
            started_at=float(environ[ENV_STARTED_AT]),
            claims_dir=Path(environ[ENV_CLAIMS_DIR]),
        )

    @property
    def since(self) -> datetime:
        return datetime.fromtimestamp(self.started_at, UTC)

    def listening_socket(self) -> socket.socket:
        """The socket the master bound, which every worker accepts on."""
        return socket.socket(fileno=self.listen_fd)

    def ready(self) -> None:
        """Tell the master this worker serves: start-up worked."""
        self._tell("ready")

    def reload_others(self) -> None:
        """Ask the master to have the other workers re-read agents.yaml (as after SIGHUP)."""
        self._tell("reload")

    def report_error(self, message: str) -> bool:
        """Hand the master the one-line reason this worker cannot start (it reports it once for
        all, as one process would). False if the master cannot be told (print it instead)."""
        return self._tell("error " + " ".join(message.split()))

    def _tell(self, line: str) -> bool:
        try:
            os.write(self.status_fd, line.encode() + b"\n")
        except OSError:  # the master is gone: it will not care
            return False
        return True

    async def watch_master(self, gone: Callable[[], None]) -> None:
        """Call ``gone`` once the master has died (this process was handed to another parent),
        then return; until cancelled otherwise."""
        while True:
            if os.getppid() != self.master_pid:
                break
            await asyncio.sleep(MASTER_POLL_S)
        structlog.get_logger("gateway").warning("gateway.master_gone", master=self.master_pid)
        gone()


# ---------------------------------------------------------------------------- the master


@dataclass(slots=True)
class _Worker:
    """One worker process, as the master sees it."""

    index: int
    process: asyncio.subprocess.Process
    #: The read end of its status pipe (closed once it has exited).
    status: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    #: A SIGHUP arrived before it was ready (its signal handlers may not be installed yet).
    reload_pending: bool = False
    #: The error it reported, if any.
    error: str | None = None
    _partial: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class Master:
    """Runs ``count`` workers of ``gateway serve`` on one socket until told to stop.

    ``command`` starts a worker (default ``python -m gateway serve``; ``--host``, the bound
    ``--port`` and ``--simulator`` are appended); ``settings`` are the master's own, for the
    totals the workers share out and the token secret. Port 0 binds a free port, which every
    worker then shares.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        host: str,
        port: int,
        count: int,
        simulator: bool = False,
        command: list[str] | None = None,
    ) -> None:
        self._settings = settings
        self._host = host
        self._port = port
        self._count = count
        self._command = command or [sys.executable, "-m", "gateway", "serve"]
        self._simulator = simulator
        self._argv: list[str] = []
        self._log: structlog.stdlib.BoundLogger = structlog.get_logger("gateway.workers")
        self._workers: dict[int, _Worker] = {}
        self._sock: socket.socket | None = None
        self._env: dict[str, str] = {}
        self._metrics_dir: Path | None = None
        #: The share-locked descriptor that marks the shared directory in use (see
        #: :func:`shared_directory`); every worker inherits it.
        self._in_use = -1
        self._stopping = False
        self._stop_signals = 0
        self._stopped = asyncio.Event()
        self._any_ready = False
        #: The status and error of each slot's first worker, if it failed before any was ready.
        self._failed_at_start: dict[int, tuple[int, str | None]] = {}
        #: A worker's exit status that makes the master's non-zero, and its error.
        self._failure: tuple[int, str | None] | None = None
        self.url = ""

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT and every worker has exited; the exit status (raises
        ``ConfigError`` with the workers' reason when none could start for one)."""
        started_at = time.time()
        try:
            self._sock = listen(self._host, self._port)
        except OSError as exc:  # as uvicorn reports it, and with its status
            self._log.error(
                f"[Errno {exc.errno}] error while attempting to bind on address "
                f"({self._host!r}, {self._port}): {exc.strerror}"
            )
            return 3
        port = self._sock.getsockname()[1]
        self.url = f"http://{self._host}:{port}"
        runtime, self._in_use = shared_directory()
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        try:
            claims, self._metrics_dir = runtime / "claims", runtime / "metrics"
            claims.mkdir()
            self._metrics_dir.mkdir()
            self._env = self._worker_env(started_at, claims, self._metrics_dir)
            self._argv = [*self._command, "--host", self._host, "--port", str(port)]
            if self._simulator:
                self._argv.append("--simulator")
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop, sig)
            loop.add_signal_handler(signal.SIGHUP, self._reload_all)
            first = [w for index in range(self._count) if (w := await self._spawn(index))]
            self._log.info(
                "gateway.workers_started",
                url=self.url,
                workers=self._count,
                pids=[w.pid for w in first],
                max_concurrent_calls=self._share(self._settings.max_concurrent_calls),
            )
            slots = [
                asyncio.create_task(self._supervise(w), name=f"worker-{w.index}") for w in first
            ]
            pruner = asyncio.create_task(self._prune(claims), name="claims-prune")
            try:
                await asyncio.wait(slots)
            finally:
                await cancel_and_wait(pruner, *slots)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            for worker in self._workers.values():  # only after an error: they are gone else
                worker.signal(signal.SIGKILL)
            self._close_socket()
            shutil.rmtree(runtime, ignore_errors=True)
            os.close(self._in_use)
        return self._exit_status()

    def _exit_status(self) -> int:
        if self._failure is None:
            return 0
        status, error = self._failure
        if error is not None and status == 2:
            raise ConfigError(error)
        return status

    # --- workers ----------------------------------------------------------------------------

    def _share(self, total: int) -> int:
        return math.ceil(total / self._count)

    def _worker_env(self, started_at: float, claims: Path, metrics: Path) -> dict[str, str]:
        """What every worker's environment adds to the master's (see the module docstring)."""
        env = dict(os.environ)
        env.update({
            ENV_MASTER_PID: str(os.getpid()),
            ENV_STARTED_AT: repr(started_at),
            ENV_CLAIMS_DIR: str(claims),
            ENV_METRICS_DIR: str(metrics),
            # Totals for the whole gateway, shared out (rounded up).
            "MAX_CONCURRENT_CALLS": str(self._share(self._settings.max_concurrent_calls)),
            "MAX_PENDING_STREAMS": str(self._share(self._settings.max_pending_streams)),
        })  # fmt: skip
        if self._settings.gateway_secret is None:
            # A token minted by one worker must pass in another: one key for all of them.
            env["GATEWAY_SECRET"] = secrets.token_hex(32)
            register_secrets([env["GATEWAY_SECRET"]])
        return env

    async def _spawn(self, index: int) -> _Worker | None:
        """Start worker ``index`` on the socket; None when stopping (the socket is closed)."""
        if self._sock is None:
            return None
        read, write = os.pipe()
        os.set_blocking(read, False)
        env = {
            **self._env,
            ENV_WORKER: str(index),
            ENV_LISTEN_FD: str(self._sock.fileno()),
            ENV_STATUS_FD: str(write),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                env=env,
                pass_fds=(self._sock.fileno(), write, self._in_use),
                start_new_session=True,  # the terminal's Ctrl-C is the master's to pass on
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        worker = _Worker(index, process, read)
        self._workers[index] = worker
        asyncio.get_running_loop().add_reader(read, self._on_status, worker)
        if self._stopping:  # stopped while it was being started
            worker.signal(signal.SIGTERM)
        return worker

    async def _supervise(self, worker: _Worker) -> None:
        """Watch one slot's worker; replace it when it dies, unless stopping."""
        backoff = 0.0
        while True:
            status = await worker.process.wait()
            self._exited(worker, status)
            if self._stopping:
                return
            if not worker.ready and not self._any_ready:
                self._failed_at_start.setdefault(worker.index, (status, worker.error))
                if len(self._failed_at_start) == self._count:
                    self._give_up()
                    return
            backoff = restart_delay(backoff, time.monotonic() - worker.started)
            if backoff:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._stopped.wait()
                if self._stopped.is_set():
                    return
            previous = worker.pid
            replacement = await self._spawn(worker.index)
            if replacement is None:
                return
            worker = replacement
            self._log.info(
                "gateway.worker_restarted",
                worker=worker.index,
                pid=worker.pid,
                replaced=previous,
                after_s=backoff,
            )

    def _exited(self, worker: _Worker, status: int) -> None:
        """Bookkeeping for a worker that has exited: its last words, its live gauges, a log
        line with its status or the signal that ended it."""
        self._read_status(worker)
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.status)
        os.close(worker.status)
        if self._metrics_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
        how: dict[str, object] = {"exit_code": status}
        with contextlib.suppress(ValueError):
            if status < 0:
                how = {"signal": signal.Signals(-status).name}
        if worker.error is not None:
            how["error"] = worker.error
        expected = self._stopping and self._clean(status)
        say = self._log.info if expected else self._log.warning
        say("gateway.worker_exited", worker=worker.index, pid=worker.pid, **how)
        if self._stopping and not self._clean(status) and self._failure is None:
            self._failure = (1, None)

    @staticmethod
    def _clean(status: int) -> bool:
        """A stopping worker's status is clean: it drained (0), or the SIGTERM passed on ended
        it before it had installed its handlers."""
        return status in (0, -signal.SIGTERM)

    def _give_up(self) -> None:
        """No worker could start: stop, with the status and reason of the first that said why
        (the workers leave their configuration errors to the master, to say once)."""
        failures = [self._failed_at_start[i] for i in sorted(self._failed_at_start)]
        status, error = next((f for f in failures if f[1] is not None), failures[0])
        self._failure = (status if status > 0 else 1, error)
        self._begin_stop()
        for other in self._workers.values():
            other.signal(signal.SIGTERM)

    # --- status pipes ---------------------------------------------------------------------

    def _on_status(self, worker: _Worker) -> None:
        self._read_status(worker)

    def _read_status(self, worker: _Worker) -> None:
        """Read what the worker has said (non-blocking: all of it, at once)."""
        while True:
            try:
                data = os.read(worker.status, 4096)
            except BlockingIOError:
                return
            except OSError:  # closed already
                return
            if not data:
                asyncio.get_running_loop().remove_reader(worker.status)
                return
            *lines, worker._partial = (worker._partial + data).split(b"\n")
            for line in lines:
                self._heard(worker, line.decode(errors="replace"))

    def _heard(self, worker: _Worker, line: str) -> None:
        kind, _, detail = line.partition(" ")
        if kind == "ready":
            worker.ready = self._any_ready = True
            if worker.reload_pending:
                worker.reload_pending = False
                worker.signal(signal.SIGHUP)
        elif kind == "reload":
            self._reload_all(but=worker)
        elif kind == "error":
            worker.error = detail

    # --- signals --------------------------------------------------------------------------

    def _stop(self, sig: int) -> None:
        """SIGTERM/SIGINT: the first drains every worker, a second stops them at once. The
        workers get SIGTERM either way (they treat both alike): a SIGINT reaching a worker
        still importing would print a KeyboardInterrupt traceback, SIGTERM just ends it."""
        self._stop_signals += 1
        name = signal.Signals(sig).name
        if self._stop_signals == 1:
            alive = [w.pid for w in self._workers.values() if w.alive()]
            self._log.info("gateway.stopping", signal=name, workers=alive)
            self._begin_stop()
        else:
            self._log.info("gateway.stopping_now", signal=name)
        for worker in self._workers.values():
            worker.signal(signal.SIGTERM)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        # The workers hold their own copies: the port closes when the last of them exits.
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _reload_all(self, but: _Worker | None = None) -> None:
        """SIGHUP (or one worker's admin reload): every (other) worker re-reads agents.yaml."""
        for worker in self._workers.values():
            if worker is but or not worker.alive():
                continue
            if worker.ready:
                worker.signal(signal.SIGHUP)
            else:  # SIGHUP would kill it before its handler is installed: once it is ready
                worker.reload_pending = True

    async def _prune(self, claims: Path) -> None:
        retention = self._settings.ledger_retention_s()
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            prune_claims(claims, time.time() - retention)


def restart_delay(previous_s: float, lived_s: float) -> float:
    """Seconds before replacing a worker that lived ``lived_s``, the last wait having been
    ``previous_s``: none after one that ran a while (a crash or a kill: replace it now), else
    twice the last wait, from 1 s to 30 s: a worker that dies as it starts (a broken file, a
    database down) would otherwise spin, starting and dying as fast as it can import."""
    if lived_s >= QUICK_EXIT_S:
        return 0.0
    return min(MAX_BACKOFF_S, max(1.0, 2 * previous_s))


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on, bound as uvicorn binds its own (port 0:
    a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # connections wait in the backlog while workers start
    except OSError:
        sock.close()
        raise
    return sock


def shared_directory(parent: Path | None = None) -> tuple[Path, int]:
    """A new directory for what a master's workers share (in ``parent``, default a memory
    file system when there is one), and an open descriptor holding a shared lock on its
    ``in-use`` file, for the master to keep and pass to every worker.

    The master removes the directory when it exits, but a master killed with SIGKILL cannot:
    its directory is removed by the next master to start in the same place, once nothing holds
    that lock any more (a lock held through inherited descriptors lives as long as the last
    process holding one: the killed master's workers drain in peace). Nothing else is left.
    """
    if parent is None:
        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for stale in parent.glob(_SHARED_PREFIX + "*"):
        with contextlib.suppress(OSError):
            fd = os.open(stale / "in-use", os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: still in use
                shutil.rmtree(stale, ignore_errors=True)
            finally:
                os.close(fd)
    directory = Path(tempfile.mkdtemp(prefix=_SHARED_PREFIX, dir=parent))
    fd = os.open(directory / "in-use", os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return directory, fd


_SHARED_PREFIX = "callbridge-"


def run_master(
    settings: Settings, graph: AgentGraph, *, host: str, port: int, count: int, simulator: bool
) -> int:
    """``gateway serve`` with ``count`` > 1 workers: say what start-up says (once, here, not
    in every worker), check what can be checked before any worker starts, run the master."""
    configure_logging(settings.log_level, settings.log_format)
    register_secrets(settings.secrets())
    announce(settings, graph, simulator=simulator, log=structlog.get_logger("gateway"))
    prepare_recordings_dir(settings)
    master = Master(settings, host=host, port=port, count=count, simulator=simulator)
    return asyncio.run(master.run())
