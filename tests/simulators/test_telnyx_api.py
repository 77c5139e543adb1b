"""The fake Telnyx Call Control API: the pure command rules, then the HTTP server itself."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from callsim.callers.result import ApiRequest
from callsim.telnyx.api import CallRecord, TelnyxApiSimulator, apply_command
from callsim.telnyx.peer import FORMATS, Violation
from callsim.telnyx.webhook import StreamSetup

STREAM = {
    "stream_url": "wss://gw.example.com/telnyx/stream",
    "stream_track": "inbound_track",
    "stream_codec": "PCMU",
    "stream_bidirectional_mode": "rtp",
    "stream_bidirectional_codec": "G722",
    "stream_bidirectional_sampling_rate": 16000,
    "stream_bidirectional_target_legs": "both",
    "client_state": "c3RyZWFt",
    "command_id": "c-2",
    "custom_parameters": [{"name": "session", "value": "tok"}],
}


def kinds(violations: list[str] | tuple[str, ...]) -> list[str]:
    return [v.partition(":")[0] for v in violations]


def test_the_answer_then_stream_then_hangup_dance() -> None:
    call = CallRecord("v3:x")
    answered = apply_command(call, "answer", {"client_state": "YQ==", "command_id": "c-1"})
    assert (answered.status, answered.body, answered.violations) == (
        200,
        {"data": {"result": "ok"}},
        [],
    )
    assert (call.state, call.client_state) == ("answered", "YQ==")
    streaming = apply_command(call, "streaming_start", STREAM)
    assert (streaming.status, streaming.violations, streaming.warnings) == (200, [], [])
    assert streaming.setup is not None
    assert streaming.setup.url == STREAM["stream_url"]
    assert (streaming.setup.inbound, streaming.setup.outbound) == (FORMATS["PCMU"], FORMATS["G722"])
    assert streaming.setup.parameters == {"session": "tok"}
    assert call.streaming
    retry = apply_command(call, "streaming_start", STREAM)  # same command_id: a retry
    assert (retry.status, retry.violations) == (200, [])
    assert "retry" in retry.warnings[0]
    again = apply_command(call, "streaming_start", STREAM | {"command_id": "c-3"})
    assert (again.status, kinds(again.violations)) == (422, [Violation.CALL_CONTROL_ORDER])
    assert apply_command(call, "hangup", {}).status == 200
    assert call.state == "ended"
    ended = apply_command(call, "hangup", {"command_id": "c-9"})
    assert ended.status == 422
    assert ended.body["errors"][0]["code"] == "90018"
    assert ended.body["errors"][0]["title"] == "Call has already ended"
    assert ended.violations == ended.warnings == []  # a hang-up racing the caller's is fine
    late = apply_command(call, "streaming_start", STREAM)
    assert (late.status, late.violations) == (422, [])
    assert "after the call ended" in late.warnings[0]


def test_stream_on_answer_and_order_mistakes() -> None:
    call = CallRecord("v3:x")
    early = apply_command(call, "streaming_start", STREAM)
    assert (early.status, kinds(early.violations)) == (422, [Violation.CALL_CONTROL_ORDER])
    assert "not answered yet" in early.violations[0]
    assert not call.streaming
    answered = apply_command(call, "answer", STREAM)
    assert answered.status == 200
    assert answered.setup is not None
    assert answered.setup.outbound == FORMATS["G722"]
    assert (call.state, call.streaming) == ("answered", True)
    twice = apply_command(call, "answer", {})
    assert (twice.status, kinds(twice.violations)) == (422, [Violation.CALL_CONTROL_ORDER])
    assert apply_command(call, "reject", {}).status == 422
    stopped = apply_command(call, "streaming_stop", {})
    assert (stopped.status, call.streaming) == (200, False)
    assert apply_command(call, "streaming_stop", {}).status == 422
    parked = CallRecord("v3:y")
    assert apply_command(parked, "reject", {"cause": "USER_BUSY"}).status == 200
    assert parked.state == "ended"


@pytest.mark.parametrize(
    ("action", "body", "status", "expected"),
    [
        ("teleport", {}, 404, [Violation.API_UNKNOWN_ACTION]),
        ("answer", [], 422, [Violation.API_BAD_REQUEST]),
        ("answer", None, 422, [Violation.API_BAD_REQUEST]),
        ("answer", {"client_state": "not base64!"}, 422, [Violation.API_INVALID_PARAMETER]),
        ("answer", {"command_id": 5}, 422, [Violation.API_INVALID_PARAMETER]),
        (
            "streaming_start",
            {"stream_track": "inbound_track"},
            422,
            [Violation.API_INVALID_PARAMETER],
        ),
        ("streaming_start", STREAM | {"stream_url": 3}, 422, [Violation.API_INVALID_PARAMETER]),
        (
            "streaming_start",
            STREAM | {"stream_bidirectional_codec": "pcmu"},
            422,
            [Violation.API_INVALID_PARAMETER],
        ),
        (
            "streaming_start",
            STREAM | {"stream_bidirectional_sampling_rate": "16000"},
            422,
            [Violation.API_INVALID_PARAMETER],
        ),
        (
            "streaming_start",
            STREAM | {"stream_bidirectional_mode": "RTP"},
            422,
            [Violation.API_INVALID_PARAMETER],
        ),
        (
            "streaming_start",
            STREAM | {"stream_track": "both"},
            422,
            [Violation.API_INVALID_PARAMETER],
        ),
        (
            "streaming_start",
            STREAM | {"stream_bidirectional_target_legs": "all"},
            422,
            [Violation.API_INVALID_PARAMETER],
        ),
        (
            "streaming_start",
            STREAM | {"custom_parameters": {"a": "b"}},
            422,
            [Violation.PARAMETER_INVALID],
        ),
        # Valid for Telnyx (200), wrong for a live conversation:
        (
            "streaming_start",
            {k: v for k, v in STREAM.items() if k != "stream_bidirectional_mode"},
            200,
            [Violation.BIDIRECTIONAL_MODE],
        ),
        (
            "streaming_start",
            STREAM | {"stream_bidirectional_mode": "mp3"},
            200,
            [Violation.BIDIRECTIONAL_MODE],
        ),
        (
            "streaming_start",
            STREAM | {"stream_bidirectional_codec": "OPUS"},
            200,
            [Violation.CODEC],
        ),
        (
            "streaming_start",
            STREAM
            | {"stream_bidirectional_sampling_rate": 8000, "stream_bidirectional_codec": "L16"},
            200,
            [Violation.SAMPLING_RATE],
        ),
        (
            "streaming_start",
            STREAM | {"stream_track": "outbound_track"},
            200,
            [Violation.STREAM_TRACK],
        ),
        (
            "streaming_start",
            STREAM | {"stream_url": "https://gw/x"},
            200,
            [Violation.STREAM_URL_SCHEME],
        ),
    ],
)
def test_command_violations(action: str, body: Any, status: int, expected: list[str]) -> None:
    call = CallRecord("v3:x", state="answered")
    out = apply_command(call, action, body)
    assert out.status == status
    assert kinds(out.violations) == expected
    if status >= 400:
        assert set(out.body) == {"errors"}
        assert {"code", "title", "detail"} == set(out.body["errors"][0])


def test_unsimulated_commands_and_unknown_fields_are_warnings() -> None:
    call = CallRecord("v3:x", state="answered")
    out = apply_command(call, "playback_start", {"audio_url": "https://example.com/a.mp3"})
    assert (out.status, out.violations) == (200, [])
    assert "not simulated" in out.warnings[0]
    typo = apply_command(call, "hangup", {"comand_id": "x"})
    assert typo.status == 200
    assert "comand_id" in typo.warnings[0]


def test_speak_needs_an_answered_call_and_a_payload_and_transfer_ends_it() -> None:
    parked = CallRecord("v3:p")
    assert apply_command(parked, "speak", {"payload": "hi"}).status == 422
    call = CallRecord("v3:x", state="answered")
    assert apply_command(call, "speak", {"voice": "female"}).status == 422
    assert apply_command(call, "speak", {"payload": "Sorry.", "voice": "female"}).status == 200
    assert call.state == "answered"
    assert apply_command(call, "transfer", {"to": "+18005550100"}).status == 200
    assert call.state == "ended"


async def test_the_server_checks_auth_ids_and_paths() -> None:
    seen: list[tuple[ApiRequest, StreamSetup | None]] = []
    async with TelnyxApiSimulator(api_key="KEY123") as api:
        assert api.base_url == f"http://127.0.0.1:{api.port}/v2"
        api.register("v3:known", lambda r, s: seen.append((r, s)))
        auth = {"Authorization": "Bearer KEY123"}
        async with httpx.AsyncClient(base_url=api.base_url) as http:
            ok = await http.post("/calls/v3:known/actions/answer", json={}, headers=auth)
            no_key = await http.post("/calls/v3:known/actions/hangup", json={})
            wrong = await http.post(
                "/calls/v3:known/actions/hangup", json={}, headers={"Authorization": "Bearer no"}
            )
            empty = await http.post("/calls/v3:known/actions/streaming_start", headers=auth)
            not_json = await http.post("/calls/v3:known/actions/hangup", content=b"{", headers=auth)
            unknown = await http.post("/calls/v3:other/actions/hangup", json={}, headers=auth)
            path = await http.get("/calls/v3:known", headers=auth)
            api.end_call("v3:known")
            ended = await http.post("/calls/v3:known/actions/hangup", json={}, headers=auth)
        for _ in range(100):  # listeners run in this loop, soon after each response
            if len(seen) == 6:
                break
            await asyncio.sleep(0.01)
        api.unregister("v3:known")
        requests = api.requests
        violations = api.violations
    assert (ok.status_code, ok.json()) == (200, {"data": {"result": "ok"}})
    assert [no_key.status_code, wrong.status_code] == [401, 401]
    assert empty.status_code == 422  # streaming_start without stream_url
    assert not_json.status_code == 422
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["code"] == "10005"
    assert path.status_code == 404
    assert ended.status_code == 422
    assert ended.json()["errors"][0]["code"] == "90018"
    assert [r.status for r, _ in seen] == [200, 401, 401, 422, 422, 422]
    assert [kinds(r.violations) for r, _ in seen[1:3]] == [[Violation.API_UNAUTHORIZED]] * 2
    assert len(requests) == 8
    assert requests[0].body == {}
    assert requests[0].path == "/v2/calls/v3:known/actions/answer"
    assert kinds(violations) == [Violation.API_UNKNOWN_CALL, Violation.API_UNKNOWN_ACTION]
    assert asyncio.all_tasks() == {asyncio.current_task()}  # the server runs in its own thread


async def test_the_server_serves_once_and_has_no_address_before_it_starts() -> None:
    api = TelnyxApiSimulator()
    with pytest.raises(RuntimeError, match="enter the fake Telnyx API first"):
        _ = api.base_url
    async with api:
        assert api.api_key.startswith("KEY")
        with pytest.raises(RuntimeError, match="serves once"):
            await api.__aenter__()
    assert asyncio.all_tasks() == {asyncio.current_task()}


# --- TeXML REST: update call --------------------------------------------------------------


def test_a_texml_update_ends_the_stream_and_runs_its_texml() -> None:
    from callsim.telnyx.api import apply_texml_update

    call = CallRecord("v3:x", state="answered", streaming=True, account_sid="acct-1")
    out = apply_texml_update(call, "acct-1", {"Texml": "<Response><Dial>+1555</Dial></Response>"})
    assert (out.status, out.body["status"], call.state, call.streaming) == (
        200, "in-progress", "ended", False
    )  # fmt: skip
    late = apply_texml_update(call, "acct-1", {"Status": "completed"})
    assert (late.status, late.body["errors"][0]["code"]) == (422, "90018")
    other = apply_texml_update(CallRecord("v3:y", account_sid="a"), "b", {"Status": "completed"})
    assert other.status == 404 and kinds(other.violations) == [Violation.API_UNKNOWN_CALL]
    bad = apply_texml_update(CallRecord("v3:z", account_sid="a"), "a", {"Texml": "<Hangup/>"})
    assert bad.status == 422 and kinds(bad.violations) == [Violation.API_BAD_REQUEST]


async def test_the_texml_update_route_checks_the_key_and_tells_the_caller() -> None:
    heard: list[ApiRequest] = []
    async with TelnyxApiSimulator() as api:
        api.register("v3:call", lambda r, _: heard.append(r), answered=True, account_sid="acct")
        url = f"{api.base_url}/texml/Accounts/acct/Calls/v3:call"
        async with httpx.AsyncClient() as http:
            denied = await http.post(url, data={"Status": "completed"})
            ok = await http.post(
                url,
                data={"Texml": "<Response><Hangup/></Response>"},
                headers={"Authorization": f"Bearer {api.api_key}"},
            )
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.01)
    assert denied.status_code == 401 and ok.status_code == 200
    # Like every command on its call, the refused one is told too (as a violation).
    assert [r.status for r in heard] == [401, 200]
    request = heard[1]
    assert (request.action, request.body, request.auth) == (
        "texml_update", {"Texml": "<Response><Hangup/></Response>"}, "Bearer"
    )  # fmt: skip
