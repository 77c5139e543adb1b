"""Small helpers for the routes' requests: the body or form of a client that may leave, the
public URL the carrier sees, and the answer that passes a refusal on to a retrying proxy."""

from __future__ import annotations

from fastapi import Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect, HTTPConnection

from gateway.settings import Settings

#: Sent by a reverse proxy that asks another replica when one answers 503 (deploy/nginx).
RETRY_HEADER = "x-callbridge-retry"


def proxy_retries(request: Request | WebSocket) -> bool:
    """Whether the proxy in front will ask another replica if this one answers 503.

    Then a refusal (draining, full) is passed on with 503 rather than answered with the final
    busy message, which the caller would hear although another replica has room. The proxy asks
    its last replica without the header, so some replica always gives the final answer.
    """
    return request.headers.get(RETRY_HEADER) == "503"


def pass_on(refusal: str) -> PlainTextResponse:
    """The answer that makes a retrying proxy ask another replica."""
    return PlainTextResponse(f"{refusal}: ask another replica", 503, headers={"Retry-After": "1"})


#: What a route answers a client that left before its request had arrived (nobody reads it).
CLIENT_GONE = Response(status_code=400)


async def read_body(request: Request) -> bytes | None:
    """The whole request body, or None if the client left first (the 10 s request deadline
    closes slow ones): that is the client's business, not an error with a traceback."""
    try:
        return await request.body()
    except ClientDisconnect:
        return None


async def read_form(request: Request) -> FormData | None:
    """The request's form, or None if the client left before sending it all."""
    try:
        return await request.form()
    except ClientDisconnect:
        return None


def public_url(request: Request | WebSocket, settings: Settings, path: str, *, ws: bool) -> str:
    """The URL of ``path`` as the carrier sees it (``wss://`` for streams).

    PUBLIC_URL wins when set; otherwise the URL is derived from the request as the proxy or
    tunnel saw it (X-Forwarded-Proto/Host, then Host), so ngrok and load balancers just work.
    Twilio signs exactly this URL, so the same derivation serves signature checks.
    """
    if settings.public_url is not None:
        base = settings.stream_base() if ws else settings.public_url
        assert base is not None
        return base + path
    return origin_url(request, path, ws=ws)


def request_origin(connection: HTTPConnection) -> tuple[bool, str]:
    """Whether the client used TLS, and the host it asked for, as the proxy or tunnel in front
    saw them (X-Forwarded-Proto/Host, then Host): what the client's own URL was."""
    headers = connection.headers
    proto = headers.get("x-forwarded-proto", connection.url.scheme).split(",")[0].strip()
    host = headers.get("x-forwarded-host") or headers.get("host") or connection.url.netloc
    return proto in ("https", "wss"), host.split(",")[0].strip()


def origin_url(connection: HTTPConnection, path: str, *, ws: bool) -> str:
    """``path`` on the origin the client used (``wss://`` for a websocket over TLS)."""
    secure, host = request_origin(connection)
    scheme = ("wss" if secure else "ws") if ws else ("https" if secure else "http")
    return f"{scheme}://{host}{path}"
