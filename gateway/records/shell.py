"""``gateway calls list | show | export``: the call records from the shell.

Two ways to the same records, the same filters and the same JSON as ``GET /calls``:

- ``--url http://gateway:8080`` asks a running gateway's admin API (what an operator outside
  the container does);
- without ``--url`` the command reads DATABASE_URL itself (inside the container, or beside a
  SQLite file), so records can be read when no gateway is running.

Either way ADMIN_API_TOKEN must be set: the records hold callers' numbers and words, and the
token is the one switch that says this deployment has someone allowed to read them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from gateway.records.times import parse_since
from gateway.settings import ConfigError, Settings

if TYPE_CHECKING:  # imported when used: ``gateway --help`` and ``check`` stay light
    import httpx

    from gateway.records.store import RecordStore

#: Records per page when exporting everything.
EXPORT_PAGE = 500


class RecordSource(Protocol):
    async def open(self) -> None: ...

    async def search(
        self, filters: dict[str, str], cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get(self, call_id: str) -> dict[str, Any] | None: ...

    async def aclose(self) -> None: ...


class ApiSource:
    """Records from a running gateway's ``GET /calls``."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
        )

    async def open(self) -> None:
        pass

    async def search(
        self, filters: dict[str, str], cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        params = {**filters, "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        answer = self._check(await self._client.get("/calls", params=params))
        body = answer.json()
        return list(body["calls"]), body.get("next")

    async def get(self, call_id: str) -> dict[str, Any] | None:
        answer = await self._client.get(f"/calls/{call_id}")
        if answer.status_code == 404:
            return None
        record: dict[str, Any] = self._check(answer).json()
        return record

    @staticmethod
    def _check(answer: httpx.Response) -> httpx.Response:
        if answer.status_code == 401:
            raise ConfigError("ADMIN_API_TOKEN: the gateway refused it (401)")
        if answer.status_code >= 400:
            try:
                detail = answer.json().get("detail", answer.text)
            except ValueError:
                detail = answer.text
            raise ConfigError(f"the gateway answered {answer.status_code}: {str(detail)[:300]}")
        return answer

    async def aclose(self) -> None:
        await self._client.aclose()


class StoreSource:
    """Records straight from DATABASE_URL."""

    def __init__(self, store: RecordStore) -> None:
        self._store = store

    async def open(self) -> None:
        # The schema is brought up to date, but open records are left alone: they may be a
        # running gateway's live calls.
        await self._store.start(deliver=False, close_interrupted=False)

    async def search(
        self, filters: dict[str, str], cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        since = filters.get("since")
        return await self._store.search(
            from_=filters.get("from"),
            to=filters.get("to"),
            since=parse_since(since) if since else None,
            agent=filters.get("agent"),
            end_reason=filters.get("end_reason"),
            limit=limit,
            cursor=cursor,
        )

    async def get(self, call_id: str) -> dict[str, Any] | None:
        return await self._store.get(call_id)

    async def aclose(self) -> None:
        await self._store.aclose()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gateway calls`` subcommands."""
    sub = parser.add_subparsers(required=True, metavar="ACTION", dest="action")
    listing = sub.add_parser("list", help="calls, newest first (one page)")
    export = sub.add_parser("export", help="every matching call as JSON Lines")
    for command in (listing, export):
        command.add_argument("--from", dest="from_", metavar="NUMBER")
        command.add_argument("--to", metavar="NUMBER")
        command.add_argument("--since", metavar="ISO8601", help="calls started at or after")
        command.add_argument("--agent", metavar="ID", help="calls this agent served")
        command.add_argument("--end-reason", metavar="REASON")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor", help="the 'next' of the previous page")
    listing.add_argument("--json", action="store_true", help="the API's JSON, not a table")
    export.add_argument("--out", type=argparse.FileType("w"), default=sys.stdout,
                        help="file to write (default: standard output)")  # fmt: skip
    show = sub.add_parser("show", help="one call's whole record, as JSON")
    show.add_argument("call_id")
    for command in (listing, export, show):
        command.add_argument(
            "--url", help="a running gateway's base URL (default: read DATABASE_URL directly)"
        )


def open_source(args: argparse.Namespace, settings: Settings) -> RecordSource:
    if settings.admin_api_token is None:
        raise ConfigError(
            "ADMIN_API_TOKEN: not set; the call records (callers' numbers and words) are read "
            "only with the admin token"
        )
    if args.url:
        return ApiSource(args.url, settings.admin_api_token.get_secret_value())
    if settings.database_url is None:
        raise ConfigError("DATABASE_URL: empty, so there are no call records to read")
    from gateway.records.database import database_url
    from gateway.records.store import RecordStore

    url = settings.database_url.get_secret_value()
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        # Reading must not leave an empty database behind where the records are not.
        raise ConfigError(
            f"DATABASE_URL: no call records at {parsed.database} (is this the directory the "
            "gateway runs in? or give --url of a running gateway)"
        )
    return StoreSource(RecordStore(url))


async def run(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    source = open_source(args, settings)
    try:
        await source.open()
        return await _ACTIONS[args.action](source, args, out)
    except ValueError as exc:  # a bad --since or --cursor: one line, as the API's 400 says
        raise ConfigError(str(exc)) from None
    finally:
        await source.aclose()


def _filters(args: argparse.Namespace) -> dict[str, str]:
    pairs = {"from": args.from_, "to": args.to, "since": args.since, "agent": args.agent,
             "end_reason": args.end_reason}  # fmt: skip
    return {k: v for k, v in pairs.items() if v}


async def _list(source: RecordSource, args: argparse.Namespace, out: TextIO) -> int:
    calls, next_cursor = await source.search(_filters(args), args.cursor, args.limit)
    if args.json:
        json.dump({"calls": calls, "next": next_cursor}, out, indent=2)
        out.write("\n")
        return 0
    out.write(f"{'STARTED':24}  {'CALL ID':36}  {'CARRIER':7}  {'DIR':8}  {'FROM':16}  "
              f"{'TO':16}  {'SECONDS':>7}  {'END':13}  AGENTS\n")  # fmt: skip
    for call in calls:
        seconds = call.get("duration_s")
        out.write(
            f"{call['started_at']:24}  {call['call_id'][:36]:36}  {call['carrier']:7}  "
            f"{call['direction']:8}  {call['from'][:16]:16}  {call['to'][:16]:16}  "
            f"{'' if seconds is None else f'{seconds:.1f}':>7}  {call['end_reason']:13}  "
            f"{','.join(call['agents'])}\n"
        )
    if next_cursor:
        out.write(f"more: --cursor {next_cursor}\n")
    return 0


async def _show(source: RecordSource, args: argparse.Namespace, out: TextIO) -> int:
    record = await source.get(args.call_id)
    if record is None:
        print(f"no record of call {args.call_id}", file=sys.stderr)
        return 1
    json.dump(record, out, indent=2)
    out.write("\n")
    return 0


async def _export(source: RecordSource, args: argparse.Namespace, out: TextIO) -> int:
    target: TextIO = args.out if args.out is not sys.stdout else out
    async for record in _every(source, _filters(args)):
        target.write(json.dumps(record, separators=(",", ":")) + "\n")
    target.flush()
    return 0


async def _every(source: RecordSource, filters: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        calls, cursor = await source.search(filters, cursor, EXPORT_PAGE)
        for call in calls:
            yield call
        if not cursor:
            return


_ACTIONS: dict[
    str, Callable[[RecordSource, argparse.Namespace, TextIO], Coroutine[Any, Any, int]]
] = {
    "list": _list,
    "show": _show,
    "export": _export,
}
