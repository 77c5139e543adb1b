"""Start-up says so when the resampler's FIR or the media plane was not compiled (pip skips
them without a C compiler, quietly): the gateway then works, at more CPU per call."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from gateway import mediaplane, startup
from gateway.agents import load_agents
from gateway.audio import resample
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _announced(monkeypatch: pytest.MonkeyPatch, *, compiled: bool) -> list[str]:
    monkeypatch.setattr(startup, "resampler_compiled", lambda: compiled)
    monkeypatch.setattr(startup, "media_plane_compiled", lambda: compiled)
    graph = load_agents(ROOT / "agents.yaml", environ={})
    with structlog.testing.capture_logs() as logs:
        startup.announce(
            Settings(_env_file=None), graph, simulator=True, log=structlog.get_logger("t")
        )
    return [str(entry["event"]) for entry in logs]


def test_a_missing_compiled_resampler_is_a_start_up_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert {"audio.resampler_not_compiled", "media.plane_not_compiled"} <= set(
        _announced(monkeypatch, compiled=False)
    )
    said = _announced(monkeypatch, compiled=True)
    assert "audio.resampler_not_compiled" not in said
    assert "media.plane_not_compiled" not in said


def test_the_file_check_agrees_with_what_the_calls_use(tmp_path: Path) -> None:
    """In this install, and in a copy of the package without the compiled file."""
    assert startup.resampler_compiled() is resample.COMPILED
    assert startup.media_plane_compiled() is mediaplane.COMPILED
    for package in ("gateway", "callsim"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    probe = (
        # An editable install's finder would find this tree's gateway._mediaplane for the
        # copy (it serves any direct submodule of "gateway"): the copy must stand alone.
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(f)]; "
        "from gateway import mediaplane, startup; from gateway.audio import resample; "
        "print(startup.resampler_compiled(), resample.COMPILED, startup.media_plane_compiled(), "
        "mediaplane.COMPILED, resample.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    found, used, plane_found, plane_used, source = done.stdout.split()
    assert (found, used, plane_found, plane_used) == ("False", "False", "False", "False")
    assert source.startswith(str(tmp_path))
