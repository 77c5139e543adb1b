"""HTTP control routes of the Realtime simulator, for tests that run it in another process.
Same style as the Live simulator's (``callsim.live.control``; both use ``callsim.simcontrol``):
arguments in the query string, JSON answers ``{"ok": true, "affected": n}`` or
``{"error": "..."}`` with status 400::

    GET  /_sim/health
    GET  /_sim/connections                       JSON digest of every connection (no audio, no keys)
    POST /_sim/close?code=1011&reason=x&which=latest|all|<index>     (code=1006: drop the TCP)
    POST /_sim/inject?event=<url-encoded JSON>&which=latest
    POST /_sim/fail-connects?n=1&status=503 | &error_code=invalid_api_key&error_type=...&message=
    POST /_sim/expire?which=latest
    POST /_sim/fail-responses?n=1&error_type=server_error&error_code=
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callsim.realtime.events import JsonObject
from callsim.simcontrol import Actions, QueryArgs, Reads, dispatch

if TYPE_CHECKING:
    from callsim.realtime.server import RealtimeSimulator


async def handle_control(
    sim: RealtimeSimulator, method: str, target: str
) -> tuple[int, JsonObject]:
    """Run one control request; return the HTTP status and the JSON body."""
    args = QueryArgs(target)
    reads: Reads = {
        "health": lambda: {"ok": True},
        "connections": lambda: {"connections": [c.summary() for c in sim.connections]},
    }
    actions: Actions = {
        "close": lambda: sim.close(args.integer("code", 1000), args.text("reason"), args.which()),
        "inject": lambda: sim.inject(args.json_object("event"), args.which()),
        "expire": lambda: sim.expire(args.which()),
        "fail-connects": lambda: _fail_connects(sim, args),
        "fail-responses": lambda: _fail_responses(sim, args),
    }
    return await dispatch(method, target, reads, actions)


async def _fail_connects(sim: RealtimeSimulator, args: QueryArgs) -> None:
    status = args.integer("status", 0)
    sim.fail_next_connects(
        args.integer("n", 1),
        status=status or None,
        error_code=args.text("error_code") or None,
        error_type=args.text("error_type", "invalid_request_error"),
        message=args.text("message"),
    )


async def _fail_responses(sim: RealtimeSimulator, args: QueryArgs) -> None:
    sim.fail_next_responses(
        args.integer("n", 1),
        error_type=args.text("error_type", "server_error"),
        error_code=args.text("error_code") or None,
    )
