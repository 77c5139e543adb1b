"""The architecture, checked: ``tools/import_graph.py`` finds no import circle in ``gateway/``,
no import from a lower layer to a higher one, and no module-level import of the simulators;
the simulated carriers are built without the gateway's carriers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import import_graph  # a script in tools/, not a package

ROOT = Path(__file__).resolve().parent.parent


def test_the_gateway_has_no_circle_no_upward_import_and_no_eager_simulator_import() -> None:
    assert import_graph.problems() == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "gateway" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "aio.py": "from gateway.server import serve\n",
        "server.py": "def serve() -> None: ...\n",
    })  # fmt: skip
    assert import_graph.problems(root=root) == [
        "gateway.aio (foundations) imports gateway.server (server), a higher layer"
    ]


def test_a_circle_is_reported_even_through_a_lazy_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "live/__init__.py": "",
        "live/a.py": "from gateway.live.b import x\n",
        "live/b.py": "def x() -> None:\n    from gateway.live import a\n",
    })  # fmt: skip
    assert import_graph.problems(root=root) == ["import circle: gateway.live.a <-> gateway.live.b"]


@pytest.mark.parametrize(
    ("text", "reported"),
    [
        ("import callsim.live.server\n", True),
        ("try:\n    from callsim import demo\nexcept ImportError:\n    pass\n", True),
        ("def f() -> None:\n    from callsim.live.server import LiveSimulator\n", False),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import callsim\n", False),
    ],
)
def test_the_simulators_may_be_imported_only_lazily(
    tmp_path: Path, text: str, reported: bool
) -> None:
    root = _package(tmp_path, {"__init__.py": "", "server.py": text})
    expected = ["gateway.server imports callsim at module level"] if reported else []
    assert import_graph.problems(root=root) == expected


def test_a_module_outside_every_layer_is_reported(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "stray.py": ""})
    assert import_graph.problems(root=root) == [
        "gateway.stray is in no layer (add it to LAYERS in tools/import_graph.py)"
    ]


@pytest.mark.parametrize(
    ("source", "at_import", "anywhere"),
    [
        ("import gateway.carriers.twilio", True, True),
        ("from gateway.carriers.telnyx import codec", True, True),
        ("from gateway import carriers", True, True),
        # Only type checkers read it: it never runs.
        ("if TYPE_CHECKING:\n    from gateway.carriers import twilio", False, True),
        ("class C:\n    from gateway.carriers import twilio", True, True),
        ("def f():\n    from gateway.carriers import twilio", False, True),
        ("class C:\n    async def m(self):\n        import gateway.carriers", False, True),
        ("from gateway import audio\nimport gateway.carriersx", False, False),
        ("from .carriers import twilio", False, False),  # relative: inside its own package
    ],
)
def test_the_import_finder_sees_every_spelling(
    source: str, at_import: bool, anywhere: bool
) -> None:
    """The checks here are only as good as this finder."""
    found = [i for i in import_graph.imports_in(ast.parse(source)) if i.names("gateway.carriers")]
    assert any(i.eager for i in found) == at_import
    assert bool(found) == anywhere


def _importers(package: str, target: str, *, eager_only: bool = False) -> list[str]:
    """The modules of ``package`` that import ``target`` (or a module in it)."""
    return [
        name
        for name, path in import_graph.modules(package).items()
        if any(
            i.names(target) and (i.eager or not eager_only)
            for i in import_graph.module_imports(name, path)
        )
    ]


def test_the_simulated_carriers_do_not_import_the_gateways_carriers() -> None:
    """callsim's Twilio and Telnyx peers re-implement the carriers' side from their
    documentation: built on ``gateway.carriers`` they would agree with the gateway by
    construction and catch none of its mistakes."""
    assert _importers("callsim", "gateway.carriers") == []


def test_the_gateway_imports_callsim_only_inside_functions() -> None:
    """Serving calls loads no simulator: only the commands that run one (``gateway demo``,
    ``call``, ``simulator``, ``serve --simulator``) import callsim, when they run."""
    assert _importers("gateway", "callsim", eager_only=True) == []
    # The lazy imports exist (a finder that saw nothing would pass the check above too).
    assert "gateway.cli" in _importers("gateway", "callsim")


def test_a_gemini_only_gateway_never_imports_the_openai_sdk() -> None:
    """The SDK costs ~0.5 s and ~10 MB per process: only a gateway whose agents run on OpenAI
    pays it (``gateway/realtime/client.py`` imports it when the first client is made)."""
    code = (
        "import sys, gateway.cli, gateway.server, gateway.providers, gateway.realtime.session\n"
        "assert 'openai' not in sys.modules, sorted(m for m in sys.modules if 'openai' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
