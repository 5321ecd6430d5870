"""JSON from files and servers that ``json`` itself lets out as a bare ValueError or a
RecursionError: arrays nested 100,000 deep, an integer of 5,000 digits (over Python's
4300-digit limit for ``int(str)``), and (files) bytes that are not UTF-8. Each reader says
one line naming its file; each let a traceback out before ``histocore.io.loads_json``."""

from __future__ import annotations

from pathlib import Path

import pytest

DEEP = "[" * 100_000 + "]" * 100_000
BIG_INT = '{"epochs": ' + "9" * 5000 + "}"
HOSTILE = {
    "deep": (DEEP.encode(), "nested too deeply"),
    "bigint": (BIG_INT.encode(), "a number with too many digits"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_loads_json_says_one_line_for_every_failure(kind: str) -> None:
    from histocore.io import NotJSON, loads_json

    data, why = HOSTILE[kind]
    for text in (data, data.decode()):
        with pytest.raises(NotJSON, match=why):
            loads_json(text)
    with pytest.raises(NotJSON, match=r"not valid JSON \(Expecting value\)"):
        loads_json("[")
    with pytest.raises(NotJSON, match="not UTF-8 text"):
        loads_json(b'{"a": "caf\xe9"}')
    assert loads_json('{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_histomodels_json_files(tmp_path: Path, kind: str) -> None:
    import torch
    from make_corpus import checkpoint_dict

    from histomodels.calibration import CalibrationError, read_calibration
    from histomodels.config import ConfigError, parse_model_config, read_config_file
    from histomodels.data.stain import MacenkoNormalizer, StainError
    from histomodels.report_inputs import ReportError, load_run
    from histomodels.tune import SETTINGS_FILE, _saved_settings
    from histomodels.tune_space import TuneError

    data, why = HOSTILE[kind]
    bad = tmp_path / "bad.json"
    bad.write_bytes(data)
    with pytest.raises(ConfigError, match=rf"bad\.json: not usable JSON \({why}\)"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match=why):
        parse_model_config(data.decode())
    with pytest.raises(StainError, match=rf"bad\.json: cannot read stain settings .*{why}"):
        MacenkoNormalizer.load(bad)
    for name in ("config.json", "history.json"):
        run = tmp_path / f"run_{name}"
        run.mkdir()
        (run / name).write_bytes(data)
        with pytest.raises(ReportError, match=rf"{name}: cannot read JSON .*{why}"):
            load_run(run, tmp_path)
    ckpt = tmp_path / "best.pt"
    torch.save(checkpoint_dict(), ckpt)
    (tmp_path / "best.calibration.json").write_bytes(data)
    with pytest.raises(CalibrationError, match=rf"best\.calibration\.json: .*{why}"):
        read_calibration(ckpt)
    tune = tmp_path / "tune"
    tune.mkdir()
    (tune / SETTINGS_FILE).write_bytes(data)
    with pytest.raises(TuneError, match=rf"tune\.json: cannot read .*{why}"):
        _saved_settings(tune)


def test_report_json_that_is_not_utf8(tmp_path: Path) -> None:
    from histomodels.report_inputs import ReportError, load_run

    (tmp_path / "config.json").write_bytes(b'{"note": "caf\xe9"}')
    with pytest.raises(ReportError, match=r"config\.json: cannot read JSON \(not UTF-8 text"):
        load_run(tmp_path, tmp_path)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_ncbi_json_answers(kind: str) -> None:
    from histofetch.resolve import ServiceError, parse_idconv
    from histofetch.search import parse_esummary_json

    data, _ = HOSTILE[kind]
    with pytest.raises(ServiceError, match="esummary: not JSON"):
        parse_esummary_json(data)
    with pytest.raises(ServiceError, match="idconv: unreadable JSON answer"):
        parse_idconv(b'{"records": ' + data + b"}")


def _laughs(depth: int = 9) -> str:
    """YAML's billion laughs inside one config key: 10 strings, then 8 levels of 10 aliases
    of the level below (10^9 strings when walked), 500 bytes."""
    levels = ['&l0 ["x","x","x","x","x","x","x","x","x","x"]']
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, depth)]
    return "model_config: {width: [" + ", ".join(levels) + "]}\n"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (_laughs(), r"not valid YAML \(aliases \(\*name\) are not allowed in a config file"),
        ("epochs: " + "[" * 50_000 + "]" * 50_000 + "\n", r"not usable YAML \(nested too deeply\)"),
        ("epochs: " + "9" * 5000 + "\n", r"not usable YAML \(Exceeds the limit \(4300 digits\)"),
        ("epochs: 2001-13-45\n", r"not usable YAML \(month must be in 1\.\.12\)"),
    ],
    ids=["billion-laughs", "deep", "bigint", "bad-date"],
)
def test_hostile_yaml_config_is_one_line(tmp_path: Path, text: str, why: str) -> None:
    """The laughs took 4.7 GB and then a MemoryError traceback (the type check's message
    repr'd the value; a plain key hung past 90 s); the others were RecursionError and
    ValueError tracebacks."""
    pytest.importorskip("yaml")
    import resource
    import threading

    from histomodels.config import ConfigError, resolve_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            resolve_config(path)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the config was still being read after 60 s"
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert isinstance(outcome[0], ConfigError), outcome
    assert grown_mb < 500
    assert str(outcome[0]).startswith(f"{path}: ")
    assert len(str(outcome[0]).splitlines()) == 1
    import re

    assert re.search(why, str(outcome[0]))
