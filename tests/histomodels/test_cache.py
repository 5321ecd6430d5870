"""Memory budgets for decoded data: the environment override, ``ulimit -v`` and the error."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from histomodels.data.cache import available_memory, default_budget, memory_budget, require_memory
from histomodels.data.errors import DatasetError


def test_budget_from_the_environment_and_the_one_line_refusal(monkeypatch) -> None:
    monkeypatch.setenv("HISTOMODELS_MEMORY_BUDGET", "2e9")
    assert memory_budget() == 2_000_000_000
    require_memory(2_000_000_000, "x.h5")  # at the budget: allowed
    with pytest.raises(
        DatasetError, match=r"^x\.h5: decoded patches need 3\.00 GB of memory, over"
    ):
        require_memory(3_000_000_000, "x.h5")
    monkeypatch.setenv("HISTOMODELS_CACHE_BYTES", "12345")
    assert default_budget() == 12345


def test_default_budget_is_under_what_is_available(monkeypatch) -> None:
    monkeypatch.delenv("HISTOMODELS_MEMORY_BUDGET", raising=False)
    # free memory moves while other programs run: bound the budget by the larger of two
    # readings taken around it (one reading after it failed when others took memory between)
    before = available_memory()
    budget = memory_budget()
    after = available_memory()
    assert 0 < budget <= 0.8 * max(before, after) + 1


def test_ulimit_v_lowers_the_budget() -> None:
    limit = 3 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    code = "from histomodels.data.cache import memory_budget; print(memory_budget())"
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=cap,
        check=True,
    )
    assert 0 < int(out.stdout) <= 0.8 * limit
