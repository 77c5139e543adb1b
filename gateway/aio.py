"""Small asyncio helpers for owning tasks correctly."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel ``tasks`` and wait until they have really finished.

    Unlike ``with suppress(CancelledError): await task``, this does not swallow a cancellation
    aimed at the *caller* while it waits, and it retrieves each task's exception so none is
    reported later as "never retrieved".
    """
    owned = [t for t in tasks if t is not None]
    pending = [t for t in owned if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in owned:
        if not task.cancelled():
            task.exception()
