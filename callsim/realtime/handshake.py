"""The HTTP side of a Realtime connection: what the upgrade request must carry and the JSON error
bodies the API answers a refused one with. Pure functions over the raw target and headers.

Refusals (``{"error": {"message", "type", "param", "code"}}`` bodies, as the REST API's):

* a path other than ``/v1/realtime``: 404, ``Invalid URL (GET /path)``;
* no ``?model=``: 400 ``missing_required_parameter`` (ASSUMPTION: status and code not verified);
* no ``Authorization: Bearer <key>``: 401 with the API's "You didn't provide an API key" message
  and ``code: null`` (ASSUMPTION: as the REST API answers; not verified on the websocket).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from callsim.live.handshake import query_params

REALTIME_PATH = "/v1/realtime"

_DEFAULT_MESSAGES = {
    400: "Bad request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "The requested resource was not found.",
    429: "Rate limit reached. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
_DEFAULT_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error"}


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer to an upgrade request that is not let through."""

    status: int
    body: dict[str, Any]

    def text(self) -> str:
        return json.dumps(self.body) + "\n"


def error_body(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>``, if one is there."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def check_request(method_path: str, target: str, headers: Mapping[str, str]) -> Refusal | None:
    """Why the API would refuse this upgrade request, or None to accept it."""
    path = target.split("?", 1)[0]
    if path.rstrip("/") != REALTIME_PATH:
        return Refusal(
            404,
            error_body(f"Invalid URL ({method_path} {path})", "invalid_request_error", None),
        )
    if bearer_key(headers) is None:
        return Refusal(
            401,
            error_body(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            ),
        )
    if not model_of(target):
        return Refusal(
            400,
            error_body(
                "Missing required parameter: 'model'.",
                "invalid_request_error",
                "missing_required_parameter",
                "model",
            ),
        )
    return None


def model_of(target: str) -> str:
    values = query_params(target).get("model") or [""]
    return values[-1].strip()


def injected_refusal(
    status: int, error_type: str | None, error_code: str | None, message: str
) -> Refusal:
    """The answer of a ``fail_next_connects(status=...)`` handshake."""
    return Refusal(
        status,
        error_body(
            message or _DEFAULT_MESSAGES.get(status, "Simulated failure."),
            error_type or _DEFAULT_TYPES.get(status, "invalid_request_error"),
            error_code,
        ),
    )
