"""The event loop's pacing (gateway.pacing): on a real loop, with a real socket and real load."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.aio import cancel_and_wait
from gateway.pacing import LoopPacer
from tests.harness import running
from tests.servers import until


class _Reads(asyncio.Protocol):
    """Counts the reads the loop makes from a socket, and the bytes they bring."""

    def __init__(self) -> None:
        self.reads = 0
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.received += len(data)


@contextlib.asynccontextmanager
async def _reading() -> AsyncIterator[tuple[socket.socket, _Reads]]:
    """A connected socket pair: the far end to write to, and what this loop reads of it."""
    ours, far = socket.socketpair()
    transport, reads = await asyncio.get_running_loop().connect_accepted_socket(_Reads, ours)
    try:
        yield far, reads
    finally:
        transport.close()
        far.close()


@contextlib.contextmanager
def _writing(far: socket.socket, *, every_s: float) -> Iterator[threading.Event]:
    """A thread writing a byte to ``far`` every ``every_s`` (a peer's messages) until done."""
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            far.send(b"x")
            time.sleep(every_s)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        done.set()
        thread.join()


@contextlib.asynccontextmanager
async def _pacer(pacer: LoopPacer) -> AsyncIterator[LoopPacer]:
    task = asyncio.create_task(pacer.run())
    try:
        yield pacer
    finally:
        await cancel_and_wait(task)


async def test_a_paced_loop_reads_what_arrived_over_a_window_together() -> None:
    """Messages every 0.5 ms: woken for each, the loop reads about one byte a read; paced with
    a 10 ms window, about twenty, and it reads everything that was written."""
    always = LoopPacer(0.010, on_share=0.0, off_share=0.0)
    async with _reading() as (far, reads), _pacer(always) as pacer:
        await until(lambda: pacer.pacing)
        with _writing(far, every_s=0.0005):
            await asyncio.sleep(0.5)
        written_at_least = reads.received
        await asyncio.sleep(0.05)
        assert reads.received >= written_at_least
        assert reads.received / reads.reads >= 5, (reads.received, reads.reads)
        assert pacer.paced >= 10
        # Never more than a window asleep per iteration: nothing waited longer for the loop.
        assert pacer.slept_s <= pacer.paced * pacer.window_s


async def test_an_unpaced_loop_reads_each_message_as_it_comes() -> None:
    """The control: the same writes, no pacing (its threshold is never reached)."""
    async with _reading() as (far, reads), _pacer(LoopPacer(0.010, on_share=1.5)) as pacer:
        with _writing(far, every_s=0.0005):
            await asyncio.sleep(0.5)
        assert not pacer.pacing and pacer.paced == 0
        assert reads.received / reads.reads < 3, (reads.received, reads.reads)


async def test_pacing_starts_while_the_process_is_busy_and_stops_after() -> None:
    """A thread spinning makes the process busy: pacing starts within a few checks; once it
    stops, pacing stops too, and the loop blocks in its poll again."""
    pacer = LoopPacer(0.002, on_share=0.5, off_share=0.3, check_s=0.05)
    async with _pacer(pacer):
        await asyncio.sleep(0.3)
        assert not pacer.pacing  # an idle test process
        spinning = threading.Event()
        spinning.set()

        def spin() -> None:
            while spinning.is_set():
                pass

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        try:
            await until(lambda: pacer.pacing)
            paced = pacer.paced
            await asyncio.sleep(0.1)
            assert pacer.paced > paced
        finally:
            spinning.clear()
            thread.join()
        await until(lambda: not pacer.pacing)
        await asyncio.sleep(0.05)
        paced = pacer.paced
        await asyncio.sleep(0.2)
        assert pacer.paced == paced  # the callback is no longer queued


async def test_a_stopped_pacer_leaves_nothing_queued() -> None:
    pacer = LoopPacer(0.002, on_share=0.0, off_share=0.0)
    async with _pacer(pacer):
        await until(lambda: pacer.paced > 3)
    assert not pacer.pacing
    await asyncio.sleep(0.05)
    paced = pacer.paced
    await asyncio.sleep(0.1)
    assert pacer.paced == paced


@pytest.mark.parametrize(
    ("window_s", "on", "off", "message"),
    [
        (0.0, 0.1, 0.05, "window_s must be positive"),
        (-1.0, 0.1, 0.05, "window_s must be positive"),
        (0.002, 0.1, 0.2, "off_share <= on_share"),
        (0.002, 0.1, -0.1, "0 <= off_share"),
    ],
)
def test_a_pacer_refuses_a_window_or_thresholds_that_make_no_sense(
    window_s: float, on: float, off: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LoopPacer(window_s, on_share=on, off_share=off)


@pytest.mark.parametrize("pacing_ms", [2.0, 0.0])
async def test_the_gateway_paces_its_loop_unless_told_not_to(pacing_ms: float) -> None:
    """LOOP_PACING_MS: the served app runs a pacer task for its lifetime (0: none), and a
    call still goes through it."""
    steps = [Step(on="caller", say="hello there", seconds=0.5)]
    async with running(steps=steps, loop_pacing_ms=pacing_ms) as h:
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert ("loop-pacer" in names) == bool(pacing_ms)
        result = await h.call([Tone(300, 0.6), Silence(1.5)], linger_s=0.2)
        assert result.media_bytes_received > 0
    assert "loop-pacer" not in {task.get_name() for task in asyncio.all_tasks()}


async def _iterations_take(count: int) -> float:
    """How long ``count`` iterations of the running loop take, each yielding once."""
    started = time.monotonic()
    for _ in range(count):
        await asyncio.sleep(0)
    return time.monotonic() - started


@pytest.mark.parametrize(("busy_pct", "paced"), [(0.0, True), (100.0, False)])
async def test_the_busy_threshold_decides_when_the_served_loop_is_paced(
    busy_pct: float, paced: bool
) -> None:
    """LOOP_PACING_BUSY_PCT: at 0 the app's loop (this test's: the server runs in it) is paced
    from the first measurement on, even idle, so each of its iterations waits out a window;
    at 100 an idle loop is never paced, and iterations do not wait."""
    window_s, iterations = 0.010, 30  # the widest window: paced and not stay far apart
    async with running(loop_pacing_ms=window_s * 1000, loop_pacing_busy_pct=busy_pct):
        await asyncio.sleep(0.6)  # two of the pacer's measurements
        took = await _iterations_take(iterations)
    if paced:
        assert took >= iterations * window_s * 0.9  # a window each, less the clock's grain
    else:
        assert took < iterations * window_s * 0.5  # idle, each takes microseconds
