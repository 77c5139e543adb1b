"""The one place a ``genai.Client`` is built, so every call dials Gemini the same way."""

from __future__ import annotations

import ssl

from google import genai
from google.genai import types

from gateway.model.websocket import websocket_options
from gateway.settings import Settings


def make_client(settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> genai.Client:
    """A client for the Live API, pinned to ``GEMINI_API_VERSION`` and ``GEMINI_BASE_URL``;
    its websockets are dialled as every model connection is (:func:`websocket_options`)."""
    if settings.gemini_api_key is None:
        raise ValueError("GEMINI_API_KEY is not set")
    ws_args = websocket_options(settings, ssl_context=ssl_context)
    return genai.Client(
        api_key=settings.gemini_api_key.get_secret_value(),
        http_options=types.HttpOptions(
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            async_client_args=ws_args,
        ),
    )
