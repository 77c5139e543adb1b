"""Deployment files, checked by reading them (no Docker engine runs here), and code quality.

``.ci/run`` replays the image's install steps without Docker; these tests pin down what the
Dockerfile and compose file must say so that replay stays faithful.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_audioop_comes_from_audioop_lts_only_on_python_313_and_later() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (audioop,) = [d for d in deps if d.startswith("audioop-lts")]
    assert re.search(r";\s*python_version\s*>=\s*['\"]3\.13['\"]$", audioop)


def test_dockerfile_builds_a_non_root_python_313_image_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.13-slim\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert re.search(r'^CMD \["gateway", "serve"', text, re.M)
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_the_image_builds_the_compiled_resampler_and_refuses_to_ship_without_it() -> None:
    """pip skips an optional extension it cannot compile, quietly: the build stage has a
    compiler, and the image's install step fails unless the FIR was compiled. .ci/run replays
    both steps (pip wheel, then pip install of the wheel) and the same check."""
    text = (ROOT / "Dockerfile").read_text()
    build, image = re.split(r"^FROM python:3\.13-slim\s*$", text, maxsplit=1, flags=re.M)
    assert re.search(r"^FROM python:3\.13-slim AS build$", build, re.M)
    assert re.search(r"apt-get install .*\bgcc\b", build)
    assert re.search(r"^RUN pip wheel .*--no-deps --wheel-dir /wheels \.$", build, re.M)
    assert re.search(r"^COPY --from=build /wheels /wheels$", image, re.M)
    assert re.search(r"^RUN pip install /wheels/\*\.whl", image, re.M)
    assert "assert resample.COMPILED" in image
    assert "assert mediaplane.COMPILED" in image
    assert "gcc" not in image
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip wheel" in ci
    assert "assert resample.COMPILED" in ci
    assert "assert mediaplane.COMPILED" in ci


def test_compose_runs_the_gateway_with_dotenv_and_a_mounted_agents_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["gateway"]
    assert service["build"] == "."
    assert any(e["path"] == ".env" for e in service["env_file"])
    mount = next(v for v in service["volumes"] if "agents.yaml" in v)
    host, container, *_ = mount.split(":")
    assert (ROOT / host).resolve() == ROOT / "agents.yaml"
    assert service["environment"]["AGENTS_FILE"] == container


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(python3 -m venv .venv && .*pytest.*)$", readme, re.M)
    assert commands, "README lost its test command"
    assert commands[0].strip() in ci


def test_ruff_is_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    args = [str(ruff), "check", "gateway", "callsim", "tests", "benchmarks", "tools"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean() -> None:
    args = [sys.executable, "-m", "mypy", "--strict", "gateway", "callsim"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def _top_level_imports(package: Path) -> set[str]:
    names: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_of_the_gateway_is_a_declared_dependency() -> None:
    # A package that is only present because a developer installed it by hand passes every test
    # here and breaks the image and CI's fresh venv: compare the code's imports with pyproject.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {
        re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].strip().lower().replace("_", "-")
        for dep in pyproject["project"]["dependencies"]
    }
    shipped = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for name in _top_level_imports(ROOT / "gateway") | _top_level_imports(ROOT / "callsim"):
        if name in shipped or name in sys.stdlib_module_names:  # ours, or the stdlib
            continue
        owners = {d.lower().replace("_", "-") for d in distributions.get(name, [])}
        if not owners & declared:
            missing[name] = sorted(owners) or ["(not installed)"]
    assert not missing, (
        f"imported by gateway/ or callsim/ but not in [project].dependencies: {missing}"
    )
