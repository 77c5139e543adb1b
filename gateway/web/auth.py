"""The admin's credentials: ``Authorization: Bearer <ADMIN_API_TOKEN>``, or the console's
session cookie.

The admin routes (``/calls``, ``/admin/reload``, ``/console``, ``/web/…``) exist only when
ADMIN_API_TOKEN is set: a deployment that never asked for them exposes nothing. When they
exist, a request without a credential, or with a wrong one, gets 401 and nothing else (not
even whether a call id exists). Token comparisons take the same time whatever was sent.

Scripts send the token as a bearer header. People log in to the console once with a form
(:mod:`gateway.web.console`), which sets a session cookie, so the token never sits in a URL,
a bookmark or the browser's history. The cookie is:

- **signed, not stored**: ``v1.<expiry>.<nonce>.<HMAC>`` under a key derived from the admin
  token, so every replica with the same token accepts it, and changing the token ends every
  session at once;
- ``__Host-`` prefixed, ``Secure``, ``HttpOnly``, ``SameSite=Strict``: never sent over plain
  HTTP (browsers treat ``http://localhost`` and ``127.0.0.1`` as secure, so the demo works),
  never readable by script, never sent by another site's page;
- and, because a cookie is sent by the browser on its own, a request that changes something
  (any method but GET/HEAD, and every websocket upgrade) must also come from the gateway's own
  origin (``Origin``): another site cannot make a logged-in browser end a call or open one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, WebSocket
from starlette.requests import HTTPConnection

from gateway.settings import Settings
from gateway.web.httputil import request_origin

#: Sent with every 401, as RFC 6750 asks of a bearer-token API.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="callbridge"'}
SESSION_COOKIE: Final = "__Host-callbridge_console"
#: A console session lasts a working day; logging out or a new token ends it sooner.
SESSION_TTL_S: Final = 12 * 3600
_SESSION = re.compile(r"v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{16})\.([0-9a-f]{64})")
_SAFE_METHODS = frozenset({"GET", "HEAD"})


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


class ConsoleSessions:
    """Issues and checks console session cookie values; pure (the clock is passed in)."""

    def __init__(self, admin_token: str, *, ttl_s: float = SESSION_TTL_S) -> None:
        # A key of its own: a cookie value never reveals anything that verifies a bearer token.
        self._key = hmac.new(
            admin_token.encode(), b"callbridge console session v1", hashlib.sha256
        ).digest()
        self.ttl_s = ttl_s

    def issue(self, now: float) -> str:
        expires = int(now + self.ttl_s)
        nonce = secrets.token_urlsafe(12)
        return f"v1.{expires}.{nonce}.{self._sign(expires, nonce)}"

    def valid(self, value: str | None, now: float) -> bool:
        if not value or len(value) > 120:
            return False
        match = _SESSION.fullmatch(value)
        if match is None:
            return False
        expiry, nonce, signature = match.groups()
        if not hmac.compare_digest(signature, self._sign(int(expiry), nonce)):
            return False
        return now <= int(expiry)

    def _sign(self, expires: int, nonce: str) -> str:
        return hmac.new(self._key, f"{expires}.{nonce}".encode(), hashlib.sha256).hexdigest()


class AdminAuth:
    """Who may use the admin routes: the bearer token, or a console session from our origin."""

    def __init__(self, admin_token: str) -> None:
        self._token = admin_token
        self.sessions = ConsoleSessions(admin_token)

    @classmethod
    def of(cls, settings: Settings) -> AdminAuth:
        """Only called when ADMIN_API_TOKEN is set (the routes do not exist otherwise)."""
        assert settings.admin_api_token is not None
        return cls(settings.admin_api_token.get_secret_value())

    def token_valid(self, offered: str | None) -> bool:
        return token_valid(self._token, offered)

    def credential(self, connection: HTTPConnection) -> str | None:
        """``bearer`` or ``session`` for a connection that carries a valid one, else None."""
        if self.token_valid(bearer_token(connection.headers.get("authorization"))):
            return "bearer"
        if self.sessions.valid(connection.cookies.get(SESSION_COOKIE), time.time()):
            return "session"
        return None

    def allows(self, connection: HTTPConnection, *, changes: bool) -> bool:
        """Whether the connection is the admin's; ``changes``: it acts (a cookie alone, which
        the browser attaches by itself, must then come with our own ``Origin``)."""
        credential = self.credential(connection)
        if credential == "session" and changes:
            return same_origin(connection)
        return credential is not None

    def guard(self) -> Callable[[Request], None]:
        """A FastAPI dependency: 401 unless :meth:`allows`."""

        def require_admin(request: Request) -> None:
            if not self.allows(request, changes=request.method not in _SAFE_METHODS):
                raise HTTPException(401, "a valid admin token is needed", headers=CHALLENGE)

        return require_admin

    def websocket_allowed(self, websocket: WebSocket) -> bool:
        """A websocket upgrade acts (it opens a call), whatever credential it carries."""
        return self.allows(websocket, changes=True)


def same_origin(connection: HTTPConnection) -> bool:
    """Whether the browser says the request comes from a page of this gateway: its
    ``Origin`` names the host the request was sent to (as the proxy in front saw it)."""
    origin = connection.headers.get("origin")
    if not origin or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request_origin(connection)[1].lower()


def admin_guard(settings: Settings) -> Callable[[Request], None]:
    """The dependency that lets a request through only with the admin's credential."""
    return AdminAuth.of(settings).guard()
