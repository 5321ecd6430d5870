"""What a user's ``pip install`` gets: the wheels, not the editable installs the tests use.

An editable install reads the source tree, so a data file left out of ``package-data`` (the
shipped weights, the review page's templates) or a package imported but not declared (it
came with something else in the dev venv) passes every other test and fails only for users.

- Every third-party package a module imports is declared by that package's pyproject, as a
  dependency or in an extra (an AST scan of ``import``/``from`` statements only; only ``if
  TYPE_CHECKING:`` imports are left out); an extra's package is imported only inside
  functions, so the base install imports. Where the code needs a version newer than some
  releases (an attribute or module name added later), ``MINIMUMS`` names it and the
  pyprojects' lower bounds must reach it.
- The three wheels, built offline from copies of ``packages/*`` by the build backend the
  pyprojects name, called as pip calls it (``setuptools.build_meta``, the installed one, as
  ``pip wheel --no-build-isolation``: nothing is downloaded; a stale ``build/`` or
  ``*.egg-info`` in the checkout cannot hide a dropped file), hold exactly the files under
  ``src/<package>/`` (the files git tracks there, in a git checkout; caches aside), their
  licence, readme and metadata (classifiers included), and the entry points name the Typer
  apps. Every shipped model's weights (``pretrained/*.safetensors``) have their model card
  (``pretrained/<name>.md``) beside them, in the tree and in the wheel.
- The sdists hold the same files and, besides, only their metadata; a wheel built from each
  sdist holds what the wheel built from the tree holds. All nine builds run in one process
  (pip's three processes a package took most of this file's time).
- Each package's ``LICENSE`` is the root ``LICENSE``, byte for byte (never skipped).

The installs themselves (non-editable, into a fresh venv) are checked by hand only
(docs/testing.md).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata as md
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from test_import_graph import _imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("histocore", "histofetch", "histomodels")
SCRIPTS = {"histofetch": "histofetch.cli:app", "histomodels": "histomodels.cli:app"}
#: What a build or a run leaves under ``src/`` that is no part of the package.
CACHES = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def _norm(name: str) -> str:
    """A distribution name in PEP 503 normal form (``PyYAML`` → ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert match, req
    return _norm(match.group(1))


def _project(package: str) -> dict:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]


def _tracked(folder: Path) -> list[Path] | None:
    """The files git tracks under ``folder`` (those still on disk), or None outside a git
    checkout (or without git)."""
    try:
        run = subprocess.run(
            ["git", "-C", str(folder), "ls-files", "-z", "--cached", "--", "."],
            capture_output=True,
            check=False,
        )
    except OSError:
        return None
    if run.returncode != 0:
        return None
    files = [folder / name for name in run.stdout.decode().split("\0") if name]
    return [f for f in files if f.is_file()]


def _source_files(package: str, root: Path = ROOT) -> set[str]:
    """Every file under ``src/<package>/`` but caches, as wheel paths (``histofetch/x.py``):
    the files git tracks there in a git checkout (a stray ``.DS_Store`` or ``cli.py~`` is no
    part of the package), else every file on disk."""
    src = root / "packages" / package / "src"
    files = _tracked(src / package)
    if files is None:
        files = [p for p in (src / package).rglob("*") if p.is_file()]
    return {
        p.relative_to(src).as_posix()
        for p in files
        if not any(part in CACHES for part in p.parts) and p.suffix not in (".pyc", ".pyo")
    }


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


#: (package, distribution, lowest version the code works with, why): each requirement of that
#: distribution in the package's pyproject (dependencies and extras) must have a ``>=`` bound
#: at least this high, or a user with an older release installed gets an AttributeError or
#: ImportError that no test here (on the venv's newer release) can see.
MINIMUMS = (
    ("histomodels", "huggingface-hub", "0.19", "models/hub.py: constants.HF_HUB_ETAG_TIMEOUT"),
    ("histomodels", "pymupdf", "1.27.1", "demo.py writes the PDF histofetch reads (below)"),
    # `import pymupdf` needs 1.24.3; the PDF tests pass from 1.27.1 (nox -s min_versions):
    # 1.24.3 gives a grey image other pixels, 1.25 reads a hostile title otherwise, 1.26
    # names a lying page /Count otherwise (docs/testing.md)
    ("histofetch", "pymupdf", "1.27.1", "tests/histofetch/test_extract.py passes from 1.27.1"),
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def low_bounds_below(package: str, dist: str, minimum: str, root: Path = ROOT) -> list[str]:
    """Each requirement of ``dist`` in the package's pyproject whose lower bound (``>=``,
    ``==``, ``~=``) is missing or below ``minimum``; [] when all reach it (and when ``dist``
    is not required at all: the import scan answers for that)."""
    project = tomllib.loads((root / "packages" / package / "pyproject.toml").read_text())
    project = project["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    low = []
    for req in reqs:
        if _requirement_name(req) != _norm(dist):
            continue
        spec = req.partition(";")[0]
        bounds = [_version(v) for v in re.findall(r"(?:>=|==|~=)\s*([0-9][0-9.]*)", spec)]
        if not bounds or max(bounds) < _version(minimum):
            low.append(req)
    return low


@pytest.mark.parametrize(("package", "dist", "minimum", "why"), MINIMUMS)
def test_declared_lower_bounds_reach_what_the_code_needs(
    package: str, dist: str, minimum: str, why: str
) -> None:
    assert low_bounds_below(package, dist, minimum) == [], f"needs {dist}>={minimum}: {why}"


def test_the_lower_bound_check_finds_a_missing_or_low_bound(tmp_path: Path) -> None:
    pkg = tmp_path / "packages" / "histofake"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "histofake"\ndependencies = ["huggingface_hub", "numpy>=1"]\n'
        '[project.optional-dependencies]\na = ["PyMuPDF>=1.24"]\nb = ["pymupdf>=1.24.3"]\n'
        "c = [\"pymupdf >= 1.25 ; python_version >= '3.99'\"]\n"
    )
    assert low_bounds_below("histofake", "huggingface-hub", "0.19", tmp_path) == ["huggingface_hub"]
    assert low_bounds_below("histofake", "pymupdf", "1.24.3", tmp_path) == ["PyMuPDF>=1.24"]
    assert low_bounds_below("histofake", "numpy", "1", tmp_path) == []


def test_each_package_licence_is_the_root_licence() -> None:
    """The copies under ``packages/*`` are what the wheels and sdists ship; the build tests
    compare them too but skip without a new enough setuptools, this one never does."""
    root = (ROOT / "LICENSE").read_bytes()
    for package in PACKAGES:
        assert (ROOT / "packages" / package / "LICENSE").read_bytes() == root, package


def _weights_without_a_card(names: set[str]) -> list[str]:
    """Each ``.../pretrained/<name>.safetensors`` among ``names`` (wheel paths) with no
    ``.../pretrained/<name>.md`` beside it."""
    return sorted(
        n for n in names
        if "/pretrained/" in n and n.endswith(".safetensors")
        and n.removesuffix(".safetensors") + ".md" not in names
    )  # fmt: skip


def test_every_shipped_model_has_its_card_beside_its_weights() -> None:
    """A pip user gets the weights; the card (what the model was trained on, its metrics
    and limits) must come with them: ``pcam-cnn``'s lived only in ``docs/``. Checked on
    the tree here (never skipped) and on the wheels below."""
    found = set()
    for package in PACKAGES:
        names = _source_files(package)
        assert _weights_without_a_card(names) == [], package
        found |= {n for n in names if n.endswith(".safetensors")}
    assert {"histomodels/pretrained/pcam-cnn.safetensors",
            "histofetch/pretrained/he_classifier.safetensors"} <= found  # fmt: skip
    card = ROOT / "packages/histomodels/src/histomodels/pretrained/pcam-cnn.md"
    assert card.read_text(encoding="utf-8").startswith("# Model card: `pcam-cnn`")
    # docs/ keeps only a pointer (one card, no copy to drift); its links lead somewhere
    pointer = ROOT / "docs" / "model_card_pcam_cnn.md"
    links = re.findall(r"\]\(([^)#]+)\)", pointer.read_text(encoding="utf-8"))
    assert links and all((pointer.parent / link).resolve() == card for link in links)


def test_the_card_check_finds_weights_without_one() -> None:
    names = {"m/pretrained/a.safetensors", "m/pretrained/a.md", "m/pretrained/b.safetensors",
             "m/pretrained/b.json", "m/other/c.safetensors"}  # fmt: skip
    assert _weights_without_a_card(names) == ["m/pretrained/b.safetensors"]


# --- the built wheels and sdists ------------------------------------------------------------


def _backend_or_skip() -> None:
    """The build backend the pyprojects name, as they require it, or a skip saying why."""
    try:
        version = md.version("setuptools")
    except md.PackageNotFoundError:
        pytest.skip("setuptools (the build backend) is not installed: no offline build")
    if int(version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {version} is installed; the pyprojects need setuptools>=77")


def test_an_old_setuptools_skips_the_build_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(md, "version", lambda name: "76.1")
    with pytest.raises(pytest.skip.Exception, match=r"setuptools 76\.1 is installed"):
        _backend_or_skip()


def _copies(tmp: Path) -> Path:
    """The three projects copied without build leftovers, under ``tmp/packages``."""
    skip = shutil.ignore_patterns("build", "dist", "*.egg-info", *CACHES, "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / "packages" / package, tmp / "packages" / package, ignore=skip)
    return tmp / "packages"


#: Run in one process (``build`` is no dev dependency): each project's wheel and sdist from
#: the tree (into ``dist``), then a wheel from each sdist unpacked (into ``again``), as pip
#: builds one for ``pip install x.tar.gz``. ``sys.argv`` is read first: the backend rewrites it.
_BUILD = """
import os, sys, tarfile
import setuptools.build_meta as backend
dist, again, unpacked, projects = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
for project in projects:
    os.chdir(project)
    backend.build_wheel(dist)
    backend.build_sdist(dist)
for name in sorted(os.listdir(dist)):
    if name.endswith(".tar.gz"):
        with tarfile.open(os.path.join(dist, name)) as sdist:
            # our own sdist; the "data" filter where this Python has one (3.11.4+; 3.12+)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            sdist.extractall(unpacked, **safe)
        os.chdir(os.path.join(unpacked, name.removesuffix(".tar.gz")))
        backend.build_wheel(again)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    """Package → (its wheel, its sdist, the wheel built from that sdist), built offline
    from copies of the checkout, in one process."""
    _backend_or_skip()
    tmp = tmp_path_factory.mktemp("packaging")
    projects = _copies(tmp)
    dist, again, unpacked = tmp / "dist", tmp / "again", tmp / "unpacked"
    for folder in (dist, again, unpacked):
        folder.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _BUILD, str(dist), str(again), str(unpacked),
         *(str(projects / p) for p in PACKAGES)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out: dict[str, tuple[Path, Path, Path]] = {}
    for package in PACKAGES:
        (wheel,) = dist.glob(f"{package}-*.whl")
        (sdist,) = dist.glob(f"{package}-*.tar.gz")
        (from_sdist,) = again.glob(f"{package}-*.whl")
        out[package] = (wheel, sdist, from_sdist)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_the_wheel_holds_every_file_under_src(
    package: str, built: dict[str, tuple[Path, Path, Path]]
) -> None:
    """The shipped weights and their cards, the review page's templates and static files,
    ``py.typed``: every file the code can load at run time, and nothing else."""
    with zipfile.ZipFile(built[package][0]) as wheel:
        names = {n for n in wheel.namelist() if ".dist-info/" not in n}
    expected = _source_files(package)
    assert _weights_without_a_card(names) == [], "shipped weights without their model card"
    assert sorted(expected - names) == [], "under src/ but missing from the wheel (package-data?)"
    assert sorted(names - expected) == [], (
        "in the wheel but not under src/ (or there but untracked: a stray file, or one to git add?)"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_the_sdist_holds_every_file_under_src_and_its_licence_and_readme(
    package: str, built: dict[str, tuple[Path, Path, Path]]
) -> None:
    """``pip install`` from an sdist builds its wheel from what the sdist holds; besides those
    files it holds only its metadata (``PKG-INFO``, ``pyproject.toml``, ``setup.cfg``,
    ``src/<package>.egg-info/``)."""
    with tarfile.open(built[package][1]) as sdist:
        names = {m.name.partition("/")[2] for m in sdist.getmembers() if m.isfile()}
    expected = {f"src/{n}" for n in _source_files(package)} | {"LICENSE", "README.md"}
    assert sorted(expected - names) == [], "under src/ but missing from the sdist"
    meta = {"PKG-INFO", "pyproject.toml", "setup.cfg"}
    extra = {n for n in names - expected - meta if not n.startswith(f"src/{package}.egg-info/")}
    assert sorted(extra) == [], "in the sdist but not under src/ (or untracked there)"


@pytest.mark.parametrize("package", PACKAGES)
def test_wheels_built_from_the_sdists_hold_what_the_tree_wheels_hold(
    package: str, built: dict[str, tuple[Path, Path, Path]]
) -> None:
    """What ``pip install histomodels-0.1.0.tar.gz`` builds: the same files, not fewer."""
    with zipfile.ZipFile(built[package][0]) as a, zipfile.ZipFile(built[package][2]) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())


@pytest.mark.parametrize("package", PACKAGES)
def test_the_wheel_metadata(package: str, built: dict[str, tuple[Path, Path, Path]]) -> None:
    project = _project(package)
    with zipfile.ZipFile(built[package][0]) as wheel:
        info = f"{package}-{project['version']}.dist-info"
        meta = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        names = set(wheel.namelist())
        entry_points = (
            wheel.read(f"{info}/entry_points.txt").decode()
            if f"{info}/entry_points.txt" in names
            else ""
        )
        licence = wheel.read(f"{info}/licenses/LICENSE").decode()
    assert meta["Name"] == package
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "MIT"
    assert meta["License-File"] == "LICENSE"
    assert licence == (ROOT / "LICENSE").read_text()
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = meta.get_payload()
    assert isinstance(readme, str)
    assert readme.strip() == (ROOT / "packages" / package / "README.md").read_text().strip()
    classifiers = meta.get_all("Classifier") or []
    assert classifiers == project["classifiers"]
    # PEP 639: the licence is the License-Expression; setuptools>=77 refuses both
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert ("Typing :: Typed" in classifiers) == (f"{package}/py.typed" in names)
    assert sorted(meta.get_all("Provides-Extra") or []) == sorted(
        project.get("optional-dependencies", {})
    )
    assert _names(meta.get_all("Requires-Dist") or []) == _names(_requirements(project))
    if package in SCRIPTS:
        assert f"{package} = {SCRIPTS[package]}" in entry_points.splitlines()
    else:
        assert "console_scripts" not in entry_points


def _requirements(project: dict) -> list[str]:
    """The pyproject's requirements, each extra's with its marker as METADATA writes it."""
    reqs = list(project.get("dependencies", []))
    for extra, extra_reqs in project.get("optional-dependencies", {}).items():
        reqs += [f'{r}; extra == "{extra}"' for r in extra_reqs]
    return reqs


def _names(reqs: list[str]) -> list[tuple[str, str]]:
    """(distribution, extra or "") of each requirement, sorted."""
    extra = re.compile(r"extra\s*==\s*[\"']([^\"']+)[\"']")
    return sorted((_requirement_name(r), m[1] if (m := extra.search(r)) else "") for r in reqs)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_entry_point_names_a_typer_app(script: str) -> None:
    import typer

    module, _, attr = SCRIPTS[script].partition(":")
    assert isinstance(getattr(importlib.import_module(module), attr), typer.Typer)
