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
