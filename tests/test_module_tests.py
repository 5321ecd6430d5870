"""Every module has its own test file, or docs/testing.md says where it is tested.

A module ``packages/P/src/P/a/b.py`` has its own test file when some
``tests/P/**/test_<name>.py`` names it: ``<name>`` is ``b``, ``a_b`` or ``P_a_b``
(qualify when basenames would clash; test file basenames are unique across ``tests/``).
A bare name belongs to the shallowest module of that name (``test_evaluate.py`` is
``histomodels/evaluate.py``, not ``cli/evaluate.py``). An ``__init__.py`` counts as its
package's module unless it only re-exports (docstring, imports, ``__all__``, ``__version__``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"
SECTION = "## Modules without their own test file"
_LINE = re.compile(r"^- `([\w/]+\.py)`: \S")


def _reexport_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    for i, node in enumerate(body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id in ("__all__", "__version__") for t in node.targets
        ):
            continue
        return False
    return True


def modules() -> dict[str, tuple[str, list[str]]]:
    """``P/a/b.py`` → (package, dotted parts) for every module that needs a test."""
    found = {}
    for path in sorted(ROOT.glob("packages/*/src/*/**/*.py")):
        package = path.relative_to(ROOT / "packages").parts[0]
        rel = path.relative_to(ROOT / "packages" / package / "src")
        parts = list(rel.with_suffix("").parts)
        if path.name == "__main__.py":
            continue
        if path.name == "__init__.py":
            if _reexport_only(path):
                continue
            parts = parts[:-1]
        found[rel.as_posix()] = (package, parts)
    return found


def own_tests(mods: dict[str, tuple[str, list[str]]]) -> dict[str, Path]:
    """Module → its own test file, by the naming rule in this file's docstring."""
    owned: dict[str, Path] = {}
    for test in sorted(ROOT.glob("tests/*/**/test_*.py")):
        package, name = test.relative_to(ROOT / "tests").parts[0], test.stem[len("test_") :]
        matches = []
        for mod, (pkg, parts) in mods.items():
            if pkg != package:
                continue
            for k in range(1, len(parts) + 1):
                if "_".join(parts[-k:]) == name:
                    matches.append((k, len(parts), mod))
                    break
        matches.sort()
        if matches and (len(matches) == 1 or matches[0][:2] != matches[1][:2]):
            owned[matches[0][2]] = test
    return owned


def documented() -> dict[str, str]:
    """Module → the line of docs/testing.md's section that says where it is tested."""
    lines = DOC.read_text().splitlines()
    start = lines.index(SECTION) + 1
    listed = {}
    for line in lines[start:]:
        if line.startswith("## "):
            break
        match = _LINE.match(line)
        if match:
            listed[match.group(1)] = line
    return listed


def test_every_module_has_a_test_file_or_a_line_in_docs() -> None:
    mods = modules()
    owned, listed = own_tests(mods), documented()
    missing = sorted(m for m in mods if m not in owned and m not in listed)
    assert not missing, (
        f"modules with no tests/<package>/**/test_<module>.py and no line under {SECTION!r} "
        f"in docs/testing.md: {missing}"
    )


def test_docs_list_only_modules_that_exist_and_still_lack_a_test_file() -> None:
    mods = modules()
    owned, listed = own_tests(mods), documented()
    gone = sorted(m for m in listed if m not in mods)
    assert not gone, f"docs/testing.md lists modules that no longer exist: {gone}"
    tested = sorted(m for m in listed if m in owned)
    assert not tested, f"docs/testing.md lists modules that now have a test file: {tested}"


def test_the_rule_names_test_files_as_expected() -> None:
    owned = own_tests(modules())
    assert owned["histomodels/evaluate.py"].name == "test_evaluate.py"
    assert "histomodels/cli/evaluate.py" not in owned  # the bare name is the shallower module
    assert owned["histocore/manifest.py"].name == "test_manifest.py"
