"""What the agent does to the call besides talking: its tools, ending the call, transferring it.

Each takes a while (an HTTP request, a goodbye still playing, a carrier's API) and none may hold
up the call meanwhile: caller audio, barge-in and keypresses go on. So each runs on a *side
task* the call owns, and the call is told when it must end (``end``). The rules:

- an HTTP tool's answer goes back to the model; a tool still running when the call hands off,
  reconnects or ends is cancelled, since its answer could only be late;
- ``end_call`` (or a quiet line the agent said goodbye to) ends the call once the model has
  finished its turn and the carrier has played it (a mark), at most :data:`FAREWELL_MAX_S`;
- ``transfer_call`` lets the notice play, has the carrier transfer the caller, and answers the
  tool call with the outcome: a refused transfer leaves the caller with the agent, who is told;
- once the call is ending, new tool calls get an error answer.

The bridge keeps the playback (``played_out``: the caller has heard everything queued) and the
model session; this module keeps the agent's intentions and their side tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.agents import Agent
from gateway.call.emitter import CallEvents
from gateway.call.hooks import CallActionError, CallHooks
from gateway.call.http_tools import HttpToolRunner
from gateway.call.stats import AGENT_ENDED, CallStats
from gateway.call.tools import (
    TRANSFER_DONE,
    EndCallRequest,
    HttpToolRequest,
    TransferRequest,
    transfer_failed,
)
from gateway.carriers.base import StreamStarted
from gateway.model.events import ToolCall
from gateway.model.session import ModelSession

#: The longest the gateway waits for a farewell or a transfer notice to finish playing.
FAREWELL_MAX_S = 10.0
#: How long a transfer already placed with the carrier is given to answer when the carrier has
#: ended the stream first (it does so as soon as it takes the call).
SETTLE_S = 5.0

#: What the agent asks of the call (a handoff is the bridge's own business).
ActionRequest = EndCallRequest | TransferRequest | HttpToolRequest
#: Starts a side task of the call (owned: cancelled and awaited when the call ends).
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class CallActions:
    """One call's agent actions and their side tasks."""

    def __init__(
        self,
        *,
        events: CallEvents,
        stats: CallStats,
        hooks: CallHooks,
        tool_runner: HttpToolRunner | None,
        spawn: Spawn,
        played_out: Callable[[], Awaitable[None]],
        speaking: Callable[[], bool],
        end: Callable[[str], None],
    ) -> None:
        self._events = events
        self._stats = stats
        self._hooks = hooks
        self._tool_runner = tool_runner
        self._spawn = spawn
        self._played_out = played_out
        self._speaking = speaking
        self._end = end
        self._live: ModelSession | None = None
        self._started: StreamStarted | None = None
        #: HTTP tool calls still running, by tool call id.
        self._tools: dict[str, asyncio.Task[None]] = {}
        #: Set by each end of a model turn (:meth:`turn_completed`).
        self._turn_done = asyncio.Event()
        self._transfer: asyncio.Task[None] | None = None
        #: The carrier has been asked to transfer the call (its answer may still be on its way).
        self._transfer_placed = False
        #: The agent is ending or transferring the call: no new tools, no idle prompts.
        self.ending = False
        #: Where the call was transferred to, once the carrier took it.
        self.transferred_to: str | None = None

    def begin(self, live: ModelSession, started: StreamStarted) -> None:
        self._live, self._started = live, started

    @property
    def tools_running(self) -> bool:
        return bool(self._tools)

    def turn_completed(self) -> None:
        self._turn_done.set()

    async def refuse_while_ending(self, call: ToolCall) -> bool:
        """Answer a tool call that comes while the call is ending; True if it was."""
        if not self.ending:
            return False
        assert self._live is not None
        await self._live.send_tool_response(
            call.call_id, call.name, {"error": "the call is ending"}
        )
        return True

    def take(
        self, request: EndCallRequest | TransferRequest | HttpToolRequest, agent: Agent
    ) -> None:
        """Carry out an accepted request on a side task."""
        if isinstance(request, EndCallRequest):
            self._events.emit("call.end_requested", by="agent", _private={"reason": request.reason})
            self.end_after_farewell("agent_ended")
        elif isinstance(request, TransferRequest):
            self.ending = True
            self._transfer = self._spawn(self._transfer_call(request), "transfer")
        else:
            task = self._spawn(self._run_http_tool(request, agent), f"tool:{request.tool.name}")
            self._tools[request.call.call_id] = task

    # ------------------------------------------------------------------ HTTP tools

    async def _run_http_tool(self, request: HttpToolRequest, agent: Agent) -> None:
        """Call the business's API; meanwhile the call goes on (audio, barge-in, keys)."""
        live, call, events = self._live, request.call, self._events
        assert live is not None
        try:
            if self._tool_runner is None:
                response: dict[str, Any] = {"error": "tools are not available on this line"}
                ok, ms, status = False, 0.0, None
            else:
                outcome = await self._tool_runner.run(
                    request.tool, call.args, call_id=events.call_id, agent_id=agent.id
                )
                response, ok, ms, status = outcome.response, outcome.ok, outcome.ms, outcome.status
            events.emit(
                "tool.completed",
                tool=call.name,
                ok=ok,
                ms=round(ms, 1),
                status=status,
                # The arguments are the caller's data; a tool marked redact keeps them to itself.
                _private={} if request.tool.redact else {"arguments": dict(call.args)},
            )
            if not ok:
                self._stats.error("tool")
            await live.send_tool_response(call.call_id, call.name, response)
        finally:
            self._tools.pop(call.call_id, None)

    def cancel_tools(self, call_ids: tuple[str, ...] | None = None) -> None:
        """Cancel running tool calls (all, or those ids): their answers could only be late."""
        for call_id in list(self._tools) if call_ids is None else call_ids:
            task = self._tools.pop(call_id, None)
            if task is not None:
                task.cancel()
                self._events.emit("tool.cancelled", tool=task.get_name().removeprefix("tool:"))

    # ------------------------------------------------------------------ ending the call

    def end_after_farewell(self, reason: str) -> None:
        """End the call with ``reason`` once the agent's current turn has played out."""
        self.ending = True
        self._turn_done.clear()
        self._spawn(self._farewell_then_end(reason), "farewell")

    async def _farewell_then_end(self, reason: str) -> None:
        """Wait for the model to finish its turn (the goodbye may follow the tool answer) and
        for the carrier to have played it, at most :data:`FAREWELL_MAX_S`.

        Gemini's order of ``turnComplete`` around a tool call is not documented, so a turn
        that ends before the goodbye has begun is not trusted: if the model is speaking again
        once the played-out mark returns, the next turn's end is awaited too.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FAREWELL_MAX_S):
                while True:
                    await self._turn_done.wait()
                    self._turn_done.clear()
                    await self._played_out()
                    if not self._speaking():
                        break
        self._events.emit("call.ending", reason=reason)
        self._end(reason)

    async def end_at_carrier(self, end_reason: str) -> bool:
        """The agent ended the call: end it at the carrier *before* the stream closes (on
        Twilio, closing first would run the fallback verbs after ``</Connect>``). True if the
        carrier took care of it."""
        hook = self._hooks.end_call
        if end_reason not in AGENT_ENDED or hook is None or self._started is None:
            return False
        try:
            await hook(self._started)
        except Exception as exc:  # the hang-up hook, or closing the stream, still ends it
            self._stats.error("end_call")
            self._events.log.warning("call.end_call_failed", error=str(exc))
            return False
        return True

    # ------------------------------------------------------------------ transfers

    async def _transfer_call(self, request: TransferRequest) -> None:
        """Let the agent's notice play, have the carrier transfer the caller, and answer the
        tool call with the outcome."""
        live, started, call, events = self._live, self._started, request.call, self._events
        assert live is not None
        assert started is not None
        events.emit("transfer.requested", to=request.name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FAREWELL_MAX_S):
                await self._played_out()
        hook = self._hooks.transfer
        try:
            if hook is None:
                raise CallActionError("transfers are not available on this line")
            self._transfer_placed = True
            await hook(started, request.destination)
        except Exception as exc:
            problem = str(exc) if isinstance(exc, CallActionError) else "the carrier refused it"
            self.ending = self._transfer_placed = False
            self._stats.error("transfer")
            events.emit("transfer.failed", to=request.name, error=problem)
            await live.send_tool_response(
                call.call_id, call.name, transfer_failed(request.name, problem)
            )
            return
        self.transferred_to = request.destination
        events.emit("call.transferred", to=request.name, destination=request.destination)
        await live.send_tool_response(call.call_id, call.name, dict(TRANSFER_DONE))
        self._end("transferred")

    async def settle_transfer(self) -> None:
        """A carrier that takes a transferred call ends its stream at once, which can reach
        the call before the transfer's own answer: give a transfer already placed a moment.
        A caller gone before it was placed is not held up (nor transferred)."""
        transfer = self._transfer
        if self._transfer_placed and transfer is not None and not transfer.done():
            await asyncio.wait({transfer}, timeout=SETTLE_S)
