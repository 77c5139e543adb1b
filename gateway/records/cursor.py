"""Paging cursors for record searches: where the previous page ended, as an opaque string.

Results are ordered newest first by (``started_at``, ``call_id``), so the last row of a page
pins down where the next begins whatever is inserted meanwhile (keyset paging: no OFFSET that
shifts under new calls, and each page is an index range). The cursor is that key, JSON then
base64url without padding: safe in a query string, and meaningless to edit. Anything that does
not decode to such a key is a ``ValueError``, which the admin API answers with 400.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime

from gateway.records.times import as_utc


def encode_cursor(started_at: datetime, call_id: str) -> str:
    # Microseconds, not the documents' milliseconds: the key must equal the stored value.
    raw = json.dumps([as_utc(started_at).isoformat(), call_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, call_id = json.loads(raw)
        if not isinstance(started, str) or not isinstance(call_id, str):
            raise ValueError
        return as_utc(datetime.fromisoformat(started)), call_id
    except (ValueError, TypeError):  # bad base64, bad JSON, bad shape, bad timestamp
        raise ValueError("malformed cursor") from None
