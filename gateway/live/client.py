"""The one place a ``genai.Client`` is built, so every call dials Gemini the same way."""

from __future__ import annotations

import ssl
from typing import Any

from google import genai
from google.genai import types

from gateway.settings import Settings


def make_client(settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> genai.Client:
    """A client for the Live API, pinned to ``GEMINI_API_VERSION`` and ``GEMINI_BASE_URL``.

    ``ssl_context`` is only passed for the built-in simulator (whose throwaway CA nothing else
    trusts); otherwise the SDK's own default applies, which honours ``SSL_CERT_FILE``.
    ``close_timeout`` is short because a handoff waits for the old connection's close to
    complete (Gemini rejects a resume while it is open) and a silent peer must not stall a call.
    """
    if settings.gemini_api_key is None:
        raise ValueError("GEMINI_API_KEY is not set")
    ws_args: dict[str, Any] = {
        "open_timeout": 10,
        "close_timeout": 2,
        "ping_interval": settings.live_ping_interval,
        "ping_timeout": settings.live_ping_timeout,
    }
    if ssl_context is not None:
        ws_args["ssl"] = ssl_context
    return genai.Client(
        api_key=settings.gemini_api_key.get_secret_value(),
        http_options=types.HttpOptions(
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            async_client_args=ws_args,
        ),
    )
