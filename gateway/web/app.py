"""The app factory: the ASGI app, its lifespan, and which routes it serves.

Routes: the operational ones (:mod:`gateway.web.ops`) always; each carrier's
(:mod:`gateway.web.twilio`, :mod:`gateway.web.telnyx`) only when it is in ``CARRIERS``; the
admin API's (:mod:`gateway.web.admin`, :mod:`gateway.web.outbound`,
:mod:`gateway.web.reload`), the console (:mod:`gateway.web.console`) and browser calls
(:mod:`gateway.web.browser`) only when ADMIN_API_TOKEN is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from gateway.aio import cancel_and_wait
from gateway.pacing import LoopPacer
from gateway.web.admin import add_admin_routes
from gateway.web.browser import add_browser_routes
from gateway.web.console import add_console_routes
from gateway.web.feed import LiveFeed
from gateway.web.ops import add_operational_routes
from gateway.web.outbound import add_outbound_routes
from gateway.web.reload import add_reload_routes
from gateway.web.state import GatewayState
from gateway.web.telnyx import add_telnyx_routes
from gateway.web.twilio import add_twilio_routes


def create_app(state: GatewayState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        background = [asyncio.create_task(state.metrics.watch_event_loop_lag(), name="lag-probe")]
        pacing_ms = state.settings.loop_pacing_ms
        if pacing_ms:
            busy = state.settings.loop_pacing_busy_pct / 100
            pacer = LoopPacer(pacing_ms / 1000, on_share=busy)
            background.append(asyncio.create_task(pacer.run(), name="loop-pacer"))
        try:
            yield
        finally:
            await cancel_and_wait(*background)
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

    add_operational_routes(app, state)
    # The admin API exists only when its token is set: nothing to guess at otherwise (404).
    if state.settings.admin_api_token is not None:
        add_admin_routes(app, state)  # GET /calls, GET /calls/{call_id}
        add_outbound_routes(app, state)  # POST /calls
        add_reload_routes(app, state)  # POST /admin/reload
        if state.feed is None:  # the console's live view exists with the console
            state.feed = LiveFeed()
        add_console_routes(app, state, state.feed)  # /console…
        add_browser_routes(app, state)  # POST /web/calls, WS /web/stream

    # A carrier not served has no routes at all: its webhooks answer 404, and its stream
    # upgrades are refused (Starlette denies a websocket no route matches with 403).
    if "twilio" in state.settings.served_carriers:
        add_twilio_routes(app, state)
    if "telnyx" in state.settings.served_carriers:
        add_telnyx_routes(app, state)
    return app
