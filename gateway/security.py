"""Who may open a media stream: signed stream tokens and Twilio request signatures.

A stream URL is public by necessity (the carrier dials it), so a stream is only bridged when
its ``start`` carries a token the gateway minted when it answered that call's webhook. The
token is an HMAC over the carrier, the call id and an expiry, under ``GATEWAY_SECRET``: any
replica holding the secret can check it without shared state, it cannot be moved to another
call, and it is worthless minutes later. Opening a Gemini session costs money, so an
unauthenticated stream must never get one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from twilio.request_validator import RequestValidator

TOKEN_VERSION = "v1"


class StreamTokens:
    """Mints and checks stream tokens; pure (the clock is passed in)."""

    def __init__(self, secret: bytes, *, ttl_s: float = 120.0) -> None:
        if len(secret) < 16:
            raise ValueError("the stream token secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def ephemeral(cls, *, ttl_s: float = 120.0) -> StreamTokens:
        """A per-process secret: fine for one replica, wrong for several (set GATEWAY_SECRET)."""
        return cls(secrets.token_bytes(32), ttl_s=ttl_s)

    def mint(self, carrier: str, call_id: str, now: float) -> str:
        expires = int(now + self.ttl_s)
        return f"{TOKEN_VERSION}.{expires}.{self._sign(carrier, call_id, expires)}"

    def check(self, token: str | None, carrier: str, call_id: str, now: float) -> str | None:
        """None if ``token`` authorises this stream, else why not (for the log)."""
        if not token:
            return "no stream token"
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_VERSION or not parts[1].isdigit():
            return "malformed stream token"
        expires = int(parts[1])
        if not hmac.compare_digest(parts[2], self._sign(carrier, call_id, expires)):
            return "stream token does not match this call"
        if now > expires:
            return "stream token expired"
        return None

    def _sign(self, carrier: str, call_id: str, expires: int) -> str:
        message = f"{TOKEN_VERSION}|{carrier}|{call_id}|{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def twilio_signature_valid(
    auth_token: str, url: str, params: Mapping[str, str] | object, signature: str | None
) -> bool:
    """``X-Twilio-Signature`` check with Twilio's own validator (URL + sorted form params)."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))
