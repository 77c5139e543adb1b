"""Several gateway replicas behind nginx, as docker-compose.yml runs them, proven on one machine.

The proxy is Debian's nginx running the shipped ``deploy/nginx/gateway.conf`` itself, with only
the replica list (Docker's DNS name becomes local ports), the listen port and the log path
swapped, so what passes here is what is deployed. The replicas are real ``gateway serve``
processes sharing one ``GATEWAY_SECRET``, against the Live simulator in its own process; calls
are placed by the caller simulator through the proxy, webhook and media stream alike.

What is proven, and how:

* the proxy's retry contract, on fake replicas (no gateway needed): a replica answering 503 to a
  request carrying ``X-Callbridge-Retry: 503`` is passed over for another; when every replica
  refuses, one last attempt goes out without the header, so some replica gives the final answer;
  the forwarding headers the gateway builds its public URLs from arrive as documented;
* calls cross replicas: each replica's JSON log names the call id on the webhook
  (``twilio.voice``) and on the stream (``call.started``), so the test reads where each half
  landed; calls whose two halves landed on different replicas worked like the others;
* a replica drains during live calls: SIGTERM while calls are up on it; they run to the end the
  caller chose, new calls placed meanwhile are served, the drained process exits 0, and every
  call placed was bridged exactly once and ended by its caller.

A drained replica keeps answering new webhooks until it exits, and round robin keeps sending
them: it passes them on to the proxy with a 503 (``deploy/README.md``, "Draining behind a
proxy") rather than answering busy, so new calls land on the other replicas.
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
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.result import CallResult
from callsim.callers.twilio import TwilioCaller
from callsim.twilio.webhook import twilio_signature
from tests.test_cli import ROOT, _env, _free_port

NGINX = Path("/usr/sbin/nginx")
DEPLOY_CONF = ROOT / "deploy" / "nginx" / "gateway.conf"
REPLICAS = 3
SECRET = "replica-test-secret-0123456789abcdef"
AUTH_TOKEN = "replica-test-twilio-auth-token"
#: Long enough that the drained replica's calls end on their own: it exits as soon as it is idle.
DRAIN_TIMEOUT_S = 20.0
CALLER_ENDED = ("caller_hung_up", "caller_disconnected")

pytestmark = pytest.mark.skipif(
    not NGINX.exists(), reason=f"{NGINX} not found: apt-get install nginx (.ci/run does)"
)


# --- the proxy ---------------------------------------------------------------------------------


def proxy_config(replicas: Sequence[str], port: int, access_log: Path) -> str:
    """``deploy/nginx/gateway.conf`` pointed at local replicas instead of Docker's DNS name.

    Each swap must match exactly as often as expected, so an edit to the shipped file that
    this test would no longer exercise fails here rather than going untested.
    """
    text = DEPLOY_CONF.read_text()

    def servers(match: re.Match[str]) -> str:
        return "\n    ".join(f"server {addr}{match.group(1)};" for addr in replicas)

    swaps: list[tuple[str, str | Callable[[re.Match[str]], str], int]] = [
        (r"server gateway:8080 resolve([^;]*);", servers, 2),
        (r"\blisten 8080;", f"listen 127.0.0.1:{port};", 1),
        (r"access_log /var/log/nginx/access\.log ", f"access_log {access_log} ", 1),
    ]
    for pattern, replacement, expected in swaps:
        text, count = re.subn(pattern, replacement, text)
        assert count == expected, f"{DEPLOY_CONF}: {pattern!r} matched {count}x, not {expected}x"
    return text


def nginx_main_config(tmp: Path, include: Path) -> str:
    """A main config that keeps every path nginx writes inside ``tmp``, so it runs as an
    ordinary foreground process of the test (no /etc/nginx, /var/log or /run needed)."""
    # As root, workers would switch to `nobody`, who cannot enter pytest's private tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        "error_log stderr notice;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n{temp_paths}    include {include};\n}}\n"
    )


def write_nginx_files(tmp: Path, replicas: Sequence[str], port: int) -> Path:
    """Write the proxy's config files into ``tmp``; returns the main config's path."""
    tmp.mkdir(parents=True, exist_ok=True)
    site = tmp / "gateway.conf"
    site.write_text(proxy_config(replicas, port, tmp / "access.log"))
    main = tmp / "nginx.conf"
    main.write_text(nginx_main_config(tmp, site))
    return main


def nginx_command(tmp: Path, conf: Path, *extra: str) -> list[str]:
    return [str(NGINX), "-p", f"{tmp}/", "-c", str(conf), "-e", "stderr", *extra]


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process and the file its stderr (the gateway's JSON log) goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: TextIO

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn(name: str, args: list[str], log_path: Path, *, cwd: Path, env: dict[str, str]) -> Proc:
    """Start a process in its own session (so cleanup can reach anything it forks)."""
    log_file = log_path.open("w")
    popen = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=log_file, stderr=log_file, start_new_session=True
    )
    return Proc(name, popen, log_path, log_file)


def stop(procs: Sequence[Proc], sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal every process still running, wait for it, kill what does not stop; close logs."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(sig)
    for proc in procs:
        try:
            proc.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
        proc.log_file.close()


async def until_ok(http: httpx.AsyncClient, url: str, proc: Proc, timeout_s: float = 60) -> None:
    """Poll ``url`` until it answers 200; fail at once, with the log, if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.log_text()[-3000:]}"
        try:
            if (await http.get(url)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} ({proc.name}) did not come up"
        await asyncio.sleep(0.1)


@dataclass
class Replica:
    index: int
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines this replica has written so far."""
        events = []
        for line in self.proc.log_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def call_ids(self, event: str) -> list[str]:
        return [str(e.get("call_id")) for e in self.events() if e.get("event") == event]


@dataclass
class Cluster:
    proxy_url: str
    replicas: list[Replica]
    access_log: Path

    def where(self, event: str) -> dict[str, list[int]]:
        """For each call id: the replicas that logged ``event`` for it."""
        found: dict[str, list[int]] = {}
        for replica in self.replicas:
            for call_id in replica.call_ids(event):
                found.setdefault(call_id, []).append(replica.index)
        return found


@asynccontextmanager
async def cluster(tmp: Path) -> AsyncIterator[Cluster]:
    """Live simulator + three ``gateway serve`` replicas + nginx; all stopped on the way out."""
    (tmp / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    sim_port, proxy_port = _free_port(), _free_port()
    ports = [_free_port() for _ in range(REPLICAS)]
    env = _env(LOG_FORMAT="json", LOG_LEVEL="info")
    gateway = [sys.executable, "-m", "gateway"]
    procs: list[Proc] = []
    try:
        sim_args = ["simulator", "--port", str(sim_port), "--ca-file", str(tmp / "ca.pem")]
        sim = spawn("simulator", gateway + sim_args, tmp / "sim.log", cwd=tmp, env=env)
        procs.append(sim)
        replica_env = {
            **env,
            "GEMINI_API_KEY": "replica-test-key",
            "GEMINI_BASE_URL": f"https://127.0.0.1:{sim_port}",
            "SSL_CERT_FILE": str(tmp / "ca.pem"),
            "GATEWAY_SECRET": SECRET,
            "DRAIN_TIMEOUT": str(DRAIN_TIMEOUT_S),
            # Three replicas on one small machine, as the README advises for `--scale` on one
            # host: one worker each (tests/test_workers.py runs several behind one port).
            "WORKERS": "1",
            # Deployed as documented: verified webhooks and stream upgrades.
            "CARRIERS": "twilio",
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        }
        async with httpx.AsyncClient(verify=False) as http:
            await until_ok(http, f"https://127.0.0.1:{sim_port}/_sim/health", sim)
            replicas = []
            for i, port in enumerate(ports):
                serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
                proc = spawn(f"replica {i}", gateway + serve, tmp / f"replica{i}.log",
                             cwd=tmp, env=replica_env)  # fmt: skip
                procs.append(proc)
                replicas.append(Replica(i, port, proc))
            for replica in replicas:
                await until_ok(http, replica.url + "/readyz", replica.proc)
            conf = write_nginx_files(tmp / "nginx", [f"127.0.0.1:{p}" for p in ports], proxy_port)
            daemon_off = ["-g", "daemon off;"]
            nginx = spawn("nginx", nginx_command(tmp / "nginx", conf, *daemon_off),
                          tmp / "nginx" / "stderr.log", cwd=tmp, env=env)  # fmt: skip
            procs.insert(0, nginx)  # stopped first, like compose stops the proxy first
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            await until_ok(http, proxy_url + "/healthz", nginx)
            await until_ok(http, proxy_url + "/readyz", nginx)
        yield Cluster(proxy_url, replicas, tmp / "nginx" / "access.log")
    finally:
        await asyncio.to_thread(stop, procs)


# --- calls --------------------------------------------------------------------------------------


def new_caller(proxy_url: str, seconds: float) -> TwilioCaller:
    """A call of about ``seconds``: the agent greets, the caller says something, then hangs up."""
    audio = render([Silence(1.0), Tone(300, 0.5), Silence(max(0.5, seconds - 1.8))])
    return TwilioCaller(proxy_url, audio=audio, linger_s=0.3, webhook_timeout_s=30,
                        connect_timeout_s=30, auth_token=AUTH_TOKEN)  # fmt: skip


@asynccontextmanager
async def call_tasks() -> AsyncIterator[list[asyncio.Task[CallResult]]]:
    """Collects the tasks of placed calls; any still running on the way out are cancelled, so a
    failed assertion is reported as itself rather than as tasks destroyed while pending."""
    tasks: list[asyncio.Task[CallResult]] = []
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def place(
    tasks: list[asyncio.Task[CallResult]], proxy_url: str, count: int, seconds: float, gap_s: float
) -> list[tuple[TwilioCaller, asyncio.Task[CallResult]]]:
    """Place ``count`` calls ``gap_s`` apart (staggered, so webhooks and streams interleave)."""
    calls = []
    for _ in range(count):
        caller = new_caller(proxy_url, seconds)
        task = asyncio.create_task(caller.run(), name=f"call {caller.result.call_sid}")
        tasks.append(task)
        calls.append((caller, task))
        await asyncio.sleep(gap_s)
    return calls


def problems(result: CallResult, proxy_url: str) -> list[str]:
    """Why this call did not work as a caller expects (empty: it did)."""
    found = list(result.violations)
    if result.twiml_stream_url is None:
        found.append(f"no <Connect><Stream> in the webhook answer: {result.twiml!r}")
    elif not result.twiml_stream_url.startswith(proxy_url.replace("http", "ws", 1) + "/"):
        found.append(f"stream URL {result.twiml_stream_url} is not the proxy's")
    if result.closed_by != "caller":
        found.append(f"ended by {result.closed_by} ({result.close_code} {result.close_reason})")
    if result.media_bytes_received < 4000:  # half a second of the agent's greeting
        found.append(f"heard only {result.media_bytes_received} bytes of agent audio")
    return found


async def settled(cluster: Cluster, call_ids: Sequence[str], timeout_s: float = 15) -> None:
    """Wait until every call has its ``call.ended`` logged (logging trails the hang-up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ended = cluster.where("call.ended")
        missing = [c for c in call_ids if c not in ended]
        if not missing or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


async def metric_total(http: httpx.AsyncClient, replica: Replica, sample: str) -> float:
    text = (await http.get(replica.url + "/metrics")).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def access_lines(cluster: Cluster) -> Iterator[str]:
    yield from cluster.access_log.read_text().splitlines()


# --- the tests ----------------------------------------------------------------------------------


async def test_calls_cross_replicas_through_the_proxy(tmp_path: Path) -> None:
    """Webhook on one replica, stream on another: the call works as if there were one."""
    started = time.monotonic()
    async with cluster(tmp_path) as c, call_tasks() as tasks, httpx.AsyncClient(timeout=30) as http:
        calls = await place(tasks, c.proxy_url, count=6, seconds=3.0, gap_s=0.4)
        results = await asyncio.gather(*(task for _, task in calls))
        ids = [r.call_sid for r in results]
        await settled(c, ids)
        webhook_at, stream_at = c.where("twilio.voice"), c.where("call.started")
        ended_at = c.where("call.ended")
        completed = [
            await metric_total(http, r, 'gateway_calls_total{outcome="completed"}')
            for r in c.replicas
        ]
        # What the gateway builds the stream URL from, as an outer TLS terminator sets it.
        form = {"CallSid": "CA" + "f" * 32}
        forwarded = await http.post(
            c.proxy_url + "/twilio/voice",
            data=form,
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com",
                     "X-Twilio-Signature": twilio_signature(
                         AUTH_TOKEN, "https://gw.example.com/twilio/voice", form)},
        )  # fmt: skip
        metrics_public = await http.get(c.proxy_url + "/metrics")
    for result in results:
        assert problems(result, c.proxy_url) == [], result.summary()
    for call_id in ids:  # each half landed once, somewhere
        assert len(webhook_at[call_id]) == 1 and len(stream_at[call_id]) == 1, call_id
        assert ended_at[call_id] == stream_at[call_id]
    crossed = [i for i in ids if webhook_at[i] != stream_at[i]]
    assert crossed, f"every call stayed on one replica: {webhook_at} {stream_at}"
    assert len({stream_at[i][0] for i in ids}) >= 2, "the streams all went to one replica"
    assert sum(completed) == len(ids)
    assert "wss://gw.example.com/twilio/stream/" in forwarded.text
    assert metrics_public.status_code == 404
    streams = [line for line in access_lines(c) if "/twilio/stream/" in line]
    assert len(streams) >= len(ids) and all("/twilio/stream/[token]" in s for s in streams)
    assert not any(re.search(r"v2\.[A-Za-z0-9_-]+\.[0-9]+\.", line) for line in access_lines(c))
    print(
        f"{len(crossed)}/{len(ids)} calls crossed replicas; streams per replica "
        f"{[sum(stream_at[i] == [r.index] for i in ids) for r in c.replicas]}; "
        f"{time.monotonic() - started:.1f} s"
    )


async def test_one_replica_drains_during_live_calls_and_no_call_is_lost(tmp_path: Path) -> None:
    """SIGTERM a replica with calls up: they end when their callers hang up, new calls are
    served meanwhile, the replica exits 0, and every call placed was bridged once, to its end."""
    started = time.monotonic()
    async with cluster(tmp_path) as c, call_tasks() as tasks, httpx.AsyncClient(timeout=30) as http:
        live = await place(tasks, c.proxy_url, count=6, seconds=7.0, gap_s=0.25)
        live_ids = [caller.result.call_sid for caller, _ in live]
        deadline = time.monotonic() + 30
        while True:  # every stream is up somewhere (logged once its token is accepted)
            started_at = c.where("call.started")
            if all(i in started_at for i in live_ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert all(i in started_at for i in live_ids), f"not all came up: {started_at}"
        per_replica = [[i for i in live_ids if started_at[i] == [r.index]] for r in c.replicas]
        victim = c.replicas[max(range(REPLICAS), key=lambda i: len(per_replica[i]))]
        live_on_victim = set(per_replica[victim.index])
        assert live_on_victim

        victim.proc.popen.send_signal(signal.SIGTERM)
        drain_began = time.monotonic()
        for _ in range(100):  # the signal is handled on the replica's event loop
            if (await http.get(victim.url + "/readyz")).status_code == 503:
                break
            await asyncio.sleep(0.05)
        assert (await http.get(victim.url + "/readyz")).status_code == 503
        form = {"CallSid": "CA" + "0" * 32}
        signature = twilio_signature(AUTH_TOKEN, victim.url + "/twilio/voice", form)
        probe = await http.post(
            victim.url + "/twilio/voice",
            data=form,
            headers={"X-Callbridge-Retry": "503", "X-Twilio-Signature": signature},
        )
        assert probe.status_code == 503, "a draining replica must pass a retried webhook on"

        new = await place(tasks, c.proxy_url, count=6, seconds=3.0, gap_s=0.3)
        live_results = await asyncio.gather(*(task for _, task in live))
        new_results = await asyncio.gather(*(task for _, task in new))
        exit_code = await asyncio.to_thread(victim.proc.popen.wait, DRAIN_TIMEOUT_S + 30)
        drain_s = time.monotonic() - drain_began
        bridged = [r for r in live_results + new_results if r.twiml_stream_url is not None]
        await settled(c, [r.call_sid for r in bridged])
        victim_events = victim.events()
        started_at, ended_at = c.where("call.started"), c.where("call.ended")
        retried = [line for line in access_lines(c) if re.search(r"upstream_status=503, ", line)]

    # The live calls on the draining replica (and everywhere) ran to their natural end.
    for result in live_results:
        assert problems(result, c.proxy_url) == [], result.summary()
    assert exit_code == 0, victim.proc.log_text()[-3000:]
    # They were up at SIGTERM: on the replica's one process, or shared by its workers.
    draining = {e.get("worker"): e for e in victim_events if e.get("event") == "gateway.draining"}
    assert sum(e["active_calls"] for e in draining.values()) == len(live_on_victim)
    assert not [e for e in victim_events if e.get("event") == "gateway.drain_timeout"]
    victim_ends = [e for e in victim_events if e.get("event") == "call.ended"]
    assert {e["call_id"] for e in victim_ends} == set(victim.call_ids("call.started"))
    assert all(e["reason"] in CALLER_ENDED for e in victim_ends), victim_ends
    assert drain_s < DRAIN_TIMEOUT_S  # it left as soon as its calls ended, not at the timeout

    # No call lost or doubled: each stream that came up was bridged exactly once, to its end.
    for result in bridged:
        assert len(started_at.get(result.call_sid, [])) == 1, result.summary()
        assert ended_at.get(result.call_sid) == started_at[result.call_sid]

    failed = {r.call_sid: problems(r, c.proxy_url) for r in new_results}
    failed = {call_id: why for call_id, why in failed.items() if why}
    # New calls all went to replicas with room: the drained one passed its share on.
    assert failed == {}, failed
    new_ids = {r.call_sid for r in new_results}
    assert not new_ids & set(victim.call_ids("call.started"))
    assert not new_ids & set(victim.call_ids("twilio.voice"))
    assert retried, "no request was retried on another replica"
    print(
        f"drained replica {victim.index}: {len(live_on_victim)} live calls ended by their "
        f"callers, exit {exit_code} after {drain_s:.1f} s; new calls failed: {len(failed)}; "
        f"retried requests: {len(retried)}; {time.monotonic() - started:.1f} s"
    )


# --- the proxy's retry contract, on fake replicas --------------------------------------------


@dataclass
class FakeReplica:
    """An ASGI app that answers like a gateway that may refuse, recording what it was sent."""

    name: str
    refuse: bool = False
    seen: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": scope["path"], **headers})
        retrying = headers.get("x-callbridge-retry") == "503"
        if scope["path"] == "/readyz":
            status, body = (503, "draining") if self.refuse else (200, "ready")
        elif self.refuse:  # what the gateway does with the change in deploy/README.md
            status, body = (503, "pass on") if retrying else (200, f"<Say>busy {self.name}</Say>")
        else:
            status, body = 200, f"<Connect>{self.name}</Connect>"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/xml")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body.encode()})


@asynccontextmanager
async def serving(app: FakeReplica) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port in this event loop; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None,
                            access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "fake replica did not start"
            await asyncio.sleep(0.01)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await task


async def test_proxy_passes_refusals_on_and_lets_the_last_replica_answer(tmp_path: Path) -> None:
    """The nginx half of draining and capacity: 503 means "ask another", never "caller hears
    an error"; and the headers the gateway derives its public URLs from arrive as documented."""
    fakes = [FakeReplica("a", refuse=True), FakeReplica("b"), FakeReplica("c")]
    port = _free_port()
    async with contextlib.AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(serving(f)) for f in fakes]
        conf = write_nginx_files(tmp_path, [f"127.0.0.1:{p}" for p in ports], port)
        nginx = spawn("nginx", nginx_command(tmp_path, conf, "-g", "daemon off;"),
                      tmp_path / "stderr.log", cwd=tmp_path, env=_env())  # fmt: skip
        stack.callback(stop, [nginx])
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30) as http:
            await until_ok(http, url + "/healthz", nginx)
            one_refuses = [
                await http.post(url + "/twilio/voice", data={"CallSid": f"CA{i}"}) for i in range(6)
            ]
            offered_to_a = list(fakes[0].seen)
            ready_somewhere = await http.get(url + "/readyz")
            outer = await http.post(
                url + "/telnyx/voice", data={"CallSid": "v3:x"},
                headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"},
            )  # fmt: skip
            for fake in fakes:
                fake.refuse = True
            before = [len(f.seen) for f in fakes]
            # A client's own X-Callbridge-Retry must not reach the replica on the last try.
            all_refuse = await http.post(
                url + "/twilio/voice",
                data={"CallSid": "CAx"},
                headers={"X-Callbridge-Retry": "503"},
            )
            ready_nowhere = await http.get(url + "/readyz")
            private = await http.get(url + "/metrics")
    assert [r.status_code for r in one_refuses] == [200] * 6
    assert all("<Connect>" in r.text for r in one_refuses)
    assert offered_to_a, "round robin never offered the refusing replica a call"
    assert all(s["x-callbridge-retry"] == "503" for s in offered_to_a)
    assert any("upstream_status=503, 200" in line for line in (tmp_path / "access.log").open())
    assert ready_somewhere.status_code == 200

    plain = next(s for s in fakes[1].seen + fakes[2].seen if s["path"] == "/twilio/voice")
    assert plain["host"] == plain["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert plain["x-forwarded-proto"] == "http"
    assert plain["x-forwarded-for"] == "127.0.0.1"
    assert "upgrade" not in plain and plain["connection"] == "close"
    assert outer.status_code == 200
    through = next(s for f in fakes for s in f.seen if s["path"] == "/telnyx/voice")
    assert through["x-forwarded-proto"] == "https"
    assert through["x-forwarded-host"] == "gw.example.com"

    # Every replica refused: the last one was asked without the header and answered busy (200).
    assert all_refuse.status_code == 200 and "<Say>busy" in all_refuse.text
    asked = [s for f, n in zip(fakes, before, strict=True) for s in f.seen[n:]]
    last_try = [s for s in asked if s["path"] == "/twilio/voice"]
    assert any("x-callbridge-retry" not in s for s in last_try)
    assert ready_nowhere.status_code == 503
    assert private.status_code == 404
