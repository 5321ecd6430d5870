"""PEP 561: each package ships its type hints (a ``py.typed`` marker in the wheel), so a
type checker in a user's project reads ``histomodels.inference.Predictor`` and the rest
rather than treating the packages as untyped."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["histocore", "histofetch", "histomodels"])
def test_each_package_has_py_typed_and_its_build_includes_it(package: str) -> None:
    project = ROOT / "packages" / package
    assert (project / "src" / package / "py.typed").is_file()
    config = tomllib.loads((project / "pyproject.toml").read_text())
    assert config["build-system"]["build-backend"] == "setuptools.build_meta"
    data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data.get(package, [])
