"""histocore.errors: every package's domain errors share one base the CLIs catch."""

from __future__ import annotations

import pytest
from conftest import shadow_package

from histocore.errors import DomainError, UsageError, is_missing
from histocore.manifest import ManifestError
from histofetch.archive import ArchiveError
from histofetch.extract import ExtractError
from histofetch.http import NetError
from histofetch.resolve import ServiceError
from histomodels.checkpoint import CheckpointError
from histomodels.data.base import DatasetError
from histomodels.data.download import DownloadError
from histomodels.models.registry import ModelError
from histomodels.models.weights import WeightsError
from histomodels.predict import PredictInputError


@pytest.mark.parametrize(
    "cls",
    [ManifestError, ArchiveError, ExtractError, NetError, ServiceError, CheckpointError,
     DatasetError, DownloadError, ModelError, WeightsError, PredictInputError, UsageError],
)  # fmt: skip
def test_domain_errors_share_the_base_and_keep_their_old_one(cls) -> None:
    assert issubclass(cls, DomainError)
    if cls not in (NetError, ServiceError):
        assert issubclass(cls, ValueError)  # callers catching ValueError still do


def test_create_model_unknown_name_is_a_domain_error() -> None:
    from histomodels.models.registry import create_model

    with pytest.raises(DomainError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")


def test_a_failed_atomic_write_names_the_target_not_its_temp_file(tmp_path) -> None:
    """``--out`` naming a folder: the rename of the temp file fails; the line names the folder."""
    from histocore.errors import describe
    from histocore.io import atomic_write_text

    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_text(folder, "a,b\n")
    assert describe(info.value) == f"{folder}: is a folder, not a file"
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no temp file left


def test_other_os_errors_keep_their_own_file_name(tmp_path) -> None:
    from histocore.errors import describe

    with pytest.raises(FileNotFoundError) as info:
        (tmp_path / "nope.csv").read_text()
    assert describe(info.value) == f"{tmp_path / 'nope.csv'}: no such file or directory"


def test_an_os_error_with_two_paths_names_the_one_in_the_way() -> None:
    """``describe`` named the source of ``os.link(src, dst)`` onto an existing dst
    ('src: file exists') while histofetch's failure reasons named dst: one choice now
    (``os_error_path``), the order of each line kept. The errors are what ``os.link`` and
    ``os.replace`` raise (tests/histofetch/test_stage.py makes them for real)."""
    import errno

    from histocore.errors import describe, os_error_path

    exists = FileExistsError(errno.EEXIST, "File exists", "/d/src", None, "/d/dst")
    assert (os_error_path(exists), describe(exists)) == ("/d/dst", "/d/dst: file exists")
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/a", None, "/d/b")
    assert os_error_path(missing) == "/d/a -> /d/b"  # either path may be the missing one
    assert describe(missing) == "/d/a -> /d/b: no such file or directory"
    # an atomic write's temp file renamed over its target: the target, whatever the errno
    temp = OSError(
        errno.ENOENT, "No such file or directory", "/d/.x.csv.abc123.tmp", None, "/d/x.csv"
    )
    assert os_error_path(temp) == "/d/x.csv"
    assert os_error_path(OSError(errno.EIO, "I/O error")) is None


def _import_error(statement: str) -> ImportError:
    """The ImportError ``statement`` raises (it must raise one)."""
    with pytest.raises(ImportError) as err:
        exec(statement, {})
    return err.value


def test_is_missing_only_where_the_package_itself_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The rule of every optional import (pyarrow, PyYAML, safetensors, the lite0 weights,
    the demo's histofetch): advice to install a package only where it is not installed;
    an installed one that fails as it imports is a broken install, kept as the bug it is."""
    missing = _import_error("import histo_not_installed_pkg")
    assert is_missing(missing, "histo_not_installed_pkg")
    assert is_missing(missing, "yaml", "histo_not_installed_pkg")  # one of several
    assert not is_missing(missing, "yaml")  # another package's name
    # a submodule imported from a package that is missing names the package
    sub = _import_error("from histo_not_installed_pkg.torch import load_file")
    assert is_missing(sub, "histo_not_installed_pkg")
    # a package that is there but lacks a module of its own: broken, not missing
    assert not is_missing(_import_error("import json.histo_no_such_part"), "json")
    # installed, but fails as it imports: a ModuleNotFoundError for another name...
    shadow_package(monkeypatch, tmp_path, "histo_broken_pkg", "import histo_its_missing_dep")
    broken = _import_error("import histo_broken_pkg")
    assert isinstance(broken, ModuleNotFoundError) and broken.name == "histo_its_missing_dep"
    assert not is_missing(broken, "histo_broken_pkg")
    # ...or an ImportError naming no module (a C part built for another Python)
    assert not is_missing(ImportError("undefined symbol: PyFoo"), "histo_broken_pkg")
