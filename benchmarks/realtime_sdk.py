"""What one Realtime message costs on the openai SDK's paths the gateway does not use, against
the ones it does: serialising caller audio, and parsing model audio. No network: only the
per-message work in front of (or behind) the socket, which both paths share.

Run by hand (not a test)::

    .venv/bin/python benchmarks/realtime_sdk.py

Per 20 ms μ-law caller frame (160 bytes), from the bytes to the text handed to the socket:

- SDK: ``AsyncRealtimeConnection.send({...})`` builds the text with
  ``json.dumps(await async_maybe_transform(event, Union[RealtimeClientEventParam,
  ResponseCreateEventWithReferencesParam]))`` (then ``send_raw``, which adds a send-queue check);
- gateway: ``gateway.realtime.session._append``, the JSON written by hand, sent with the
  socket's own ``send``.

Per received audio delta (``response.output_audio.delta`` as the Realtime simulator sends it,
40 ms of μ-law), from the frame's bytes to the audio bytes:

- SDK: ``connection.recv()`` = ``parse_event(recv_bytes())``: ``json.loads`` and pydantic model
  construction (``construct_type_unchecked`` over the ``RealtimeServerEvent`` union), then
  base64 of ``event.delta``;
- gateway: ``recv_bytes()`` + ``json.loads`` + base64, and the same through the gateway's whole
  per-event step (``RealtimeReader.feed``: barge-in bookkeeping, heard-audio accounting).

Each figure is the median over rounds of the mean of a round (min in brackets), in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Union

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
from openai._utils import async_maybe_transform  # noqa: E402
from openai.resources.realtime.realtime import AsyncRealtimeConnection  # noqa: E402
from openai.types.realtime import ResponseAudioDeltaEvent  # noqa: E402
from openai.types.realtime.realtime_client_event_param import (  # noqa: E402
    RealtimeClientEventParam,
)
from openai.types.realtime.response_create_event_with_references_param import (  # noqa: E402
    ResponseCreateEventWithReferencesParam,
)

from gateway.audio.g711 import ulaw_encode  # noqa: E402
from gateway.realtime.protocol import RealtimeReader  # noqa: E402
from gateway.realtime.session import _append  # noqa: E402

#: The type the SDK's ``send`` transforms a dict with (openai/resources/realtime/realtime.py).
CLIENT_EVENT = Union[RealtimeClientEventParam, ResponseCreateEventWithReferencesParam]  # noqa: UP007


def _ulaw_tone(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(8 * ms) / 8000
    pcm = (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()
    return ulaw_encode(pcm)


def _delta_frame(audio: bytes) -> bytes:
    """A ``response.output_audio.delta`` as the simulator puts it on the wire."""
    event = {
        "type": "response.output_audio.delta",
        "event_id": "event_C2Hk6bQ8mZ1pXr4tVq9sL",
        "response_id": "resp_C2Hk6bN3wQ7yTz5uPa1dE",
        "item_id": "item_C2Hk6bR9kS2vXc8nMf4gH",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }
    return json.dumps(event, separators=(",", ":")).encode()


async def _time(step: Callable[[], Awaitable[Any]], n: int, rounds: int) -> tuple[float, float]:
    """(median, min) over ``rounds`` of the mean µs per call of ``n`` awaited calls."""
    means = []
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter_ns()
        for _ in range(n):
            await step()
        means.append((time.perf_counter_ns() - started) / n / 1000)
    return statistics.median(means), min(means)


def _sync(function: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def step() -> Any:
        return function()

    return step


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    frame = _ulaw_tone(20)
    wire = _delta_frame(_ulaw_tone(40))
    # Nothing on these paths reads the connection: parse_event only uses its argument.
    connection = object.__new__(AsyncRealtimeConnection)

    async def sdk_send() -> str:
        event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}
        return json.dumps(await async_maybe_transform(event, CLIENT_EVENT))

    def gateway_send() -> str:
        return _append(frame)

    def sdk_recv() -> bytes:
        event = connection.parse_event(wire)
        assert isinstance(event, ResponseAudioDeltaEvent)
        return base64.b64decode(event.delta)

    def gateway_recv() -> bytes:
        return base64.b64decode(json.loads(wire)["delta"])

    reader = RealtimeReader(bytes_per_ms=8.0)

    def gateway_feed() -> Any:
        return reader.feed(json.loads(wire))

    # Both paths say the same thing.
    assert json.loads(await sdk_send()) == json.loads(gateway_send())
    assert sdk_recv() == gateway_recv() == reader.feed(json.loads(wire))[0].pcm  # type: ignore[union-attr]

    cases: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("send 20 ms μ-law frame", "SDK: json.dumps(async_maybe_transform(dict))", sdk_send),
        ("send 20 ms μ-law frame", "gateway: _append (hand-serialised)", _sync(gateway_send)),
        ("recv 40 ms audio delta", "SDK: parse_event (pydantic) + b64decode", _sync(sdk_recv)),
        ("recv 40 ms audio delta", "gateway: json.loads + b64decode", _sync(gateway_recv)),
        ("recv 40 ms audio delta", "gateway: json.loads + RealtimeReader.feed",
         _sync(gateway_feed)),
    ]  # fmt: skip
    print(f"Python {platform.python_version()}, openai {openai.__version__}, "
          f"{platform.machine()}; {args.rounds} rounds of {args.n} messages")  # fmt: skip
    print(f"caller frame: {len(frame)} bytes μ-law -> {len(gateway_send())} bytes of JSON; "
          f"audio delta: {len(wire)} bytes of JSON\n")  # fmt: skip
    print("| message | path | µs per message, median (min) |\n|---|---|---:|")
    for message, path, step in cases:
        median, best = await _time(step, args.n, args.rounds)
        print(f"| {message} | {path} | {median:.2f} ({best:.2f}) |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
