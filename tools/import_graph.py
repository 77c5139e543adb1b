#!/usr/bin/env python3
"""The import graph of ``gateway/``, checked against its layers.

    python tools/import_graph.py           # check: circles, upward imports, simulator imports
    python tools/import_graph.py --dot     # the graph in Graphviz DOT (| dot -Tsvg > deps.svg)

The code is read with ``ast``: nothing is imported or run. An import inside a function counts
as an edge like any other (a lazy import still ties two modules together), except that the
product may import the simulators (``callsim``) lazily, and only lazily: ``gateway serve
--simulator`` does. Exit status 0 when the graph is clean, 1 otherwise.

``LAYERS`` is the architecture, lowest first: a module may import from its own layer and the
ones below it, never from one above. Within a layer, the only rule is no circles.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gateway"

#: Lowest first. A module belongs to the first entry one of whose prefixes names it or a
#: package above it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations",
        (
            "gateway.aio",
            "gateway.answers",
            "gateway.logs",
            "gateway.metrics",
            "gateway.variables",
            "gateway.agents",
            "gateway.security",
            "gateway.claims",
            "gateway.cpus",
            "gateway.pacing",
            "gateway.connections",
            "gateway.wire",
            "gateway.wsparser",
            "gateway.mediaplane",
            "gateway._mediaplane",
        ),
    ),
    ("audio", ("gateway.audio",)),
    ("carriers", ("gateway.carriers",)),
    ("settings", ("gateway.settings",)),
    ("startup", ("gateway.startup",)),
    ("records", ("gateway.records",)),
    ("model", ("gateway.model",)),
    ("live", ("gateway.live",)),
    ("realtime", ("gateway.realtime",)),
    ("call", ("gateway.call",)),
    ("providers", ("gateway.providers",)),
    (
        "web state",
        ("gateway.web.feed", "gateway.web.state", "gateway.web.httputil", "gateway.web.auth"),
    ),
    ("web paths", ("gateway.web.admission", "gateway.web.streams")),
    (
        "web routes",
        (
            "gateway.web.ops",
            "gateway.web.twilio",
            "gateway.web.telnyx",
            "gateway.web.admin",
            "gateway.web.outbound",
            "gateway.web.reload",
            "gateway.web.console",
            "gateway.web.browser",
        ),
    ),
    ("web app", ("gateway.web.app", "gateway.web")),
    ("workers", ("gateway.workers",)),
    ("server", ("gateway.server",)),
    ("cli", ("gateway.cli", "gateway.__main__", "gateway")),
)
#: Packages the product may import only inside a function (never at module level).
LAZY_ONLY = ("callsim",)


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    #: Imported at module level (False: inside a function or method).
    eager: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str = PACKAGE, root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


@dataclass(frozen=True, slots=True)
class Imported:
    """One name an import statement brings in: ``import a.b`` is (``a.b``, None), ``from a
    import b`` is (``a``, ``b``), where ``b`` may be the module ``a.b`` or a name in ``a``."""

    module: str
    name: str | None
    #: Runs when the importing module is imported (False: inside a function, or only for
    #: type checkers under ``if TYPE_CHECKING``). A class body runs at import.
    eager: bool

    def names(self, target: str) -> bool:
        """Whether this brings in ``target`` or a module inside it."""
        full = f"{self.module}.{self.name}" if self.name else self.module
        return any(n == target or n.startswith(target + ".") for n in (self.module, full))


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def imports_in(tree: ast.AST, package: str = "") -> Iterator[Imported]:
    """Every import in ``tree``, wherever it stands; a relative one is resolved against
    ``package`` (and skipped without one)."""
    yield from _imports_among(ast.iter_child_nodes(tree), package, eager=True)


def _imports_among(nodes: Iterable[ast.AST], package: str, *, eager: bool) -> Iterator[Imported]:
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (Imported(alias.name, None, eager) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            if base:
                yield from (Imported(base, alias.name, eager) for alias in node.names)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports_among(node.body, package, eager=False)
            yield from _imports_among(node.orelse, package, eager=eager)
        else:
            inside = eager and not isinstance(node, _FUNCTIONS)
            yield from _imports_among(ast.iter_child_nodes(node), package, eager=inside)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    if not package:
        return ""
    parts = package.split(".")
    anchor = parts[: len(parts) - node.level + 1]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(name: str, path: Path) -> Iterator[Imported]:
    """The imports of module ``name``, read from ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(tree, package)


def edges(known: dict[str, Path]) -> Iterator[Edge]:
    for name, path in known.items():
        for imported in module_imports(name, path):
            target = _module_of(imported, known)
            if target is not None and target != name:
                yield Edge(name, target, imported.eager)


def _module_of(imported: Imported, known: dict[str, Path]) -> str | None:
    """The module of the package an import names (``from a import b``: module ``a.b`` when
    there is one, else ``a``); a lazy-only package whole; None for anything else."""
    if imported.name is not None and f"{imported.module}.{imported.name}" in known:
        return f"{imported.module}.{imported.name}"
    if imported.module in known:
        return imported.module
    top = imported.module.split(".")[0]
    return top if top in LAZY_ONLY else None


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != PACKAGE and module.startswith(prefix + ".")):
                return index
    return None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems(package: str = PACKAGE, root: Path = ROOT) -> list[str]:
    """Everything wrong with the graph, one line each; empty when it is clean."""
    known = modules(package, root)
    all_edges = list(edges(known))
    out: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in known}
    for edge in all_edges:
        if edge.target in LAZY_ONLY:
            if edge.eager:
                out.append(f"{edge.source} imports {edge.target} at module level")
            continue
        graph[edge.source].add(edge.target)
    for component in circles(graph):
        out.append("import circle: " + " <-> ".join(component))
    for name in known:
        if layer_of(name) is None:
            out.append(f"{name} is in no layer (add it to LAYERS in tools/import_graph.py)")
    for edge in all_edges:
        low, high = layer_of(edge.target), layer_of(edge.source)
        if low is not None and high is not None and low > high:
            out.append(
                f"{edge.source} ({LAYERS[high][0]}) imports {edge.target} ({LAYERS[low][0]}),"
                " a higher layer"
            )
    return sorted(set(out))


def dot(package: str = PACKAGE) -> str:
    known = modules(package)
    lines = ["digraph gateway {", "  rankdir=BT; node [shape=box, fontsize=10];"]
    for index, (title, _) in enumerate(LAYERS):
        members = sorted(m for m in known if layer_of(m) == index)
        if members:
            lines.append(f'  subgraph "cluster_{index}" {{ label="{title}";')
            lines.extend(f'    "{m}";' for m in members)
            lines.append("  }")
    for edge in sorted(set(edges(known)), key=lambda e: (e.source, e.target)):
        style = "" if edge.eager else " [style=dashed]"
        lines.append(f'  "{edge.source}" -> "{edge.target}"{style};')
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dot", action="store_true", help="print the graph as Graphviz DOT")
    args = parser.parse_args(argv)
    if args.dot:
        print(dot())
        return 0
    found = problems()
    for line in found:
        print(line)
    if not found:
        print(f"{len(modules())} modules of {PACKAGE}/: no circles, no upward imports")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
