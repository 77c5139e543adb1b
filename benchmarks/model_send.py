"""What one caller frame costs on its way to the model's websocket, by write path.

Run by hand (not a test)::

    .venv/bin/python benchmarks/model_send.py

A real ``websockets`` client connection over TLS (uvloop, as ``gateway serve`` runs) to a sink
server in another process, so only the sending side is timed (CPU time of this process). Each
path sends the same 20 ms ``realtime_input`` audio message, many thousand times, pausing 1 ms
every 20 messages so the socket never backs up:

- ``Connection.send``: the ``websockets`` API (its async send context, then a drain);
- ``DirectSender``: :class:`gateway.model.websocket.DirectSender`, the gateway's path;
- ``message only``: building the message and nothing else, the floor under both.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from callsim.tls import TlsMaterial, generate_tls
from gateway.live.fast_path import realtime_audio_message
from gateway.model.websocket import DirectSender

MESSAGES = 20_000
ROUNDS = 3


def _sink(tls: TlsMaterial, ports: Any) -> None:
    async def drain(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async def run() -> None:
        async with serve(drain, "127.0.0.1", 0, ssl=tls.server_context()) as server:
            ports.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    uvloop.run(run())


async def _time(port: int, tls: TlsMaterial) -> dict[str, list[float]]:
    pcm = os.urandom(640)  # 20 ms at 16 kHz
    paths = ("Connection.send", "DirectSender", "message only")
    results: dict[str, list[float]] = {path: [] for path in paths}
    async with connect(
        f"wss://127.0.0.1:{port}", ssl=tls.client_context(), server_hostname="localhost"
    ) as ws:
        direct = DirectSender(ws)
        for _ in range(ROUNDS):
            for path, times in results.items():
                started = time.process_time()
                for i in range(MESSAGES):
                    message = realtime_audio_message(pcm)
                    if path == "Connection.send":
                        await ws.send(message)
                    elif path == "DirectSender":
                        await direct(message)
                    if i % 20 == 19:
                        await asyncio.sleep(0.001)
                times.append((time.process_time() - started) / MESSAGES * 1e6)
    return results


def main() -> None:
    tls = generate_tls()
    ports: Any = mp.Queue()
    sink = mp.Process(target=_sink, args=(tls, ports), daemon=True)
    sink.start()
    try:
        results = uvloop.run(_time(ports.get(timeout=10), tls))
    finally:
        sink.kill()
    print(f"{MESSAGES} messages x {ROUNDS} rounds; CPU µs per message, best / median of rounds")
    print("| path | best | median |\n|---|---:|---:|")
    for path, times in results.items():
        ordered = sorted(times)
        print(f"| {path} | {ordered[0]:.1f} | {ordered[len(ordered) // 2]:.1f} |")


if __name__ == "__main__":
    main()
