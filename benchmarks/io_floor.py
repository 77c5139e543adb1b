"""The I/O floor of the peer workload: what its bytes alone cost a Python process on this machine.

Run by hand (not a test; ~1 min):

    .venv/bin/python benchmarks/io_floor.py --calls 30,50

``peer_load.py`` measures the gateway doing its work. This measures a relay doing none of it:
the same sockets, the same event loop (uvloop), the same TLS to the model, the same message
sizes and rates, and between them nothing at all (no websocket framing, JSON, base64,
transcoding, bookkeeping). Whatever a call costs the relay, no gateway written on this stack
can cost less; the gap between the two figures is all the gateway can still win.

- **Callers** (one process on ``--load-cpus``, plain TCP, as the carriers' websockets are on
  127.0.0.1): each call sends a 330-byte message every 20 ms (a Twilio media frame: its
  websocket header and JSON), each at its own phase.
- **Model** (one process on ``--load-cpus``, TLS, as Gemini's websocket): every 2.5 s it
  sends each call an answer: 25 messages of 2,600 bytes 20 ms apart (1 s of 24 kHz audio in
  40 ms chunks at twice real time, as ``peer_load.py``'s simulator sends it).
- **Relay** (one process pinned to ``--relay-cpus``, the one measured): for each 330 bytes a
  caller sends, one 930-byte write to that call's TLS connection (a 20 ms Gemini audio
  message); for each 2,600 bytes the model sends, one 520-byte write to the caller (40 ms of
  μ-law for the carrier). Reads are taken as they come; nothing is parsed.

Printed: the relay's CPU over a steady window, in % of one core and in ms per call-second.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import uvloop  # noqa: E402

from callsim.tls import generate_tls  # noqa: E402

CALLER_BYTES, MODEL_BYTES = 330, 930  # one 20 ms frame each way up
ANSWER_BYTES, CARRIER_BYTES = 2600, 520  # one 40 ms chunk down, and what the caller gets of it
FRAME_S, ANSWER_EVERY_S, ANSWER_CHUNKS = 0.020, 2.5, 25


class _Sink(asyncio.Protocol):
    """Reads and forgets."""

    def data_received(self, data: bytes) -> None:
        pass


class _Relay(asyncio.Protocol):
    """One call, as the caller's plain socket sees it: a TLS socket to the model behind it."""

    def __init__(self, model: tuple[str, int], context: ssl.SSLContext) -> None:
        self._model_at, self._context = model, context
        self.caller: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._held = 0
        self._up_message = b"u" * MODEL_BYTES

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.caller = cast(asyncio.Transport, transport)  # uvloop's is not asyncio's class
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            lambda: _Downlink(self), *self._model_at, ssl=self._context, server_hostname="localhost"
        )
        self._upstream = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.caller = None
        if self._upstream is not None:
            self._upstream.close()

    def data_received(self, data: bytes) -> None:
        self._held += len(data)
        while self._held >= CALLER_BYTES:
            self._held -= CALLER_BYTES
            if self._upstream is not None:
                self._upstream.write(self._up_message)


class _Downlink(asyncio.Protocol):
    """The same call, as the model's TLS socket sees it."""

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay
        self._held = 0
        self._down_message = b"d" * CARRIER_BYTES

    def data_received(self, data: bytes) -> None:
        self._held += len(data)
        while self._held >= ANSWER_BYTES:
            self._held -= ANSWER_BYTES
            caller = self._relay.caller
            if caller is not None and not caller.is_closing():
                caller.write(self._down_message)


def _relay(port: int, model_port: int, ca: bytes, cpus: set[int], ready: Any) -> None:
    os.sched_setaffinity(0, cpus)
    context = ssl.create_default_context(cadata=ca.decode())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Relay(("127.0.0.1", model_port), context), "127.0.0.1", port
        )
        ready.set()
        async with server:
            await asyncio.Event().wait()

    uvloop.run(main())


def _model(port: int, tls: Any, cpus: set[int], ready: Any, received: Any) -> None:
    os.sched_setaffinity(0, cpus)
    context = tls.server_context()

    class _Model(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            task = self._answer(cast(asyncio.Transport, transport))
            asyncio.get_running_loop().create_task(task)

        def data_received(self, data: bytes) -> None:
            with received.get_lock():
                received.value += len(data)

        async def _answer(self, transport: asyncio.Transport) -> None:
            chunk = b"m" * ANSWER_BYTES
            await asyncio.sleep(random.uniform(0, ANSWER_EVERY_S))
            while not transport.is_closing():
                for _ in range(ANSWER_CHUNKS):
                    transport.write(chunk)
                    await asyncio.sleep(FRAME_S)
                await asyncio.sleep(ANSWER_EVERY_S - ANSWER_CHUNKS * FRAME_S)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Model, "127.0.0.1", port, ssl=context
        )
        ready.set()
        async with server:
            await asyncio.Event().wait()

    uvloop.run(main())


def _callers(port: int, calls: int, seconds: float, cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)

    async def call() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(_Sink, "127.0.0.1", port)
        frame = b"c" * CALLER_BYTES
        await asyncio.sleep(random.uniform(0, FRAME_S))
        due = loop.time()
        end = due + seconds
        while due < end:
            transport.write(frame)
            due += FRAME_S
            await asyncio.sleep(max(0.0, due - loop.time()))
        transport.close()

    async def main() -> None:
        await asyncio.gather(*(call() for _ in range(calls)))

    uvloop.run(main())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _level(calls: int, args: argparse.Namespace, tls: Any) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    relay_cpus = {int(c) for c in args.relay_cpus.split(",")}
    load_cpus = {int(c) for c in args.load_cpus.split(",")}
    relay_port, model_port = _free_port(), _free_port()
    model_ready, relay_ready = ctx.Event(), ctx.Event()
    received = ctx.Value("q", 0)
    model = ctx.Process(target=_model, args=(model_port, tls, load_cpus, model_ready, received))
    relay = ctx.Process(
        target=_relay, args=(relay_port, model_port, tls.ca_pem, relay_cpus, relay_ready)
    )
    model.start()
    relay.start()
    try:
        if not (model_ready.wait(30) and relay_ready.wait(30)):
            raise RuntimeError("the model or the relay did not start")
        seconds = args.warmup + args.window + 2
        callers = ctx.Process(target=_callers, args=(relay_port, calls, seconds, load_cpus))
        callers.start()
        time.sleep(args.warmup)
        assert relay.pid is not None
        cpu0, t0, up0 = _cpu_s(relay.pid), time.monotonic(), received.value
        time.sleep(args.window)
        cpu1, t1, up1 = _cpu_s(relay.pid), time.monotonic(), received.value
        callers.join()
    finally:
        for proc in (relay, model):
            proc.kill()
            proc.join()
    share = (cpu1 - cpu0) / (t1 - t0)
    up_rate = (up1 - up0) / MODEL_BYTES / (t1 - t0) / calls
    if not 0.9 / FRAME_S <= up_rate <= 1.1 / FRAME_S:
        raise RuntimeError(f"the model got {up_rate:.1f} messages per call-second, not 50")
    return 100 * share, 1000 * share / calls, up_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="30,50", help="comma-separated call counts")
    parser.add_argument("--relay-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    tls = generate_tls(["localhost", "127.0.0.1"])
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
    print("| calls | relay CPU % of a core | ms per call-second | messages up per call-s |")
    print("|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for calls in [int(n) for n in args.calls.split(",")]:
            percent, per_call, up_rate = _level(calls, args, tls)
            print(f"| {calls} | {percent:.1f} | {per_call:.2f} | {up_rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
