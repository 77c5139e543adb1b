"""The admin API's one credential: ``Authorization: Bearer <ADMIN_API_TOKEN>``.

The admin routes (``/calls``, ``/admin/reload``) exist only when ADMIN_API_TOKEN is set: a
deployment that never asked for them exposes nothing. When they exist, a request without the
token, or with another one, gets 401 and nothing else (not even whether a call id exists).
The comparison takes the same time whatever the token sent, so it cannot be guessed by timing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import HTTPException, Request

from gateway.settings import Settings

#: Sent with every 401, as RFC 6750 asks of a bearer-token API.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="callbridge"'}


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_valid(expected: str, offered: str | None) -> bool:
    if offered is None:
        return False
    return hmac.compare_digest(expected.encode(), offered.encode())


def admin_guard(settings: Settings) -> Callable[[Request], None]:
    """A FastAPI dependency that lets a request through only with the admin token.

    Only called when ADMIN_API_TOKEN is set (the routes do not exist otherwise).
    """
    assert settings.admin_api_token is not None
    expected = settings.admin_api_token.get_secret_value()

    def require_admin(request: Request) -> None:
        offered = bearer_token(request.headers.get("authorization"))
        if not token_valid(expected, offered):
            raise HTTPException(401, "a valid admin token is needed", headers=CHALLENGE)

    return require_admin
