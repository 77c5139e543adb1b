"""The one place an ``AsyncOpenAI`` client is built, so every call dials Realtime the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.settings import Settings

if TYPE_CHECKING:
    from openai import AsyncOpenAI


def make_openai_client(settings: Settings) -> AsyncOpenAI:
    """A client for OPENAI_BASE_URL (default ``https://api.openai.com/v1``) with OPENAI_API_KEY.

    The realtime socket is ``<base>/realtime?model=…`` with ``https``→``wss``; TLS trust is
    given per connection (:func:`gateway.model.websocket.websocket_options`), not here: the
    HTTP client is never used.
    """
    if settings.openai_api_key is None:
        raise ValueError("OPENAI_API_KEY is not set")
    # Imported here: the SDK costs ~0.5 s and ~10 MB to import, which a gateway whose agents
    # all run on Gemini need not pay.
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=0,
    )
