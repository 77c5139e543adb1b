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
Responses are JSON: ``{"ok": true, "affected": 1}`` or ``{"error": "..."}`` with status 400.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, Protocol

from callsim.live.handshake import query_params
from callsim.live.messages import JsonObject
from callsim.live.records import ConnectionRecord, SessionRecord

CONTROL_PREFIX = "/_sim"
Which = Literal["latest", "all"] | int


class Controllable(Protocol):
    """The fault hooks of :class:`~callsim.live.server.LiveSimulator`."""

    @property
    def connections(self) -> Sequence[ConnectionRecord]: ...

    @property
    def sessions(self) -> dict[int, SessionRecord]: ...

    async def close(self, code: int, reason: str = "", which: Which = "latest") -> int: ...

    async def go_away(
        self,
        time_left: str | float = "10s",
        close_after: float | None = None,
        which: Which = "latest",
    ) -> int: ...

    async def inject(self, message: JsonObject, which: Which = "latest") -> int: ...

    def fail_next_connects(
        self, n: int, code: int = 1011, reason: str = "", *, after_setup: bool = False
    ) -> None: ...

    def forget_handles(self) -> None: ...


def is_control_path(target: str) -> bool:
    path = target.split("?", 1)[0]
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


async def handle_control(sim: Controllable, method: str, target: str) -> tuple[int, JsonObject]:
    """Run one control request; return the HTTP status and the JSON body."""
    route = target.split("?", 1)[0].removeprefix(CONTROL_PREFIX).strip("/")
    args = QueryArgs(target)
    reads: dict[str, Callable[[], JsonObject]] = {
        "health": lambda: {"ok": True},
        "connections": lambda: {"connections": [c.summary() for c in sim.connections]},
        "sessions": lambda: {"sessions": [s.summary() for s in sim.sessions.values()]},
    }
    actions: dict[str, Callable[[], Coroutine[Any, Any, int | None]]] = {
        "close": lambda: sim.close(args.integer("code", 1000), args.text("reason"), args.which()),
        "goaway": lambda: sim.go_away(
            args.duration("time_left", "10s"), args.number("close_after"), args.which()
        ),
        "inject": lambda: sim.inject(args.json_object("message"), args.which()),
        "fail-connects": lambda: _sync(
            functools.partial(
                sim.fail_next_connects, after_setup=args.text("after_setup") in ("1", "true")
            ),
            args.integer("n", 1),
            args.integer("code", 1011),
            args.text("reason", "simulated connect failure"),
        ),
        "forget-handles": lambda: _sync(sim.forget_handles),
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


async def _sync(function: Callable[..., None], *args: object) -> None:
    function(*args)


class QueryArgs:
    """Typed access to query parameters; raises ValueError with the parameter's name. Shared
    with the Realtime simulator's control routes (``callsim.realtime.control``)."""

    def __init__(self, target: str) -> None:
        self._params = query_params(target)

    def text(self, name: str, default: str = "") -> str:
        values = self._params.get(name)
        return values[-1] if values else default

    def integer(self, name: str, default: int) -> int:
        raw = self.text(name)
        try:
            return int(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None

    def number(self, name: str) -> float | None:
        raw = self.text(name)
        try:
            return float(raw) if raw else None
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    def duration(self, name: str, default: str) -> str | float:
        raw = self.text(name, default)
        try:
            return float(raw)
        except ValueError:
            return raw

    def which(self) -> Which:
        raw = self.text("which", "latest")
        if raw == "latest":
            return "latest"
        if raw == "all":
            return "all"
        try:
            return int(raw)
        except ValueError:
            raise ValueError(
                f"which must be latest, all or a connection index, got {raw!r}"
            ) from None

    def json_object(self, name: str) -> JsonObject:
        raw = self.text(name)
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValueError(f"{name} must be a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a JSON object")
        return value
