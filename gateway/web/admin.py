"""The call records API: ``GET /calls`` (search, newest first, paged) and ``GET /calls/{id}``.

``limit`` over :data:`MAX_LIMIT` gets a full page (with ``next``), not an error.

Registered only when ADMIN_API_TOKEN is set, and every request needs that token
(:mod:`gateway.web.auth`). Records hold personal data (numbers, what was said), so the answer
to a missing or wrong token is 401 and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse

from gateway.records.record import END_REASONS
from gateway.records.recording import recording_path
from gateway.records.store import RecordStore
from gateway.records.times import parse_since
from gateway.web.auth import admin_guard
from gateway.web.state import GatewayState

#: Records per page unless ``limit`` says otherwise, and the most one page holds.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def add_admin_routes(app: FastAPI, state: GatewayState) -> None:
    guard = Depends(admin_guard(state.settings))

    def store() -> RecordStore:
        if state.records is None:
            raise HTTPException(503, "call records are off here (DATABASE_URL is empty)")
        return state.records.store

    @app.get("/calls", dependencies=[guard])
    async def list_calls(
        from_: Annotated[str | None, Query(alias="from", max_length=200)] = None,
        to: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[str | None, Query(max_length=64)] = None,
        agent: Annotated[str | None, Query(max_length=200)] = None,
        end_reason: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[str | None, Query(max_length=8)] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> JSONResponse:
        if end_reason is not None and end_reason not in END_REASONS:
            raise HTTPException(400, f"end_reason must be one of {', '.join(END_REASONS)}")
        try:
            calls, next_cursor = await store().search(
                from_=phone_number(from_),
                to=phone_number(to),
                since=parse_since(since) if since else None,
                agent=agent or None,
                end_reason=end_reason,
                limit=parse_limit(limit),
                cursor=cursor or None,
            )
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse({"calls": calls, "next": next_cursor})

    @app.get("/calls/{call_id}", dependencies=[guard])
    async def show_call(call_id: str) -> JSONResponse:
        record = await store().get(call_id[:200])
        if record is None:
            raise HTTPException(404, "no record of that call")
        return JSONResponse(record)

    @app.get("/calls/{call_id}/recording", dependencies=[guard])
    async def call_recording(call_id: str) -> FileResponse:
        """The call's WAV (RECORDINGS_DIR), with range requests for the console's player."""
        path = await recording_file(state, call_id[:200])
        if path is None:
            raise HTTPException(404, "no recording of that call here")
        return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})


async def recording_file(state: GatewayState, call_id: str) -> Path | None:
    """Where this gateway keeps the call's recording, if it does: the path its record names
    (a restarted stream's recording has a suffix), else the usual name, and only inside
    RECORDINGS_DIR whatever a record says."""
    directory = state.settings.recordings_dir
    if directory is None:
        return None
    candidates = [recording_path(directory, call_id)]
    if state.records is not None:
        record = await state.records.store.get(call_id)
        if record is not None and isinstance(record.get("recording"), str):
            candidates.insert(0, Path(record["recording"]))
    root = directory.resolve()
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.parent == root and resolved.is_file():
            return resolved
    return None


def phone_number(value: str | None) -> str | None:
    """A ``from``/``to`` filter as the number it was meant to be: ``?from=+14155550123`` sent
    without encoding the ``+`` arrives as a space (form encoding), so a leading space before
    digits is read back as the ``+`` it was."""
    if not value:
        return None
    number = value.strip()
    if value.startswith(" ") and number.isdigit():
        return "+" + number
    return number or None


def parse_limit(text: str | None) -> int:
    if text is None or not text.strip():
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}") from None
    if limit < 1:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return min(limit, MAX_LIMIT)  # more than a page holds: a full page
