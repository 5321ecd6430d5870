"""The import graph of histocore, histofetch and histomodels: no cycles, no library→CLI edges.

The graph is built from the source's AST, not by importing it, so an import hidden inside a
function counts like one at the top of the module (hiding a cycle in a function does not
break it). Only imports under ``if TYPE_CHECKING:`` are left out: they never run.
An edge goes from a module to the module it names: ``from a.b import c`` points at ``a.b.c``
when that is a module, else at ``a.b``; the parent packages an import executes on the way
are not edges (every submodule would otherwise be "in a cycle" with its package).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("histocore", "histofetch", "histomodels")


def _module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → source file, for every module of the three packages."""
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        src = root / "packages" / pkg / "src"
        for path in sorted((src / pkg).rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth, except those inside ``if TYPE_CHECKING:``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.orelse:
            yield from _imports(child)
        return
    for child in ast.iter_child_nodes(node):
        yield from _imports(child)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, known: set[str]):
    """The modules of ``known`` that one import statement in ``module`` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join([*base, *([node.module] if node.module else [])])
        else:
            stem = node.module or ""
        names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
    for name in names:
        # ``import a.b.c`` where a.b.c is no module of ours (an attribute): its longest module.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Module → {imported module: line of the first such import}, within the three packages."""
    files = _module_files(root)
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = graph.setdefault(module, {})
        for node in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, …, a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, {})))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return None


def is_cli(module: str) -> bool:
    """Command-line code: a ``cli`` module or package (and what is in it), or ``__main__``."""
    parts = module.split(".")
    return "cli" in parts or parts[-1] == "__main__"


def library_to_cli(graph: dict[str, dict[str, int]]) -> list[str]:
    return [
        f"{src} -> {dst} (line {line})"
        for src, edges in sorted(graph.items())
        if not is_cli(src)
        for dst, line in sorted(edges.items())
        if is_cli(dst)
    ]


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return (
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle))
        + f" -> {cycle[-1]}"
    )


def test_the_graph_covers_all_three_packages() -> None:
    graph = import_graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    # A known edge of each kind: absolute, relative-free submodule, cross-package.
    assert "histocore.manifest" in graph["histofetch.stage"] or any(
        d.startswith("histocore") for d in graph["histofetch.stage"]
    )
    assert "histomodels.models.registry" in graph["histomodels.models.cnn"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + _describe(cycle, graph)


def test_no_library_module_imports_a_cli_module() -> None:
    assert library_to_cli(import_graph()) == []


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        _write(tmp_path, f"packages/{pkg}/src/{pkg}/__init__.py", "")
    return tmp_path


def test_the_scan_finds_a_cycle_hidden_in_a_function(fake_tree: Path) -> None:
    base = "packages/histomodels/src/histomodels/"
    _write(fake_tree, base + "models/__init__.py", "")
    _write(fake_tree, base + "models/registry.py", "def f():\n    from . import cnn\n")
    _write(fake_tree, base + "models/cnn.py", "from histomodels.models.registry import f\n")
    graph = import_graph(fake_tree)
    cycle = find_cycle(graph)
    assert cycle is not None
    assert set(cycle) == {"histomodels.models.registry", "histomodels.models.cnn"}
    assert "line 2" in _describe(cycle, graph)


def test_type_checking_imports_are_not_edges(fake_tree: Path) -> None:
    base = "packages/histofetch/src/histofetch/"
    _write(
        fake_tree,
        base + "stage.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pool import Pool\n",
    )
    _write(fake_tree, base + "pool.py", "from histofetch import stage\n")
    graph = import_graph(fake_tree)
    assert find_cycle(graph) is None
    assert graph["histofetch.pool"] == {"histofetch.stage": 1}


def test_the_scan_finds_a_library_module_importing_a_cli(fake_tree: Path) -> None:
    base = "packages/histofetch/src/histofetch/"
    _write(fake_tree, base + "cli.py", "from histofetch.stage import run\n")
    _write(fake_tree, base + "stage.py", "def run():\n    from .cli import app\n")
    graph = import_graph(fake_tree)
    assert library_to_cli(graph) == ["histofetch.stage -> histofetch.cli (line 2)"]
