"""``GET /calls`` and ``GET /calls/{call_id}`` through the real server: the admin token, the
filters, the paging, the errors; and the routes' absence without ADMIN_API_TOKEN."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from callsim.callers.audio import Silence
from tests.harness import ADMIN_TOKEN, Harness, running
from tests.servers import until

CALLERS = ["+14155550101", "+14155550102", "+14155550103"]


async def get(
    h: Harness, path: str, token: str | None = ADMIN_TOKEN, **params: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=h.gateway.url) as http:
        return await http.get(path, params=params or None, headers=headers)


async def place_calls(h: Harness) -> list[str]:
    """Three short calls, one after the other, from three numbers; their call ids."""
    ids = []
    for caller in CALLERS:
        result = await h.call([Silence(0.3)], linger_s=0.1, from_number=caller)
        ids.append(result.call_sid)
    records = h.gateway.state.records
    assert records is not None
    await until(lambda: not records.writing)
    return ids


async def test_calls_are_listed_newest_first_filtered_and_paged(tmp_path: Path) -> None:
    async with running(database_url=f"sqlite:///{tmp_path}/calls.db",
                       admin_api_token=ADMIN_TOKEN) as h:  # fmt: skip
        ids = await place_calls(h)
        everything = (await get(h, "/calls")).json()
        first = (await get(h, "/calls", limit="2")).json()
        second = (await get(h, "/calls", limit="2", cursor=first["next"])).json()
        by_from = (await get(h, "/calls", **{"from": CALLERS[1]})).json()
        unencoded_plus = (await get(h, f"/calls?from={CALLERS[1]}")).json()  # '+' reads ' '
        huge_page = (await get(h, "/calls", limit="100000")).json()
        by_to = (await get(h, "/calls", to="+18005550100")).json()
        by_agent = (await get(h, "/calls", agent="agent-triage")).json()
        nobody = (await get(h, "/calls", agent="agent-advisor")).json()
        hung_up = (await get(h, "/calls", end_reason="caller_hangup")).json()
        failed = (await get(h, "/calls", end_reason="failed")).json()
        started = everything["calls"][1]["started_at"]
        since = (await get(h, "/calls", since=started)).json()
        epoch = datetime.fromisoformat(started).timestamp()
        since_epoch = (await get(h, "/calls", since=str(epoch))).json()
        future = (await get(h, "/calls", since="2999-01-01")).json()
        one = await get(h, f"/calls/{ids[0]}")
        missing = await get(h, "/calls/CA" + "0" * 32)
    newest_first = list(reversed(ids))
    assert [c["call_id"] for c in everything["calls"]] == newest_first
    assert everything["next"] is None
    assert [c["call_id"] for c in first["calls"]] == newest_first[:2] and first["next"]
    assert [c["call_id"] for c in second["calls"]] == newest_first[2:]
    assert second["next"] is None
    assert [c["call_id"] for c in by_from["calls"]] == [ids[1]]
    assert unencoded_plus == by_from
    assert huge_page == everything  # more than a page holds: a full page
    assert len(by_to["calls"]) == 3 and len(by_agent["calls"]) == 3 and len(hung_up["calls"]) == 3
    assert nobody["calls"] == [] and failed["calls"] == [] and future["calls"] == []
    assert [c["call_id"] for c in since["calls"]] == newest_first[:2]
    assert since_epoch == since
    assert one.status_code == 200 and one.json() == everything["calls"][2]
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"end_reason": "exploded"}, "end_reason must be one of"),
        ({"limit": "0"}, "limit must be a whole number from 1 to 500"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"since": "yesterday"}, "since must be an ISO 8601 date or time"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
async def test_bad_queries_get_400_with_the_reason(
    tmp_path: Path, params: dict[str, str], complaint: str
) -> None:
    async with running(database_url=f"sqlite:///{tmp_path}/calls.db",
                       admin_api_token=ADMIN_TOKEN) as h:  # fmt: skip
        answer = await get(h, "/calls", **params)
    assert answer.status_code == 400
    assert complaint in answer.json()["detail"]


async def test_records_need_the_admin_token(tmp_path: Path) -> None:
    async with running(database_url=f"sqlite:///{tmp_path}/calls.db",
                       admin_api_token=ADMIN_TOKEN) as h:  # fmt: skip
        (call_id,) = await place_calls_once(h)
        answers = [
            await get(h, "/calls", token=None),
            await get(h, "/calls", token="wrong-token-0123456789"),
            await get(h, f"/calls/{call_id}", token=None),
            await get(h, f"/calls/{call_id}", token=ADMIN_TOKEN + "x"),
        ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert call_id not in answer.text


async def place_calls_once(h: Harness) -> list[str]:
    result = await h.call([Silence(0.3)], linger_s=0.1)
    return [result.call_sid]


async def test_without_an_admin_token_the_routes_do_not_exist(tmp_path: Path) -> None:
    async with running(database_url=f"sqlite:///{tmp_path}/calls.db") as h:
        answers = [
            await get(h, "/calls"),
            await get(h, "/calls/CA" + "1" * 32),
        ]
        async with httpx.AsyncClient(base_url=h.gateway.url) as http:
            answers.append(await http.post("/calls", json={}))
            answers.append(await http.post("/admin/reload"))
    assert [a.status_code for a in answers] == [404, 404, 404, 404]


async def test_with_records_off_the_api_says_so(tmp_path: Path) -> None:
    async with running(admin_api_token=ADMIN_TOKEN) as h:  # DATABASE_URL empty: no records
        answer = await get(h, "/calls")
    assert answer.status_code == 503
    assert "DATABASE_URL" in answer.json()["detail"]
