"""The HTTP surface: the app factory and the operational routes.

Carrier routes live in :mod:`gateway.twilio_routes` and :mod:`gateway.telnyx_routes` (only those
of the carriers in ``CARRIERS`` are registered); how their websockets become calls is
:mod:`gateway.streams`; what they share is :mod:`gateway.state`.

Operations: ``GET /healthz`` (200 while the process is up), ``GET /readyz`` (200 while taking
calls, 503 while draining or full), ``GET /metrics`` (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.aio import cancel_and_wait
from gateway.state import GatewayState
from gateway.telnyx_routes import add_telnyx_routes
from gateway.twilio_routes import add_twilio_routes


def create_app(state: GatewayState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        lag_probe = asyncio.create_task(state.metrics.watch_event_loop_lag(), name="lag-probe")
        try:
            yield
        finally:
            await cancel_and_wait(lag_probe)
        # Calls (and sockets not yet calls) still running at shutdown are ended: each bridge
        # closes both sides.
        tasks = [*state.calls, *state.pending]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await state.aclose()

    app = FastAPI(title="Callbridge gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(state.calls)})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        refusal = state.refusal()
        body = {"status": refusal or "ready", "active_calls": len(state.calls)}
        return JSONResponse(body, status_code=503 if refusal else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # A carrier not served has no routes at all: its webhooks answer 404, and its stream
    # upgrades are refused (Starlette denies a websocket no route matches with 403).
    if "twilio" in state.settings.served_carriers:
        add_twilio_routes(app, state)
    if "telnyx" in state.settings.served_carriers:
        add_telnyx_routes(app, state)
    return app
