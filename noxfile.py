"""Developer sessions: ``nox -s demo``, ``tests``, ``lint``, ``check`` (pyright), ``fmt``,
``export_compat`` (the export tests on torch 2.11, in a venv of their own), ``min_versions``
(the PDF and hub tests on the lowest pymupdf and huggingface_hub the pyprojects allow).

All sessions but ``export_compat`` share one virtual environment, ``.venv`` at the
repository root, so PyTorch (several GB) is installed once. It is (re)installed only when a
pyproject or this file changes, so a second run starts in seconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".histo-install-stamp"
PACKAGES = [
    "-e", "packages/histocore[parquet]",
    "-e", "packages/histofetch",
    "-e", "packages/histomodels[lite0,demo]",
]  # fmt: skip
# pyright[nodejs] brings its own Node.js as a wheel, so `check` needs no apt package.
# selenium drives Debian's chromium in the review page's browser test (.ci/run installs it).
DEV = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",  # `tests` runs on TEST_WORKERS processes (below)
    "ruff==0.17.6",
    "pyright[nodejs]==1.1.414",
    "selenium>=4.20",
    "hypothesis>=6.100",  # tests/abuse/test_fuzz_parsers.py
    # tests/test_packaging.py builds the wheels offline (--no-build-isolation) with the
    # backend the pyprojects name; torch happens to bring it too, but not as a promise
    "setuptools>=77",
]
# PyTorch wheels: the CPU/GPU build pip resolves; the pins match what the project is tested on.
TORCH = ["torch>=2.2,<=2.14.1", "torchvision>=0.17,<=0.29.1"]

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

ENV = {
    # Two torch threads collapse on depthwise nets when anything else runs; PASSIVE avoids it.
    "OMP_WAIT_POLICY": "PASSIVE",
    "PYTHONUNBUFFERED": "1",
    "MPLBACKEND": "Agg",
}


def _install(session: nox.Session) -> None:
    digest = hashlib.sha256()
    for p in [
        "noxfile.py",
        *(f"packages/{n}/pyproject.toml" for n in ("histocore", "histofetch", "histomodels")),
    ]:
        digest.update((ROOT / p).read_bytes())
    if not (BIN / "python").exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    if STAMP.exists() and STAMP.read_text() == digest.hexdigest():
        return
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    session.run(*pip, "--upgrade", "pip", external=True, silent=True)
    session.run(*pip, *TORCH, external=True)
    session.run(*pip, *PACKAGES, *DEV, external=True)
    STAMP.write_text(digest.hexdigest())


def _run(session: nox.Session, *args: str) -> None:
    session.run(*args, external=True, env={**ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def _test_workers() -> int:
    """pytest-xdist workers for ``tests``: the CPU cores this process may use, at most 2 (the
    project's machine; more is untested), or ``$TEST_WORKERS``; 0 runs in this process."""
    if "TEST_WORKERS" in os.environ:
        given = os.environ["TEST_WORKERS"]
        if not given.strip().isdigit():
            raise SystemExit(f"error: TEST_WORKERS={given!r}: not a number of workers (0, 1, 2, …)")
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(2, cores or 1)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (real data in ../shared is used when present, else skipped) on
    2 pytest-xdist workers, each test file whole on one (its module fixtures built once);
    ``nox -s tests -- -n 0 tests/x.py`` runs in one process (later options win)."""
    _install(session)
    workers = _test_workers()
    parallel = ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []
    _run(session, str(BIN / "pytest"), *parallel, *(session.posargs or ["tests"]))


@nox.session
def demo(session: nox.Session) -> None:
    """The whole flow offline on the embedded synthetic default; writes demo_out/."""
    _install(session)
    _run(session, str(BIN / "histomodels"), "demo", "--out", "demo_out", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + format check."""
    _install(session)
    _run(session, str(BIN / "ruff"), "check", ".")
    _run(session, str(BIN / "ruff"), "format", "--check", ".")


@nox.session
def check(session: nox.Session) -> None:
    """Static type check of packages/*/src, tests/ and benchmarks/ (pyright; pyrightconfig.json)."""
    _install(session)
    _run(session, str(BIN / "pyright"), *session.posargs)


@nox.session
def fmt(session: nox.Session) -> None:
    """Apply ruff's fixes and formatting."""
    _install(session)
    _run(session, str(BIN / "ruff"), "check", "--fix", ".")
    _run(session, str(BIN / "ruff"), "format", ".")


# --- export_compat: the export tests on an older torch --------------------------------------
#: torch 2.11's dynamo ONNX exporter failed on the centre-pool prior (fixed in 42abd49 and
#: 26d430b); the torch `tests` installs never had that bug, so it could come back unseen.
#: These are the versions it was seen with (and that export passes on since the fix).
EXPORT_COMPAT = [
    "torch==2.11.0",
    "torchvision==0.26.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
]
COMPAT_VENV = ROOT / ".venv-torch211"
#: every package of that venv pinned (transitive ones too), so CI is red only for our changes
COMPAT_CONSTRAINTS = ROOT / ".ci" / "export_compat_constraints.txt"


@nox.session
def export_compat(session: nox.Session) -> None:
    """The ONNX/TorchScript export tests on torch 2.11 in their own venv (.venv-torch211;
    about 5 GB with torch's CUDA libraries; ~3 min on a fresh clone, ~25 s of it the tests)."""
    bin_ = COMPAT_VENV / "bin"
    stamp = COMPAT_VENV / ".histo-install-stamp"
    digest = hashlib.sha256(" ".join(EXPORT_COMPAT).encode())
    digest.update(COMPAT_CONSTRAINTS.read_bytes())
    for p in ("histocore", "histomodels"):
        digest.update((ROOT / f"packages/{p}/pyproject.toml").read_bytes())
    if not (bin_ / "python").exists():
        session.run(sys.executable, "-m", "venv", str(COMPAT_VENV), external=True)
    if not (stamp.exists() and stamp.read_text() == digest.hexdigest()):
        pip = [str(bin_ / "python"), "-m", "pip", "install", "--disable-pip-version-check",
               "--constraint", str(COMPAT_CONSTRAINTS)]  # fmt: skip
        no_cache = {"PIP_NO_CACHE_DIR": "1"}  # ~5 GB of wheels not kept twice on a CI disk
        session.run(*pip, *EXPORT_COMPAT, external=True, env=no_cache)
        session.run(*pip, "-e", "packages/histocore", "-e", "packages/histomodels",
                    *EXPORT_COMPAT, "pytest>=8", "pytest-timeout>=2.3", external=True,
                    env=no_cache)  # fmt: skip
        stamp.write_text(digest.hexdigest())
    session.run(
        str(bin_ / "python"), "-c", "import torch; assert torch.__version__.startswith('2.11.')",
        external=True,
    )  # fmt: skip
    args = session.posargs or ["tests/histomodels/test_export.py"]
    session.run(str(bin_ / "pytest"), "-q", "-p", "no:cacheprovider", *args, external=True,
                env={**ENV, "OMP_NUM_THREADS": "1"})  # fmt: skip


# --- min_versions: the lowest pymupdf and huggingface_hub the pyprojects allow --------------
#: Each pyproject's lower bound for the two libraries whose old releases behave differently
#: (tests/test_packaging.py's MINIMUMS); by hand, not in CI (docs/testing.md).
MIN_VERSIONS = ["pymupdf==1.27.1", "huggingface_hub==0.19.0"]
MIN_VENV = ROOT / ".venv-min"
#: Every test file that reads a PDF through pymupdf (tests/histofetch's pdf_factory, the
#: hostile PDFs and fuzzed parsers, the demo's PDF) or reaches huggingface_hub (the hub, timm
#: model names, the abuse cases' HOME paths).
MIN_TESTS = [
    "tests/histofetch",
    "tests/abuse",
    "tests/histomodels/test_hub.py",
    "tests/histomodels/test_cli_options.py",
    "tests/histomodels/test_demo.py",
]
MIN_STAMP = MIN_VENV / ".histo-min-stamp"


@nox.session
def min_versions(session: nox.Session) -> None:
    """Every test that reads a PDF or reaches huggingface_hub (MIN_TESTS) with only the two
    MIN_VERSIONS installed in .venv-min (made by .venv's python), everything else read from
    .venv (a .pth line after .venv-min's own packages) and the packages from packages/*/src:
    a few MB, not another torch."""
    _install(session)
    bin_ = MIN_VENV / "bin"
    # .venv's python by path and version: a .venv made again by another python at the same
    # path must remake .venv-min, whose .pth reads .venv's compiled modules
    version = subprocess.run([str(BIN / "python"), "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    made_for = f"{BIN / 'python'} {version}\n{' '.join(MIN_VERSIONS)}\n"
    fresh = not MIN_STAMP.exists() or MIN_STAMP.read_text() != made_for
    if fresh:
        # .venv's own python, so compiled modules read from .venv match it; remade whole, so
        # nothing an earlier session installed (huggingface_hub's dependencies) shadows .venv
        session.run(str(BIN / "python"), "-m", "venv", "--clear", str(MIN_VENV), external=True)
    (own,) = MIN_VENV.glob("lib/python3*/site-packages")
    (shared,) = VENV.glob("lib/python3*/site-packages")
    (own / "zz_histo_venv.pth").write_text(f"{shared}\n")  # after its own: the pins win
    if fresh:
        # only the two pins, their dependencies read from .venv (--ignore-installed: pip
        # would take .venv's copies, seen through the .pth line, for installed ones)
        session.run(str(bin_ / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                    "--quiet", "--no-deps", "--ignore-installed", *MIN_VERSIONS,
                    external=True)  # fmt: skip
        MIN_STAMP.write_text(made_for)
    src = os.pathsep.join(str(ROOT / "packages" / p / "src")
                          for p in ("histocore", "histofetch", "histomodels"))  # fmt: skip
    session.run(str(bin_ / "python"), "-c", "import pymupdf, huggingface_hub as h; "
                "print('pymupdf', pymupdf.VersionBind, 'huggingface_hub', h.__version__)",
                external=True, env={"PYTHONPATH": src})  # fmt: skip
    workers = _test_workers()
    parallel = ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []
    session.run(str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                *parallel, *(session.posargs or MIN_TESTS), external=True,
                env={**ENV, "PYTHONPATH": src})  # fmt: skip
