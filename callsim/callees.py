"""The callees of calls a fake carrier API placed (Twilio "Create a Call", Telnyx "Dial").

Both fakes answer the REST request at once and let a simulated callee pick up on the gateway's
webhook; a test then waits for that callee's record of the call. This keeps those callees as
tasks of the loop they run in, by call id, so a test can await one and the fake can end those
still on the line when it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from callsim.callers.result import CallResult


class Callees:
    """Running callees by call id; see the module docstring."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[CallResult]] = {}

    def start(self, call_id: str, run: Coroutine[Any, Any, CallResult], name: str) -> None:
        """Run a callee (call from the loop it is to run in)."""
        self._tasks[call_id] = asyncio.get_running_loop().create_task(run, name=name)

    async def result(self, call_id: str, within_s: float = 30.0) -> CallResult:
        """The callee's record of ``call_id``, once that call has ended."""
        async with asyncio.timeout(within_s):
            while call_id not in self._tasks:  # noqa: ASYNC110 (started by the fake's server)
                await asyncio.sleep(0.01)
            return await asyncio.shield(self._tasks[call_id])

    async def end_all(self) -> None:
        """End the callees still on the line (their calls end as a hang-up would)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
