"""The ranges of the numbers set outside the options, and reading them from the environment."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from histocore.errors import UsageError
from histofetch.settings import Range, env_number


def test_a_range_holds_finite_numbers_within_its_ends() -> None:
    closed, open_low, whole = Range(1, 10), Range(0, 5, open_low=True), Range(0, 3, whole=True)
    assert [closed.holds(x) for x in (1, 10, 0.999, 10.001, math.nan, math.inf)] == [
        True, True, False, False, False, False,
    ]  # fmt: skip
    assert [open_low.holds(x) for x in (0, 1e-9, 5)] == [False, True, True]
    assert [whole.holds(x) for x in (0, 3, 2.5, -1)] == [True, True, False, False]
    assert closed.wording() == "a number from 1 to 10"
    assert open_low.wording() == "a number more than 0 and at most 5"
    assert whole.wording() == "a whole number from 0 to 3"


def test_env_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "HISTOFETCH_TEST_NUMBER"
    monkeypatch.delenv(name, raising=False)
    assert env_number(name, 7.0, Range(1, 10)) == 7.0
    monkeypatch.setenv(name, "")
    assert env_number(name, 7.0, Range(1, 10)) == 7.0  # empty is unset
    monkeypatch.setenv(name, "2")
    got = env_number(name, 0, Range(0, 3, whole=True))
    assert got == 2 and isinstance(got, int)
    for value, said in (("11", ": give a number from 1 to 10"), ("x", " is not a number")):
        monkeypatch.setenv(name, value)
        with pytest.raises(UsageError) as err:
            env_number(name, 7.0, Range(1, 10))
        assert str(err.value) == f"environment variable {name}={value!r}{said}"


def test_service_urls_from_the_environment_are_http_urls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HISTOFETCH_PMC_CLOUD_URL=garbage (or file:///etc/) was taken: every record of
    `download` failed as 'network' (transient, so every later run tried again), exit 0.
    Now it is one error line naming the variable, exit 1, nothing written; unset or empty
    is the default; NetConfig made in code refuses the same."""
    from typer.testing import CliRunner

    from histofetch.cli import app
    from histofetch.http import PMC_CLOUD_URL, NetConfig
    from histofetch.settings import env_url

    name = "HISTOFETCH_PMC_CLOUD_URL"
    monkeypatch.setenv(name, "")
    assert env_url(name, PMC_CLOUD_URL) == PMC_CLOUD_URL
    monkeypatch.setenv(name, "http://127.0.0.1:9/pmc-oa-opendata/")
    assert NetConfig().pmc_cloud_url == "http://127.0.0.1:9/pmc-oa-opendata/"
    bad = ["garbage", "file:///etc/", "https://", "http://exa mple.org/", "http://[::1/"]
    bad += ["http://127.0.0.1:abc/", "http://127.0.0.1:99999/", "http://h\x7f/"]  # review
    for value in bad:
        monkeypatch.setenv(name, value)
        with pytest.raises(UsageError) as err:
            NetConfig()
        assert str(err.value).startswith(f"environment variable {name}={value!r}: give an http")
    monkeypatch.delenv(name)
    with pytest.raises(UsageError, match="NetConfig europepmc_url='ftp://x/': give an http"):
        NetConfig(europepmc_url="ftp://x/")
    from run_factory import make_run, searched

    from histocore.manifest import Manifest

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    env = {name: "garbage", "HISTOFETCH_RETRIES": "0"}
    result = CliRunner().invoke(app, ["download", "--run", str(run)], env=env)
    assert result.exit_code == 1
    assert result.output == (
        f"error: environment variable {name}='garbage': give an http:// or https:// URL\n"
    )
    with Manifest.load(run) as manifest:
        rec = manifest.records["pmid:1"]
        assert (rec.stage, rec.status, rec.reason) == ("searched", "ok", None)
