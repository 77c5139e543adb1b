"""The HTTP side of a Gemini Live connection: which request targets are the Live endpoint and
where the client's credential is, and how to keep it out of logs. Pure functions over the raw
request target and headers.

The target is never parsed with ``urlsplit``: the SDK can send ``//ws/...`` (a base_url ending in
``/``), which urlsplit would read as a network location.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

PATH_RE = re.compile(
    r"^/+ws/google\.ai\.generativelanguage\.(?P<version>v1|v1beta|v1alpha)"
    r"\.GenerativeService\.(?P<method>BidiGenerateContent|BidiGenerateContentConstrained)$"
)


@dataclass(frozen=True)
class Endpoint:
    """What the request path names: API version and RPC method."""

    api_version: str
    method: str


def match_path(target: str) -> Endpoint | None:
    """Match a raw request target (path plus optional query) against the Live endpoint."""
    path = target.split("?", 1)[0]
    match = PATH_RE.match(path)
    if match is None:
        return None
    return Endpoint(api_version=match["version"], method=match["method"])


def query_params(target: str) -> dict[str, list[str]]:
    """The query parameters of a raw request target."""
    _, _, query = target.partition("?")
    return parse_qs(query, keep_blank_values=True)


def find_api_key(target: str, headers: Mapping[str, str]) -> str | None:
    """The credential the client presented, from any of the places the service reads it.

    ``x-goog-api-key`` (the SDK), ``?key=`` (raw clients), ``Authorization: Token ...`` and
    ``?access_token=`` (ephemeral tokens).
    """
    header_key = headers.get("x-goog-api-key", "").strip()
    if header_key:
        return header_key
    params = query_params(target)
    for name in ("key", "access_token"):
        for value in params.get(name, []):
            if value.strip():
                return value.strip()
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "token" and token.strip():
        return token.strip()
    return None


_SECRET_HEADERS = frozenset({"x-goog-api-key", "authorization"})
_SECRET_QUERY_RE = re.compile(r"(?P<name>[?&](?:key|access_token)=)[^&\s]*")


def redact_target(target: str) -> str:
    """The request target with ``key=`` and ``access_token=`` values replaced."""
    return _SECRET_QUERY_RE.sub(r"\g<name><redacted>", target)


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logger for the websockets library that keeps credentials out of its debug output.

    At DEBUG level websockets logs every handshake header and the request line, which carry the
    API key (``x-goog-api-key``, ``Authorization: Token``, ``?key=``).
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        cleaned = list(args)
        for index, arg in enumerate(cleaned):
            if not isinstance(arg, str):
                continue
            if arg.lower() in _SECRET_HEADERS and index + 1 < len(cleaned):
                cleaned[index + 1] = "<redacted>"
            cleaned[index] = redact_target(arg) if "=" in arg else arg
        super().log(level, msg, *cleaned, **kwargs)
