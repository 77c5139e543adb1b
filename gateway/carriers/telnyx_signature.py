"""Telnyx webhook signatures: Ed25519 over ``"{telnyx-timestamp}|{raw body}"``.

Pure functions over bytes and headers. The signed message is the body exactly as received —
never re-serialised JSON — and the timestamp must be within five minutes of now, which is what
stops a captured webhook from being replayed later.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOLERANCE_S = 300
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"


class SignatureError(ValueError):
    """Why a webhook was refused (for the log; the caller only sees 403)."""


def load_public_key(encoded: str) -> Ed25519PublicKey:
    """The base64 public key from the Telnyx portal (Keys & Credentials → Public Key)."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ValueError("must be the base64 Ed25519 public key (32 bytes) from Telnyx") from None


def verify(key: Ed25519PublicKey, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise :class:`SignatureError` unless ``body`` carries a fresh, valid Telnyx signature.

    ``headers`` must look names up case-insensitively (Starlette's do).
    """
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise SignatureError("missing Telnyx signature headers")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("malformed telnyx-timestamp") from None
    if abs(now - sent_at) > TOLERANCE_S:
        raise SignatureError("stale telnyx-timestamp (more than 300 s from now)")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
        key.verify(raw_signature, timestamp.encode() + b"|" + body)
    except (binascii.Error, ValueError, InvalidSignature):
        raise SignatureError("invalid Telnyx signature") from None
