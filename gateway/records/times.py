"""Timestamps of call records: always timezone-aware UTC inside the store, and ISO 8601 with a
``Z`` and milliseconds (``2026-12-06T09:00:00.123Z``) in the record documents.

One convention in one place, because the same instant travels through three representations
(the document's string, a database column, a paging cursor) and must compare equal in each.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive one is taken to be UTC already (SQLite keeps no zone, and
    a record written without one was written by this gateway, in UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """A document's timestamp (``...Z`` or ``...+00:00``) as an aware UTC datetime."""
    return as_utc(datetime.fromisoformat(text))


def format_time(value: datetime) -> str:
    """The documents' form: UTC, milliseconds, ``Z``."""
    return as_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(text: str) -> datetime:
    """``since``: an ISO 8601 date or time (``2026-12-06``, ``2026-12-06T09:00:00Z``; a time
    without a zone is UTC), or Unix seconds (``1796547600``)."""
    text = text.strip()
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            "since must be an ISO 8601 date or time, e.g. 2026-12-06T09:00:00Z"
        ) from None
    return as_utc(moment)
