"""How every model connection's websocket is dialled, whichever provider's SDK dials it."""

from __future__ import annotations

import ssl
from typing import Any

from gateway.settings import Settings


def websocket_options(
    settings: Settings, *, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """The ``websockets.connect`` options both SDKs pass through.

    The keepalive follows LIVE_PING_INTERVAL/TIMEOUT (generous: a missed pong kills the
    connection). ``close_timeout`` is short because a handoff waits for the old connection's
    close (Gemini rejects a resume while it is open) and a silent peer must not stall a call.
    ``ssl_context`` is only passed for the built-in simulators, whose throwaway CA nothing else
    trusts; otherwise the library's default context applies, which honours SSL_CERT_FILE.
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
