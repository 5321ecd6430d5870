"""What a user's ``pip install`` gets: the packages it declares, not what the dev venv has.

An editable install in the dev venv imports whatever that venv holds, so a package imported
but not declared (it came with something else there) passes every other test and fails only
for users: every third-party package a module imports is declared by that package's
pyproject, as a dependency or in an extra (an AST scan; only ``if TYPE_CHECKING:`` imports
are left out); an extra's package is imported only inside functions, so the base install
imports.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from test_import_graph import _imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("histocore", "histofetch", "histomodels")


def _norm(name: str) -> str:
    """A distribution name in PEP 503 normal form (``PyYAML`` → ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert match, req
    return _norm(match.group(1))


@functools.cache
def _providers() -> dict[str, frozenset[str]]:
    """Import name → the normalised names of the installed distributions that provide it."""
    return {k: frozenset(map(_norm, v)) for k, v in md.packages_distributions().items()}


def _third_party_imports(package: str, root: Path = ROOT) -> dict[str, list[str]]:
    """Top-level name of every non-stdlib import → ``file:line`` of each, with ``!`` before
    the line when the import runs at module level (not inside a function)."""
    src = root / "packages" / package / "src"
    found: dict[str, list[str]] = {}
    for path in sorted((src / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        in_function = {
            id(node)
            for func in ast.walk(tree)
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(func)
        }
        for node in _imports(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level or not node.module:
                    continue
                names = [node.module]
            else:
                names = [alias.name for alias in node.names]
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top == package:
                    continue
                where = f"{path.relative_to(src).as_posix()}:"
                where += str(node.lineno) if id(node) in in_function else f"!{node.lineno}"
                found.setdefault(top, []).append(where)
    return found


def undeclared_imports(package: str, root: Path = ROOT) -> list[str]:
    """One line per import the pyproject does not declare (or declares only in an extra,
    imported at module level), naming the distribution and where it is imported."""
    project = tomllib.loads((root / "packages" / package / "pyproject.toml").read_text())
    project = project["project"]
    base = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras = {
        _requirement_name(r)
        for reqs in project.get("optional-dependencies", {}).values()
        for r in reqs
    }
    problems = []
    for top, places in sorted(_third_party_imports(package, root).items()):
        dists = _providers().get(top, frozenset())
        if not dists:
            problems.append(f"{top}: no installed distribution provides it ({places[0]})")
        elif not dists & (base | extras):
            problems.append(f"{top} ({', '.join(sorted(dists))}): not declared ({places[0]})")
        elif not dists & base and (top_level := [p for p in places if ":!" in p]):
            problems.append(f"{top}: only in an extra, imported at module level ({top_level[0]})")
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_every_imported_package_is_declared(package: str) -> None:
    assert undeclared_imports(package) == []


def test_the_import_scan_finds_an_undeclared_or_top_level_extra_import(tmp_path: Path) -> None:
    pkg = tmp_path / "packages" / "histofake"
    (pkg / "src" / "histofake").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "histofake"\ndependencies = ["numpy>=1", "Pillow"]\n'
        '[project.optional-dependencies]\nyaml = ["PyYAML>=6"]\n'
    )
    (pkg / "src" / "histofake" / "a.py").write_text(
        "from __future__ import annotations\n"
        "import json\n"  # stdlib
        "import numpy as np\n"
        "from PIL import Image\n"  # Pillow, declared under another spelling
        "import yaml\n"  # only in an extra, at module level
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import rich\n"  # never runs
        "def f():\n"
        "    import yaml\n"  # fine inside a function
        "    import typer\n"  # undeclared
        "    from . import b\n"
        "    import histofake.b\n"
    )
    assert undeclared_imports("histofake", tmp_path) == [
        "typer (typer): not declared (histofake/a.py:11)",
        "yaml: only in an extra, imported at module level (histofake/a.py:!5)",
    ]
