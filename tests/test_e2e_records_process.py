"""Call records and recordings across a crash, and ``gateway calls``, with real processes:
``gateway serve --simulator`` (and its workers, if it has several) killed with SIGKILL
mid-call, started again on the same database, and the record read back from the shell,
straight from the database and through the API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.twilio import TwilioCaller
from tests.test_cli import ROOT, _env, _free_port, _wait_healthy, gateway

ADMIN = "admin-token-process-tests-0123456789"


def _serve(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=tmp_path, env=_env(LOG_FORMAT="json", **env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _kill_gateway(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the whole gateway, as an OOM kill or ``docker kill`` does: the process and its
    workers, if it has any (a master killed alone leaves its workers to drain their calls,
    which they outlive by design)."""
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.send_signal(signal.SIGKILL)
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.mark.timeout(90)
async def test_sigkill_mid_call_leaves_an_interrupted_record_and_a_readable_wav(
    tmp_path: Path,
) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    recordings = tmp_path / "recordings"
    settings = {"DATABASE_URL": f"sqlite:///{tmp_path / 'calls.db'}", "ADMIN_API_TOKEN": ADMIN,
                "RECORDINGS_DIR": str(recordings)}  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, port, **settings)
    try:
        async with httpx.AsyncClient() as http:
            await _wait_healthy(http, url, proc)
            audio = render([Silence(1.0), Tone(300, 0.8), Silence(8.0)])
            call = asyncio.create_task(TwilioCaller(url, audio=audio, linger_s=0.2).run())
            open_calls: list[dict[str, Any]] = []
            for _ in range(50):  # the record exists as soon as the call has started
                await asyncio.sleep(0.1)
                open_calls = (await http.get(url + "/calls", headers=_auth())).json()["calls"]
                if open_calls:
                    break
            await asyncio.sleep(3.0)  # a few seconds of audio on both sides
            _kill_gateway(proc)
            await asyncio.to_thread(proc.wait, 10)
            result = await call
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # While the call ran, its record said what a crash leaves: interrupted, no end.
    (running,) = open_calls
    assert running["call_id"] == result.call_sid
    assert (running["end_reason"], running["ended_at"]) == ("interrupted", None)

    # The WAV as the process left it: readable, stereo 8 kHz, with the seconds before the kill.
    wav_path = recordings / f"{result.call_sid}.wav"
    assert running["recording"] == str(wav_path)
    with wave.open(str(wav_path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        assert wav.getnframes() >= 2 * 8000

    # The next start closes the record; `gateway calls` reads it straight from the database.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, port, **settings)
    try:
        async with httpx.AsyncClient() as http:
            await _wait_healthy(http, url, proc)
            shown = await asyncio.to_thread(
                gateway, "calls", "show", result.call_sid, cwd=tmp_path, **settings
            )
            listed = await asyncio.to_thread(
                gateway, "calls", "list", "--url", url, "--json", cwd=tmp_path, **settings
            )
            exported = await asyncio.to_thread(
                gateway, "calls", "export", "--end-reason", "interrupted", cwd=tmp_path,
                **settings,
            )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
    assert '"event": "records.interrupted_closed"' in stderr
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["end_reason"] == "interrupted" and record["ended_at"] is not None
    assert record["duration_s"] >= 0
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"calls": [record], "next": None}
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line) for line in exported.stdout.splitlines()] == [record]


def test_gateway_calls_needs_the_admin_token(tmp_path: Path) -> None:
    done = gateway("calls", "list", cwd=tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/c.db")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ADMIN_API_TOKEN: not set")


def test_a_database_that_cannot_be_opened_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = gateway(
        "serve", "--simulator", "--port", str(_free_port()), cwd=tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path}/no/such/dir/calls.db",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "error: DATABASE_URL: the call records database cannot be used: "
        "unable to open database file"
    )
    assert "Traceback" not in done.stderr


def test_gateway_calls_does_not_create_a_database_where_there_is_none(tmp_path: Path) -> None:
    done = gateway("calls", "list", cwd=tmp_path, DATABASE_URL="sqlite:///calls.db",
                   ADMIN_API_TOKEN=ADMIN)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: DATABASE_URL: no call records at calls.db")
    assert not (tmp_path / "calls.db").exists()
