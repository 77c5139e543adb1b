"""Reloading agents.yaml without a restart: ``POST /admin/reload`` through the real in-process
gateway, and SIGHUP to a real ``gateway serve --simulator`` process.

What a reload promises: calls that start after it get the new agents and model; a call in
progress keeps the graph (and model) it started with to its end, handoffs included; a broken
file changes nothing, and says why on one log line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import yaml

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step, ToolCallSpec
from gateway.metrics import Metrics
from gateway.server import Reloads
from tests.conftest import StructuredLogs
from tests.harness import running
from tests.test_agents import BASE
from tests.test_cli import _env, _free_port, _wait_healthy

ADMIN_TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL_B = "gemini-live-2.5-flash-preview"


def file_a() -> dict[str, Any]:
    """The example graph (triage -> advisor), no greeting: the script decides what is said."""
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(BASE))
    data["agents"][0]["greeting"] = ""
    return data


def file_b() -> dict[str, Any]:
    """Other agents under other ids, on another model: nothing of A's graph survives in it."""
    return {
        "model": MODEL_B,
        "agents": [
            {"id": "front-desk", "role": "Front desk", "system_prompt": "Answer briefly.",
             "voice": "Kore"},
            {"id": "mortgages", "role": "Mortgage specialist", "system_prompt": "Help.",
             "voice": "Puck"},
        ],
        "pipeline": [
            {"phase": "front", "agent_id": "front-desk", "next": "loans"},
            {"phase": "loans", "agent_id": "mortgages"},
        ],
    }  # fmt: skip


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data))


def _reloads(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("gateway_config_reloads_total", {"result": result})


def _metric(text: str, series: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(line.split()[-1])


async def test_new_calls_get_the_new_agents_and_a_call_in_progress_keeps_the_old(
    tmp_path: Path,
) -> None:
    agents_file = tmp_path / "agents.yaml"
    write(agents_file, file_a())
    steps = [
        Step(on="caller", when="Role: Triage receptionist", hear="advice please",
             say="Let me transfer you.", seconds=0.4,
             tool_call=ToolCallSpec("handoff_conversation", {
                 "target": "agent-advisor", "reason": "advice", "summary": "savings"})),
        Step(on="text", when="Role: Portfolio advisor", say="Advisor here.", seconds=0.4),
    ]  # fmt: skip
    async with running(steps=steps, agents_file=agents_file, admin_api_token=ADMIN_TOKEN) as h:
        # A call that is live across the reload: it speaks (and hands off) only afterwards.
        first_call = asyncio.create_task(
            h.call([Silence(2.0), Tone(300, 0.5), Silence(2.5)], linger_s=0.5)
        )
        await h.sim.wait_for_connections(1, timeout=5)
        write(agents_file, file_b())
        async with httpx.AsyncClient() as http:
            answer = await http.post(h.gateway.url + "/admin/reload", headers=AUTH)
            assert len(h.sim.connections) == 1  # reloaded before the call's handoff
            await first_call
            await h.call([Silence(0.3)], linger_s=0.3)  # starts after the reload
            metrics = (await http.get(h.gateway.url + "/metrics")).text
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "reloaded", "agents": ["front-desk", "mortgages"], "model": MODEL_B,
    }  # fmt: skip
    before, after_handoff, new_call = h.sim.connections
    old_graph = h.graph
    # The call in progress: its handoff after the reload went to the OLD graph's advisor, on
    # the model it started with.
    assert before.system_instruction == old_graph.agent("agent-triage").system_instruction()
    assert after_handoff.system_instruction == (
        old_graph.agent("agent-advisor").system_instruction()
    )
    assert after_handoff.model == before.model == f"models/{BASE['model']}"
    (done,) = h.named("handoff.completed")
    assert done["to_agent"] == "agent-advisor"
    # The call after the reload: the new file's first agent and model.
    assert "Role: Front desk" in new_call.system_instruction
    assert new_call.model == f"models/{MODEL_B}"
    assert _metric(metrics, 'gateway_config_reloads_total{result="ok"}') == 1.0
    assert _metric(metrics, 'gateway_config_reloads_total{result="error"}') == 0.0


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("agents: [\n  - id: x\n", "not valid YAML: expected the node content"),
        ("handoff", "pipeline[0].next: unknown phase 'nowhere'"),
    ],
)
async def test_a_broken_file_keeps_the_config_in_force_and_says_why_once(
    tmp_path: Path, structured_logs: StructuredLogs, breakage: str, message: str
) -> None:
    agents_file = tmp_path / "agents.yaml"
    write(agents_file, file_a())
    async with running(agents_file=agents_file, admin_api_token=ADMIN_TOKEN) as h:
        if breakage == "handoff":  # valid YAML, and an agents file in every way but one
            broken = file_a()
            broken["pipeline"][0]["next"] = "nowhere"
            write(agents_file, broken)
        else:
            agents_file.write_text(breakage)
        async with httpx.AsyncClient() as http:
            answer = await http.post(h.gateway.url + "/admin/reload", headers=AUTH)
            await h.call([Silence(0.3)], linger_s=0.3)
            metrics = (await http.get(h.gateway.url + "/metrics")).text
        graph_after = h.gateway.state.graph
    assert answer.status_code == 422
    body = answer.json()
    assert body["status"] == "error"
    assert body["error"].startswith(f"{agents_file}: ") and message in body["error"]
    assert "\n" not in body["error"]
    (failed,) = structured_logs.events("config.reload_failed")
    assert failed["error"] == body["error"] and failed["level"] == "warning"
    assert structured_logs.events("config.reloaded") == []
    assert _metric(metrics, 'gateway_config_reloads_total{result="error"}') == 1.0
    assert _metric(metrics, 'gateway_config_reloads_total{result="ok"}') == 0.0
    # Nothing changed: the next call still gets the first file's agents.
    assert graph_after is h.graph
    (call,) = h.sim.connections
    assert call.system_instruction == h.graph.agent("agent-triage").system_instruction()


async def test_a_reload_that_adds_http_tools_gives_them_a_runner_and_scrubs_their_secrets(
    tmp_path: Path, structured_logs: StructuredLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "crm-token-reload-0123456789"
    monkeypatch.setenv("CRM_TOKEN", secret)
    agents_file = tmp_path / "agents.yaml"
    write(agents_file, file_a())
    with_tools = file_a()
    with_tools["tools"] = [{
        "name": "get_quote", "description": "A quote.", "url": "https://crm.example.com/q",
        "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
    }]  # fmt: skip
    with_tools["agents"][1]["tools"] = ["get_quote", "end_call"]
    async with running(agents_file=agents_file, admin_api_token=ADMIN_TOKEN) as h:
        assert h.gateway.state.tool_runner is None  # no HTTP tools yet: no client
        write(agents_file, with_tools)
        async with httpx.AsyncClient() as http:
            answer = await http.post(h.gateway.url + "/admin/reload", headers=AUTH)
        runner = h.gateway.state.tool_runner
        structlog.get_logger("test").info("probe", detail=f"the header held {secret}")
    assert answer.status_code == 200
    assert runner is not None
    (probe,) = structured_logs.events("probe")
    assert secret not in probe["detail"]
    # The new file's own notes are said as at start-up: end_call without the carriers' keys.
    gaps = [e["detail"] for e in structured_logs.events("agents.call_actions_unavailable")]
    assert [gap.split(":")[0] for gap in gaps] == ["Twilio", "Telnyx"]


async def test_the_route_wants_the_admin_token_and_exists_only_with_one(tmp_path: Path) -> None:
    agents_file = tmp_path / "agents.yaml"
    write(agents_file, file_a())
    async with running(agents_file=agents_file, admin_api_token=ADMIN_TOKEN) as h:
        async with httpx.AsyncClient() as http:
            bare = await http.post(h.gateway.url + "/admin/reload")
            wrong = await http.post(
                h.gateway.url + "/admin/reload", headers={"Authorization": "Bearer nope" * 3}
            )
        refused_reloads = _reloads(h.gateway.state.metrics, "ok")
    assert bare.status_code == wrong.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert refused_reloads == 0  # refused before anything was read
    async with running(agents_file=agents_file) as h, httpx.AsyncClient() as http:
        absent = await http.post(h.gateway.url + "/admin/reload", headers=AUTH)
    assert absent.status_code == 404


# ---------------------------------------------------------------------- SIGHUP


async def test_a_burst_of_signals_collapses_into_one_reload(tmp_path: Path) -> None:
    """What ``serve`` does on each SIGHUP (:class:`Reloads`), ten times before the loop turns:
    the first reload has not read the file yet, so it covers them all."""
    agents_file = tmp_path / "agents.yaml"
    write(agents_file, file_a())
    async with running(agents_file=agents_file) as h:
        reloads = Reloads(h.gateway.state)
        write(agents_file, file_b())
        for _ in range(10):
            reloads.request()
        await reloads.wait()
        count = _reloads(h.gateway.state.metrics, "ok")
        agents = [agent.id for agent in h.gateway.state.graph.spec.agents]
    assert count == 1
    assert agents == ["front-desk", "mortgages"]


async def _log_line(lines: asyncio.Queue[str], event: str, within_s: float) -> dict[str, Any]:
    """The next JSON log line of ``event`` the process writes within ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        line = await asyncio.wait_for(lines.get(), max(0.0, deadline - time.monotonic()))
        if line.startswith("{") and f'"event": "{event}"' in line:
            parsed: dict[str, Any] = json.loads(line)
            return parsed


async def _serving_processes(lines: asyncio.Queue[str]) -> int:
    """How many processes serve the calls: with several workers their master says, in
    ``gateway.workers_started``, before any of them listens; one process just listens."""
    while True:
        line = await asyncio.wait_for(lines.get(), 30)
        if '"event": "gateway.workers_started"' in line:
            return len(json.loads(line)["pids"])
        if '"event": "gateway.listening"' in line:
            return 1


async def test_sighup_reloads_a_serving_process_and_a_broken_file_keeps_it_serving(
    tmp_path: Path,
) -> None:
    """With several workers, the master passes SIGHUP on to each, which reloads (and counts
    its reload: the scrape, whichever worker answers it, adds them up)."""
    agents_file = tmp_path / "agents.yaml"
    write(agents_file, file_a())
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(  # noqa: ASYNC220 -- a real server process, polled below
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=tmp_path, env=_env(LOG_FORMAT="json", DATABASE_URL=""), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    stderr = proc.stderr

    def pump() -> None:  # the process's log, line by line, as it is written
        for line in stderr:
            loop.call_soon_threadsafe(lines.put_nowait, line)

    reader = loop.run_in_executor(None, pump)
    try:
        async with httpx.AsyncClient() as http:
            processes = await _serving_processes(lines)
            await _wait_healthy(http, url, proc)
            write(agents_file, file_b())
            proc.send_signal(signal.SIGHUP)
            # A bound for failing, not a timing check: about 0.5 s idle for both workers, past
            # 1 s once in CI beside the other tests (the file is read in a thread each).
            every = [await _log_line(lines, "config.reloaded", 10.0) for _ in range(processes)]
            ok = await http.get(url + "/metrics")
            agents_file.write_text("agents: [\n")
            proc.send_signal(signal.SIGHUP)
            failures = [
                await _log_line(lines, "config.reload_failed", 10.0) for _ in range(processes)
            ]
            broken = await http.get(url + "/metrics")
            health = await http.get(url + "/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
        await reader
    for reloaded in every:
        assert reloaded["agents"] == ["front-desk", "mortgages"] and reloaded["model"] == MODEL_B
    assert len({reloaded.get("worker") for reloaded in every}) == processes  # each, once
    assert _metric(ok.text, 'gateway_config_reloads_total{result="ok"}') == processes
    for failed in failures:
        assert failed["error"].startswith("agents.yaml: not valid YAML: ")
        assert "Traceback" not in failed["error"]
    assert _metric(broken.text, 'gateway_config_reloads_total{result="error"}') == processes
    assert _metric(broken.text, 'gateway_config_reloads_total{result="ok"}') == processes
    assert health.status_code == 200
    assert proc.returncode == 0
