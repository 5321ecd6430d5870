"""histomodels never imports histofetch: `pip install histomodels` brings no PDF or NCBI code.

Only the demo mines its own article with histofetch, through an import inside
``histomodels.demo.run_demo`` guarded by the ``histomodels[demo]`` extra; every other module
must not name histofetch at all (an AST scan of every import statement, at any depth).
"""

from __future__ import annotations

import ast
from pathlib import Path

import histomodels

SRC = Path(histomodels.__file__).parent
#: The one allowed use: the demo's optional extra (fails with a message naming the extra).
ALLOWED = {("demo.py", "run_demo")}


def _nested_imports(func: ast.FunctionDef) -> list[ast.AST]:
    return [n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _offenders(src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (rel, node.name) in ALLOWED:
                allowed_nodes |= {id(n) for n in _nested_imports(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            hit = any(n == "histofetch" or n.startswith("histofetch.") for n in names)
            if hit and id(node) not in allowed_nodes:
                bad.append(f"{rel}:{node.lineno}")
    return bad


def test_no_histomodels_module_imports_histofetch() -> None:
    assert _offenders() == []


def test_the_scan_finds_an_import_when_there_is_one(tmp_path: Path) -> None:
    fake = tmp_path / "pkg"
    (fake / "sub").mkdir(parents=True)
    (fake / "ok.py").write_text("import histocore.io\n")
    (fake / "sub" / "bad.py").write_text(
        "def f():\n    from histofetch.extract import run_extract\n"
    )
    (fake / "demo.py").write_text("def run_demo():\n    import histofetch\n")  # the extra
    assert _offenders(fake) == ["sub/bad.py:2"]
