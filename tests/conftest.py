"""Shared fixtures."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from callsim.telnyx.api import TelnyxApiSimulator
from gateway.logs import redact_secrets
from tests.fake_gateways import telnyx, twilio

#: The call-record tests' databases (a fresh SQLite file, a fresh PostgreSQL database).
pytest_plugins = ("tests.databases",)


@pytest.fixture(autouse=True)
def _no_call_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways started by a test (in process or as a ``gateway serve`` subprocess) keep no
    call records unless the test asks for them: DATABASE_URL's default would otherwise leave
    a ``calls.db`` in the working directory. The record tests set their own."""
    monkeypatch.setenv("DATABASE_URL", "")


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


# --- fake gateways for the caller simulators (tests.fake_gateways) ------------------------------


@pytest.fixture(scope="module")
def twilio_gateway() -> Iterator[twilio.TwilioGateway]:
    """One fake Twilio-side gateway per test module, started once; see ``twilio_gw``."""
    with twilio.TwilioGateway() as gateway:
        yield gateway


@pytest.fixture
def twilio_gw(twilio_gateway: twilio.TwilioGateway) -> twilio.TwilioGateway:
    """The module's fake Twilio-side gateway, with no calls yet and the default behaviour."""
    return twilio_gateway.reset(twilio.Behaviour())


@pytest.fixture(scope="module")
def telnyx_api() -> Iterator[TelnyxApiSimulator]:
    """One fake Call Control API per module (it runs in its own thread; each call registers
    its own id)."""
    simulator = TelnyxApiSimulator()
    asyncio.run(simulator.__aenter__())
    yield simulator
    asyncio.run(simulator.__aexit__(None, None, None))


@pytest.fixture(scope="module")
def telnyx_gateway() -> Iterator[telnyx.TelnyxGateway]:
    """One fake Telnyx-side gateway per test module, started once; see ``telnyx_gw``."""
    with telnyx.TelnyxGateway() as gateway:
        yield gateway


@pytest.fixture
def telnyx_gw(
    telnyx_gateway: telnyx.TelnyxGateway, telnyx_api: TelnyxApiSimulator
) -> telnyx.TelnyxGateway:
    """The module's fake Telnyx-side gateway, with no calls yet and the default behaviour,
    driving the module's fake Call Control API."""
    behaviour = telnyx.Behaviour(api_base=telnyx_api.base_url, api_key=telnyx_api.api_key)
    return telnyx_gateway.reset(behaviour)
