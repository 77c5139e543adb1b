"""The HTTP side of a Gemini Live connection: which request targets are the Live endpoint and
where the client's credential is. Pure functions over the raw request target and headers.

The target is never parsed with ``urlsplit``: the SDK can send ``//ws/...`` (a base_url ending in
``/``), which urlsplit would read as a network location.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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
