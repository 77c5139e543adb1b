"""HTTP tools: the model calls the business's own APIs, and hears back a JSON object.

An agent's HTTP tool is a URL, a method and secret headers (``gateway.agents.HttpTool``). When
the model calls it, :class:`HttpToolRunner` sends the model's arguments there and turns whatever
comes back into a function response the model can speak about: the answer's JSON object as is,
or ``{"error": ...}`` in words ("the orders service answered HTTP 503"). It never raises for a
failed tool: a tool that fails is something the agent tells the caller, not the end of the call.
It does let a cancellation through, so that the bridge can drop a tool whose call ended, handed
off or reconnected.

Three limits keep a misbehaving API from hurting the call or leaking through it:

* the whole request (connect, send, headers, body) is bounded by the tool's ``timeout_s``;
* at most 64 KB of an answer is read: the rest is never received, so an endless or huge body
  costs neither memory nor time (and the model could not use more anyway);
* redirects are not followed: the configured headers usually carry a credential, and following
  a ``Location`` would send it to whatever host the answer names.

The log holds one ``call.tool_http`` line per request: the tool's name, the target without its
query (a query may carry an API key), the status, the time and the outcome. Never the header
values, the arguments or the answer: those carry credentials and the caller's personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast
from urllib.parse import urlsplit

import httpx
import structlog

__all__ = ["MAX_BODY_BYTES", "HttpToolRunner", "HttpToolSpec", "ToolOutcome", "query_params"]

#: How much of an answer is read; the rest is cut (and a note tells the model so).
MAX_BODY_BYTES: Final = 64 * 1024
#: Headers the gateway sets on every request; an agent's configured headers cannot replace them
#: (the API may rely on them to tell calls apart, and must be able to trust them).
CALL_ID_HEADER: Final = "X-Callbridge-Call-Id"
AGENT_HEADER: Final = "X-Callbridge-Agent"
#: An error message from the API's body is passed to the model only when it is this short: a
#: long one is more likely a stack trace or an HTML page than words for a caller.
_SHORT_MESSAGE: Final = 200


class HttpToolSpec(Protocol):
    """What the runner needs of an HTTP tool's configuration (``gateway.agents.HttpTool``).

    A protocol rather than that class, so that this module depends only on the few attributes it
    reads (read-only properties, which a frozen dataclass or a pydantic model both satisfy).
    """

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def method(self) -> str: ...  # "GET" or "POST"
    @property
    def timeout_s(self) -> float: ...
    def header_values(self) -> dict[str, str]:
        """The configured headers with their secret values revealed."""
        ...


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One tool request: the function response for the model, and what the call record keeps."""

    #: Sent to the model as the function response: the API's JSON object, or ``{"result": ...}``
    #: / ``{"error": ...}``.
    response: dict[str, Any]
    #: The API answered 2xx (an answer cut at 64 KB still counts).
    ok: bool
    ms: float
    #: The HTTP status, or None when no whole answer came (timeout, unreachable, broken off,
    #: refused arguments).
    status: int | None


class _ToolError(Exception):
    """A request that produced no usable answer; ``outcome`` is the log's word for why."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class HttpToolRunner:
    """Runs HTTP tools for every call of the process through one pooled ``httpx.AsyncClient``.

    One per process (keep-alive connections to an API are shared by all calls); close it with
    :meth:`aclose` at shutdown. A client passed in (tests) is closed by :meth:`aclose` too.
    """

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        # No timeout of the client's own: each request is bounded by its tool's timeout_s, as a
        # whole (httpx's timeouts bound each phase separately, so a slow trickle never ends).
        self._client = client or httpx.AsyncClient(timeout=None, follow_redirects=False)
        self._log = structlog.get_logger("gateway.call")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(
        self, tool: HttpToolSpec, arguments: Mapping[str, Any], *, call_id: str, agent_id: str
    ) -> ToolOutcome:
        """Call ``tool`` with the model's ``arguments``; never raises but for cancellation.

        The arguments are passed on as they came, even where they do not match the tool's
        schema: the API validates its own input, and its error reaches the model. Only
        arguments that are not an object are refused (there is no body or query to make).
        """
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            if not isinstance(arguments, Mapping):
                raise _ToolError("refused", "the arguments must be a JSON object")
            async with asyncio.timeout(tool.timeout_s):
                status, response, outcome = await self._exchange(
                    tool, arguments, call_id=call_id, agent_id=agent_id
                )
        except _ToolError as failed:
            response, outcome = {"error": failed.message}, failed.outcome
        except (TimeoutError, httpx.TimeoutException):
            response = {"error": f"the {tool.name} service did not answer within "
                                 f"{tool.timeout_s:g} s"}  # fmt: skip
            outcome = "timeout"
        except (httpx.ConnectError, httpx.UnsupportedProtocol):
            response, outcome = {"error": f"could not reach the {tool.name} service"}, "unreachable"
        except httpx.LocalProtocolError:
            # What the gateway would send is not HTTP: a configured header value, mostly.
            response, outcome = {"error": f"the {tool.name} tool failed"}, "failed"
        except httpx.TransportError:
            # Connected, then the connection broke (reset, closed mid-answer, garbage).
            response = {"error": f"the connection to the {tool.name} service broke off"}
            outcome = "broken"
        except Exception as exc:  # a bad URL or header value in the configuration, mostly
            response, outcome = {"error": f"the {tool.name} tool failed"}, "failed"
            # The exception's type only: its message may quote the URL or a header value.
            error = type(exc).__name__
        ms = round((time.monotonic() - started) * 1000, 1)
        ok = outcome in ("ok", "cut")
        log = self._log.info if ok else self._log.warning
        log(
            "call.tool_http",
            name=tool.name,
            call_id=call_id,
            agent=agent_id,
            method=str(tool.method).upper(),
            target=_target(tool.url),
            status=status,
            ms=ms,
            outcome=outcome,
            **({"error": error} if error else {}),
        )
        return ToolOutcome(response, ok, ms, status)

    async def _exchange(
        self, tool: HttpToolSpec, arguments: Mapping[str, Any], *, call_id: str, agent_id: str
    ) -> tuple[int, dict[str, Any], str]:
        """One request: (status, function response, outcome)."""
        method = str(tool.method).upper()
        if method not in ("GET", "POST"):
            raise _ToolError("failed", f"the {tool.name} tool failed")
        headers = httpx.Headers({"Content-Type": "application/json", "Accept": "application/json"})
        for key, value in tool.header_values().items():
            if key.lower() not in (CALL_ID_HEADER.lower(), AGENT_HEADER.lower()):
                headers[key] = value
        headers[CALL_ID_HEADER] = call_id
        headers[AGENT_HEADER] = agent_id
        # Uncompressed, so that the 64 KB read bounds memory too (a compressed body may grow a
        # thousandfold when decoded).
        headers["Accept-Encoding"] = "identity"
        url = httpx.URL(tool.url)
        if method == "GET":  # added to the URL's own query (httpx's params= would replace it)
            url = url.copy_merge_params(tuple(query_params(arguments)))
        request = self._client.build_request(
            method,
            url,
            headers=headers,
            content=json.dumps(dict(arguments)).encode() if method == "POST" else None,
        )
        response = await self._client.send(request, stream=True, follow_redirects=False)
        try:
            body, cut = await _read_capped(response)
        finally:
            await response.aclose()
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if not 200 <= response.status_code < 300:
            outcome = "redirect" if 300 <= response.status_code < 400 else "http_status"
            return response.status_code, _error(tool.name, response.status_code, text), outcome
        if cut:
            # A cut JSON document is no longer JSON: the model gets the text it could read.
            cut_note = f"the response was cut at {MAX_BODY_BYTES // 1024} KB"
            return response.status_code, {"result": text, "note": cut_note}, "cut"
        return response.status_code, _result(text), "ok"


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """At most :data:`MAX_BODY_BYTES` of the body, and whether there was more.

    Stops reading at the limit: closing the response then drops the connection rather than
    drain the rest.
    """
    chunks: list[bytes] = []
    size = 0
    stream = cast(AsyncGenerator[bytes, None], response.aiter_bytes())  # closed if cut
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            room = MAX_BODY_BYTES - size
            if len(chunk) > room:
                chunks.append(chunk[:room])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks), False


def _result(text: str) -> dict[str, Any]:
    """A 2xx answer as a function response.

    A JSON object is the response as it is (the API designed it for this); any other JSON value,
    or text, is wrapped as ``{"result": ...}`` (a function response must be an object). An empty
    body (HTTP 204, or 200 with nothing) is ``{"result": "ok"}``: the model hears that the
    action was done, rather than an empty string it might read as a failure.
    """
    if not text.strip():
        return {"result": "ok"}
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _error(name: str, status: int, text: str) -> dict[str, Any]:
    """A non-2xx answer as words the agent can say, with the API's own reason when short."""
    if 300 <= status < 400:
        return {"error": f"the {name} service answered HTTP {status}, a redirect (not followed)"}
    reason = f"the {name} service answered HTTP {status}"
    message = _error_message(text)
    if message and len(message) <= _SHORT_MESSAGE:
        reason += f": {message}"
    return {"error": reason}


def _error_message(text: str) -> str | None:
    """The message of the usual JSON error shapes: ``{"error": "..."}``, ``{"error":
    {"message": "..."}}``, ``{"message": "..."}``, ``{"detail": "..."}``."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for key in ("error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def query_params(arguments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A GET tool's arguments as query parameters.

    Strings and numbers as they read, booleans as JSON spells them (``true``), a list as the key
    repeated once per item, an object (or a list's object) as compact JSON; a null is left out,
    as a missing optional parameter.
    """
    params: list[tuple[str, str]] = []
    for key, value in arguments.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                params.append((str(key), _query_value(item)))
    return params


def _query_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _target(url: str) -> str:
    """The URL as the log may show it: scheme, host and path (no query, no user info)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "[unparsable url]"
    return f"{parts.scheme}://{host}{port}{parts.path}"
