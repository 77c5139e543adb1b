"""Shared fixtures."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway.logs import redact_secrets


class StructuredLogs:
    """Every log record of a test, the gateway's own (structlog) and the libraries' (stdlib)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    @property
    def records(self) -> list[logging.LogRecord]:
        """The records of the test's setup and call (``caplog.records`` alone is the current
        phase's: at teardown, only the teardown's)."""
        return self._caplog.get_records("setup") + self._caplog.get_records("call")

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The gateway's log events called ``name``, as the JSON objects that were written."""
        out = []
        for record in self.records:
            message = record.getMessage()
            if message.startswith("{") and f'"event": "{name}"' in message:
                out.append(json.loads(message))
        return out

    def tracebacks(self) -> list[str]:
        return [
            r.getMessage()
            for r in self.records
            if r.exc_info or "Traceback" in r.getMessage() or "Exception in ASGI" in r.getMessage()
        ]


@pytest.fixture
def structured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[StructuredLogs]:
    """Route structlog through stdlib logging, rendered as production renders it (JSON, secrets
    redacted, exceptions as text), so pytest captures every line at DEBUG; the test fails if
    any line holds a traceback."""
    caplog.set_level(logging.DEBUG)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    logs = StructuredLogs(caplog)
    try:
        yield logs
    finally:
        structlog.reset_defaults()
    assert not logs.tracebacks(), logs.tracebacks()
