"""The HTTP control routes both model simulators serve on their websocket port (``/_sim/...``,
for tests that run a simulator in another process): which requests are control requests, typed
access to their query-string arguments, the GET/POST dispatch with its JSON answers, and the JSON
response itself. Each simulator's ``control`` module (``callsim.live.control``,
``callsim.realtime.control``) only names its routes and what they call, so a test client sees
the same status codes and error bodies from either simulator.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from callsim.live.handshake import query_params

CONTROL_PREFIX = "/_sim"
Which = Literal["latest", "all"] | int
JsonObject = dict[str, Any]

#: GET routes: what they answer.
Reads = Mapping[str, Callable[[], JsonObject]]
#: POST routes: run the hook; it returns how many connections it affected, or None.
Actions = Mapping[str, Callable[[], Awaitable[int | None]]]


def is_control_path(target: str) -> bool:
    path = target.split("?", 1)[0]
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


async def dispatch(
    method: str, target: str, reads: Reads, actions: Actions
) -> tuple[int, JsonObject]:
    """Run one control request against the routes; return the HTTP status and the JSON body.

    A ValueError from a route (a bad argument) is a 400 with its message."""
    route = target.split("?", 1)[0].removeprefix(CONTROL_PREFIX).strip("/")
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


async def call_sync(function: Callable[..., None], *args: object) -> None:
    """Run a synchronous hook as an action (actions are awaited)."""
    function(*args)


def json_response(connection: ServerConnection, status: int, body: str) -> Response:
    """An HTTP answer with a JSON body (the websockets server would say text/plain)."""
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class QueryArgs:
    """Typed access to query parameters; raises ValueError with the parameter's name."""

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
