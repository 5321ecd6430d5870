"""The ranges of the numbers set outside the options, and reading them from the environment."""

from __future__ import annotations

import math

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
