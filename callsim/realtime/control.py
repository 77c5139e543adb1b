"""HTTP control routes of the Realtime simulator, for tests that run it in another process.
Same style as the Live simulator's (``callsim.live.control``): arguments in the query string,
JSON answers ``{"ok": true, "affected": n}`` or ``{"error": "..."}`` with status 400::

    GET  /_sim/health
    GET  /_sim/connections                       JSON digest of every connection (no audio, no keys)
    POST /_sim/close?code=1011&reason=x&which=latest|all|<index>     (code=1006: drop the TCP)
    POST /_sim/inject?event=<url-encoded JSON>&which=latest
    POST /_sim/fail-connects?n=1&status=503 | &error_code=invalid_api_key&error_type=...&message=
    POST /_sim/expire?which=latest
    POST /_sim/fail-responses?n=1&error_type=server_error&error_code=
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from callsim.live.control import CONTROL_PREFIX, QueryArgs, Which
from callsim.realtime.events import JsonObject
from callsim.realtime.records import RealtimeConnectionRecord


class Controllable(Protocol):
    """The fault hooks of :class:`~callsim.realtime.server.RealtimeSimulator`."""

    @property
    def connections(self) -> Sequence[RealtimeConnectionRecord]: ...

    async def close(self, code: int, reason: str = "", which: Which = "latest") -> int: ...

    async def inject(self, event: JsonObject, which: Which = "latest") -> int: ...

    async def expire(self, which: Which = "latest") -> int: ...

    def fail_next_connects(
        self,
        n: int,
        *,
        status: int | None = None,
        error_code: str | None = None,
        error_type: str = "invalid_request_error",
        message: str = "",
    ) -> None: ...

    def fail_next_responses(
        self, n: int, *, error_type: str = "server_error", error_code: str | None = None
    ) -> None: ...


async def handle_control(sim: Controllable, method: str, target: str) -> tuple[int, JsonObject]:
    """Run one control request; return the HTTP status and the JSON body."""
    route = target.split("?", 1)[0].removeprefix(CONTROL_PREFIX).strip("/")
    args = QueryArgs(target)
    reads: dict[str, Callable[[], JsonObject]] = {
        "health": lambda: {"ok": True},
        "connections": lambda: {"connections": [c.summary() for c in sim.connections]},
    }
    actions: dict[str, Callable[[], Coroutine[Any, Any, int | None]]] = {
        "close": lambda: sim.close(args.integer("code", 1000), args.text("reason"), args.which()),
        "inject": lambda: sim.inject(args.json_object("event"), args.which()),
        "expire": lambda: sim.expire(args.which()),
        "fail-connects": lambda: _fail_connects(sim, args),
        "fail-responses": lambda: _fail_responses(sim, args),
    }
    try:
        if route in reads:
            if method != "GET":
                return 405, {"error": f"use GET for /_sim/{route}"}
            return 200, reads[route]()
        if route in actions:
            if method != "POST":
                return 405, {"error": f"use POST for /_sim/{route}"}
            affected = await actions[route]()
            return 200, {"ok": True} if affected is None else {"ok": True, "affected": affected}
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 404, {"error": f"unknown control route /_sim/{route}"}


async def _fail_connects(sim: Controllable, args: QueryArgs) -> None:
    status = args.integer("status", 0)
    sim.fail_next_connects(
        args.integer("n", 1),
        status=status or None,
        error_code=args.text("error_code") or None,
        error_type=args.text("error_type", "invalid_request_error"),
        message=args.text("message"),
    )


async def _fail_responses(sim: Controllable, args: QueryArgs) -> None:
    sim.fail_next_responses(
        args.integer("n", 1),
        error_type=args.text("error_type", "server_error"),
        error_code=args.text("error_code") or None,
    )
