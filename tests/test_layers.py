"""The architecture, checked: ``tools/import_graph.py`` finds no import circle in ``gateway/``,
no import from a lower layer to a higher one, and no module-level import of the simulators."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import import_graph  # a script in tools/, not a package


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
