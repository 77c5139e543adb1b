"""HTTP control routes of the Live simulator, for tests that run it in another process.

Plain HTTP requests (not websocket upgrades) to ``/_sim/...`` on the simulator's port. Arguments
go in the query string, because the websocket server's HTTP parser accepts no request body::

    GET  /_sim/health
    GET  /_sim/connections                  JSON digest of every connection (no audio, no keys)
    GET  /_sim/sessions                     JSON digest of every logical session
    POST /_sim/close?code=1011&reason=x&which=latest|all|<index>
    POST /_sim/goaway?time_left=5s&close_after=2&which=latest
    POST /_sim/inject?message=<url-encoded JSON>&which=latest
    POST /_sim/fail-connects?n=1&code=1011&reason=x
    POST /_sim/forget-handles

Example: ``curl -k -X POST 'https://127.0.0.1:PORT/_sim/close?code=1011&reason=boom'``.
Responses are JSON: ``{"ok": true, "affected": 1}`` or ``{"error": "..."}`` with status 400
(the dispatch and the argument parsing are ``callsim.simcontrol``, shared with the Realtime
simulator).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from callsim.live.messages import JsonObject
from callsim.simcontrol import Actions, QueryArgs, Reads, call_sync, dispatch

if TYPE_CHECKING:
    from callsim.live.server import LiveSimulator


async def handle_control(sim: LiveSimulator, method: str, target: str) -> tuple[int, JsonObject]:
    """Run one control request; return the HTTP status and the JSON body."""
    args = QueryArgs(target)
    reads: Reads = {
        "health": lambda: {"ok": True},
        "connections": lambda: {"connections": [c.summary() for c in sim.connections]},
        "sessions": lambda: {"sessions": [s.summary() for s in sim.sessions.values()]},
    }
    actions: Actions = {
        "close": lambda: sim.close(args.integer("code", 1000), args.text("reason"), args.which()),
        "goaway": lambda: sim.go_away(
            args.duration("time_left", "10s"), args.number("close_after"), args.which()
        ),
        "inject": lambda: sim.inject(args.json_object("message"), args.which()),
        "fail-connects": lambda: call_sync(
            functools.partial(
                sim.fail_next_connects, after_setup=args.text("after_setup") in ("1", "true")
            ),
            args.integer("n", 1),
            args.integer("code", 1011),
            args.text("reason", "simulated connect failure"),
        ),
        "forget-handles": lambda: call_sync(sim.forget_handles),
    }
    return await dispatch(method, target, reads, actions)
