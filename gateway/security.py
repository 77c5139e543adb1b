"""Who may open a media stream: signed stream tokens, one stream per call, Twilio signatures.

A stream URL is public by necessity (the carrier dials it), so a stream is only bridged when it
presents a token the gateway minted when it answered that call's webhook. The token names the
call and carries an expiry, signed with an HMAC under ``GATEWAY_SECRET``: any replica holding
the secret can check it without shared state, it cannot be moved to another call or carrier,
and it is worthless minutes later. Because it names its call, it can be checked at the
websocket upgrade, before the socket costs anything, when it travels in the stream URL's path.

Opening a Gemini session costs money, so an unauthenticated stream must never get one, and one
token must never get two: :class:`StreamLedger` admits one stream per call (the workers of one
``gateway serve`` share ``gateway.claims.SharedStreamLedger`` instead; both are
:class:`StreamClaims`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from twilio.request_validator import RequestValidator

TOKEN_VERSION = "v2"
#: ``v2.<call id, base64url>.<expiry, unix seconds>.<signature, base64url>``: every character
#: is safe in a URL path segment, and the whole stays well under Twilio's 500-character
#: ``<Parameter>`` limit for any call id the gateway accepts.
_TOKEN = re.compile(r"v2\.([A-Za-z0-9_-]{2,344})\.([0-9]{1,12})\.([A-Za-z0-9_-]{32})")
#: Longest token text looked at; anything longer is refused before any parsing.
MAX_TOKEN_CHARS = 400
#: Longest call id a token is minted for (Twilio's CallSid is 34, Telnyx's ids ~70).
MAX_CALL_ID = 256


class StreamTokenError(ValueError):
    """A stream token that does not admit the stream; the message says why (for the log)."""

    #: The ``gateway_errors_total`` kind it is counted as.
    kind = "stream_auth"


class StreamReusedError(StreamTokenError):
    """A valid token whose call has had its stream already."""

    kind = "stream_reused"


@dataclass(frozen=True, slots=True)
class StreamGrant:
    """What a valid token admits: one stream of this carrier for this call, until ``expires``."""

    carrier: str
    call_id: str
    expires: int


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
        if not 0 < len(call_id.encode()) <= MAX_CALL_ID:
            raise ValueError("call id out of range for a stream token")
        expires = int(now + self.ttl_s)
        encoded = base64.urlsafe_b64encode(call_id.encode()).decode().rstrip("=")
        return f"{TOKEN_VERSION}.{encoded}.{expires}.{self._sign(carrier, call_id, expires)}"

    def verify(self, token: object, carrier: str, now: float) -> StreamGrant:
        """The grant ``token`` carries for ``carrier``; raises :class:`StreamTokenError`.

        Every field is bounded by the pattern before it is converted, so no token text — a
        5000-digit expiry, a ``²``, a megabyte of junk — can raise anything else.
        """
        if not token:
            raise StreamTokenError("no stream token")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise StreamTokenError("malformed stream token")
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise StreamTokenError("malformed stream token")
        encoded, expiry, signature = match.groups()
        try:
            call_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            raise StreamTokenError("malformed stream token") from None
        expires = int(expiry)
        if not hmac.compare_digest(signature, self._sign(carrier, call_id, expires)):
            raise StreamTokenError("stream token not signed for this carrier by this gateway")
        if now > expires:
            raise StreamTokenError("stream token expired")
        return StreamGrant(carrier, call_id, expires)

    def check(self, token: object, carrier: str, call_id: str, now: float) -> StreamGrant:
        """:meth:`verify`, and the token must be for ``call_id`` (the stream's own call)."""
        grant = self.verify(token, carrier, now)
        if grant.call_id != call_id:
            raise StreamTokenError("stream token was minted for another call")
        return grant

    def _sign(self, carrier: str, call_id: str, expires: int) -> str:
        message = f"{TOKEN_VERSION}|{carrier}|{call_id}|{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()


class StreamClaims(Protocol):
    """Which calls have had their stream, as the web layer asks it (see :class:`StreamLedger`)."""

    def claim(self, grant: StreamGrant, now: float) -> bool:
        """Record the call's stream; False if it already had one."""
        ...

    def release(self, grant: StreamGrant) -> None:
        """Undo a claim whose stream was passed on, unopened."""
        ...

    def streamed(self, carrier: str, call_id: str, now: float) -> bool:
        """Whether this call has had its stream (a webhook for it now is a replay)."""
        ...


class StreamLedger:
    """Which calls have had their stream: a token admits one stream, however often shown.

    Twilio allows one bidirectional stream per call and never reconnects it, and Telnyx allows
    one bidirectional RTP stream per call, so a second stream for a call is a replay, never the
    carrier. Entries are kept for ``retention_s`` (at least the token lifetime, after which the
    token is refused anyway; longer, so that a replayed signed webhook's fresh token for a call
    already streamed is refused too) and at most ``max_entries``, oldest dropped first.

    This is one process's memory: replicas do not share it (see the README, Security); the
    workers of one ``gateway serve`` share ``gateway.claims.SharedStreamLedger``.
    """

    def __init__(self, *, retention_s: float, max_entries: int = 100_000) -> None:
        self.retention_s = retention_s
        self.max_entries = max_entries
        self._claimed: dict[tuple[str, str], float] = {}  # insertion order = claim order

    def claim(self, grant: StreamGrant, now: float) -> bool:
        """Record the call's stream; False if it already had one."""
        self._forget_before(now - self.retention_s)
        key = (grant.carrier, grant.call_id)
        if key in self._claimed:
            return False
        self._claimed[key] = now
        while len(self._claimed) > self.max_entries:
            del self._claimed[next(iter(self._claimed))]
        return True

    def release(self, grant: StreamGrant) -> None:
        """Undo a claim whose stream was passed on to another replica, unopened."""
        self._claimed.pop((grant.carrier, grant.call_id), None)

    def streamed(self, carrier: str, call_id: str, now: float) -> bool:
        """Whether this call has had its stream (a webhook for it now is a replay)."""
        self._forget_before(now - self.retention_s)
        return (carrier, call_id) in self._claimed

    def __len__(self) -> int:
        return len(self._claimed)

    def _forget_before(self, cutoff: float) -> None:
        while self._claimed:
            key, claimed_at = next(iter(self._claimed.items()))
            if claimed_at >= cutoff:
                return  # claims are in time order: everything after is newer
            del self._claimed[key]


def twilio_signature_valid(
    auth_token: str, url: str, params: Mapping[str, str] | object, signature: str | None
) -> bool:
    """``X-Twilio-Signature`` check with Twilio's own validator (URL + sorted form params)."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))
