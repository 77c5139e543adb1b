"""The operational routes: ``GET /healthz`` (200 while the process is up), ``GET /readyz`` (200
while taking calls, 503 while draining or full), ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.web.state import GatewayState


def add_operational_routes(app: FastAPI, state: GatewayState) -> None:
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
