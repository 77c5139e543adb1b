"""``POST /admin/reload``: re-read agents.yaml without a restart, as SIGHUP does.

For deployments where signalling the process is awkward (a container platform, a replica
behind a load balancer): the same reload as SIGHUP (:meth:`GatewayState.reload_agents`), with
the outcome in the answer, so a deploy script can tell a good file from a broken one. The
route exists only with ADMIN_API_TOKEN set and answers 401 without that token. With several
workers the request reaches one of them, which answers for itself and has the master signal
the others, as SIGHUP to the master does.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from gateway.web.auth import admin_guard
from gateway.web.state import GatewayState


def add_reload_routes(app: FastAPI, state: GatewayState) -> None:
    @app.post("/admin/reload", dependencies=[Depends(admin_guard(state.settings))])
    async def reload_agents() -> JSONResponse:
        """200 with the agents and model now in force; 422 with the file's problem (the old
        configuration stays in force)."""
        result = await state.reload_agents()
        if state.reload_others is not None:  # every worker serves the file read, good or bad
            state.reload_others()
        if not result.ok:
            return JSONResponse({"status": "error", "error": result.error}, status_code=422)
        body = {"status": "reloaded", "agents": list(result.agents), "model": result.model}
        return JSONResponse(body)
