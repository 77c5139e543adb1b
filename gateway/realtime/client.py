"""The one place an ``AsyncOpenAI`` client is built, so every call dials Realtime the same way."""

from __future__ import annotations

import ssl
from typing import Any

from openai import AsyncOpenAI

from gateway.settings import Settings


def make_openai_client(settings: Settings) -> AsyncOpenAI:
    """A client for OPENAI_BASE_URL (default ``https://api.openai.com/v1``) with OPENAI_API_KEY.

    The realtime socket is ``<base>/realtime?model=…`` with ``https``→``wss``; TLS trust is
    given per connection (:func:`websocket_options`), not here: the HTTP client is never used.
    """
    if settings.openai_api_key is None:
        raise ValueError("OPENAI_API_KEY is not set")
    return AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=0,
    )


def websocket_options(
    settings: Settings, *, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """What the SDK passes to ``websockets.connect`` for each Realtime connection.

    The keepalive follows LIVE_PING_INTERVAL/TIMEOUT like the Gemini side's; ``close_timeout``
    is short so a silent peer cannot hold a handoff or the end of a call. ``max_size`` stays
    unlimited as the SDK sets it (a session's ``session.updated`` echoes the whole config).
    ``ssl_context`` is only passed for the built-in simulator; otherwise websockets' default
    context applies, which honours SSL_CERT_FILE.
    """
    options: dict[str, Any] = {
        "open_timeout": 10,
        "close_timeout": 2,
        "ping_interval": settings.live_ping_interval,
        "ping_timeout": settings.live_ping_timeout,
    }
    if ssl_context is not None:
        options["ssl"] = ssl_context
    return options
