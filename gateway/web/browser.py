"""Calls from a browser: ``POST /web/calls`` issues one, ``WS /web/stream[/<token>]`` carries it.

The browser is a third carrier (:mod:`gateway.carriers.web`): the same bridge, agents,
handoffs, records and console as a phone call, with wideband audio both ways. Opening a call
takes the admin's credential (the console's session cookie, or the bearer token for a
script), and then the same signed stream token as a carrier's stream: ``POST /web/calls``
plays the part of the carrier's webhook (it names the call and mints its token), and the
websocket presents the token in its path, or as ``customParameters.token`` in ``start``. So a
browser call is admitted, counted, limited and refused exactly like a phone call, and one token
opens one stream.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse

from gateway.call.hooks import CallHooks
from gateway.carriers.web import CARRIER, WebCodec
from gateway.web.auth import CHALLENGE, AdminAuth
from gateway.web.httputil import origin_url, read_body
from gateway.web.state import GatewayState
from gateway.web.streams import serve_stream

STREAM_PATH = "/web/stream"
#: Call and stream ids of browser calls: recognisable in logs and records, never a carrier's.
CALL_PREFIX = "WB"
STREAM_PREFIX = "WS"


def add_browser_routes(app: FastAPI, state: GatewayState) -> None:
    log = structlog.get_logger("gateway.web")
    auth = AdminAuth.of(state.settings)

    @app.post("/web/calls", dependencies=[Depends(auth.guard())], status_code=201)
    async def new_call(request: Request) -> JSONResponse:
        phase = _phase(await read_body(request))
        if phase is not None and not state.graph.has_phase(phase):
            known = ", ".join(state.graph.phases)
            raise HTTPException(422, f"phase {phase[:64]!r} is not a stage ({known})")
        refusal = state.refusal()
        if refusal is not None:
            raise HTTPException(503, f"not taking calls now ({refusal})")
        call_id = CALL_PREFIX + secrets.token_hex(16)
        token = state.tokens.mint(CARRIER, call_id, time.time())
        log.info("web.call_issued", call_id=call_id)
        body: dict[str, Any] = {
            "call_id": call_id,
            "stream_id": STREAM_PREFIX + secrets.token_hex(16),
            "token": token,
            # On the origin the browser used, not PUBLIC_URL: its session cookie is for that
            # host, and ``Origin`` is checked against it.
            "stream_url": origin_url(request, f"{STREAM_PATH}/{token}", ws=True),
            "expires_in": int(state.tokens.ttl_s),
        }
        if phase is not None:
            body["phase"] = phase
        return JSONResponse(body, 201)

    async def web_stream(websocket: WebSocket, token: str | None) -> None:
        if not auth.websocket_allowed(websocket):
            state.metrics.errors.labels("admin_auth").inc()
            state.log_refusal(log, "web.stream_refused", reason="no admin credential")
            await websocket.send_denial_response(
                PlainTextResponse("a valid admin token is needed", 401, headers=CHALLENGE)
            )
            return
        await serve_stream(
            state, websocket, carrier=CARRIER, codec=WebCodec(), hooks=CallHooks(), token=token
        )

    @app.websocket(STREAM_PATH)
    async def web_stream_bare(websocket: WebSocket) -> None:
        await web_stream(websocket, None)

    @app.websocket(STREAM_PATH + "/{token}")
    async def web_stream_with_token(websocket: WebSocket, token: str) -> None:
        await web_stream(websocket, token)


def _phase(body: bytes | None) -> str | None:
    """The optional ``{"phase": …}`` of ``POST /web/calls``; 400 for a body that is not that."""
    if not body or not body.strip():
        return None
    try:
        data = json.loads(body)
    except ValueError:
        raise HTTPException(400, 'the body must be JSON: {} or {"phase": "<stage>"}') from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    phase = data.get("phase")
    if phase is None or phase == "":
        return None
    if not isinstance(phase, str):
        raise HTTPException(400, "phase must be a string")
    return phase
