"""Structured logging: JSON lines in production, one bound context per call, no secrets.

Every library that logs through the standard ``logging`` module (uvicorn, websockets, the
google-genai SDK) is routed through the same structlog processors, so a deployment gets one
format and the secret scrubber sees every line, not only the gateway's own.

What never reaches a log, at any level: configured secrets (scrubbed wherever they appear),
stream tokens (recognised by their shape, and in stream URL paths), signature and
authorization headers, audio (the libraries that would log frames are held above DEBUG), and
transcript text unless ``LOG_TRANSCRIPTS=true`` (the bridge decides that). Phone numbers are
logged masked (:func:`mask_number`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

#: Keys whose values are never written, whatever they hold.
_SECRET_KEYS = frozenset(
    {"api_key", "apikey", "authorization", "auth_token", "token", "secret", "password",
     "x-goog-api-key", "x-twilio-signature", "gemini_api_key"}
)  # fmt: skip
_REDACTED = "[redacted]"
#: Stream tokens by shape (gateway.security), and whatever follows a stream route's path: a
#: token in a URL is logged by uvicorn itself ("WebSocket /twilio/stream/<token>" [accepted]).
_TOKEN_SHAPES = re.compile(
    r"v[0-9]\.[A-Za-z0-9_-]{2,}\.[0-9]{6,12}\.[A-Za-z0-9_-]{20,}"
    r"|(?<=/stream/)[^\s\"'?/]+"
    r"|(?i:(?<=x-twilio-signature: )|(?<=authorization: )|(?<=streaming-auth-token: ))"
    r"[^\r\n\"']+"
)

_secret_values: set[str] = set()


def mask_number(number: object) -> str:
    """A phone number as logs may show it: the last 4 digits (``***0100``); other caller ids
    (``client:alice``, ``sip:…``) as their kind only."""
    if not isinstance(number, str) or not number:
        return ""
    digits = [c for c in number if c.isdigit()]
    if len(digits) >= 7 and len(digits) >= len(number) - 3:
        return "***" + "".join(digits[-4:])
    return number.split(":", 1)[0] + ":***" if ":" in number else "***"


class PerConnectionLines(logging.Filter):
    """Drops uvicorn's and websockets' line-per-connection chatter ("connection open",
    ``"WebSocket /path" [accepted]``, "connection rejected (403 Forbidden)"): an access log the
    gateway does not keep (its own call events say more), and a flood of refused sockets would
    otherwise flood the log. Kept at DEBUG, where it helps and is scrubbed like everything."""

    _CHATTER = ("connection open", "connection closed", "connection rejected")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or logging.getLogger().level <= logging.DEBUG:
            return True
        message = str(record.msg)
        return not (message.startswith(self._CHATTER) or '"WebSocket %s"' in message)


def register_secrets(values: Iterable[str | None]) -> None:
    """Scrub these exact strings from every log line (keys, tokens), wherever they appear."""
    for value in values:
        if value and len(value) >= 6:
            _secret_values.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secret_values:
            if secret in value:
                value = value.replace(secret, _REDACTED)
        if "v" in value or "/stream/" in value or ": " in value:
            value = _TOKEN_SHAPES.sub(_REDACTED, value)
        return value
    if isinstance(value, dict):
        return {k: _REDACTED if str(k).lower() in _SECRET_KEYS else _scrub(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop secret-named fields and scrub registered secret values."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = _REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json", *, worker: int | None = None) -> None:
    """Install the processors for structlog and for stdlib loggers; safe to call again.

    ``worker``: this process is that worker of a ``gateway serve --workers N``, and every line
    says so (``"worker": 1``), the libraries' too: the workers share one log.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if worker is not None:
        shared.insert(1, _WorkerField(worker))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # At DEBUG, websockets and the SDK log whole frames: raw audio and, in handshakes, headers
    # (a Twilio stream upgrade's X-Twilio-Signature never changes for its URL, so it could be
    # replayed). uvicorn hands its own "uvicorn.error" logger to the websockets library, so it
    # logs the same frames and headers. None of that may reach a log: these stay at WARNING
    # (uvicorn's at INFO, its connection lines) even when the gateway is at DEBUG.
    for name in ("websockets", "google_genai", "openai", "httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.filters[:] = [PerConnectionLines()]
        logger.propagate = True
        logger.setLevel(max(logging.INFO, logging.getLevelName(level.upper())))


class _WorkerField:
    """structlog processor: the worker's index on every line."""

    def __init__(self, index: int) -> None:
        self._index = index

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("worker", self._index)
        return event_dict


def get_logger(name: str = "gateway") -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
