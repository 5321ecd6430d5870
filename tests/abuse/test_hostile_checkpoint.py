"""Hostile checkpoints and weights files: one CheckpointError / WeightsError naming the file."""

from __future__ import annotations

import collections
import re
import threading
from pathlib import Path

import pytest
import torch
from make_corpus import DELETE, checkpoint_dict

from histomodels.checkpoint import CheckpointError, build_budget, load_model, read_checkpoint
from histomodels.models.weights import WeightsError, read_state_dict


def _save(tmp_path: Path, **overrides: object) -> Path:
    path = tmp_path / "best.pt"
    torch.save(checkpoint_dict(**overrides), path)
    return path


CASES = {
    "missing model": ({"model": DELETE}, "'model' is NoneType"),
    "integer model": ({"model": 3}, "'model' is int"),
    "unknown model": ({"model": "nope"}, "unknown model 'nope'"),
    "list model_config": ({"model_config": [1, 2]}, "'model_config' is list"),
    "weights in model_config": ({"model_config": {"weights": "/etc/passwd"}}, "key 'weights'"),
    "unknown config key": ({"model_config": {"depth": 4, "evil": 1}}, "key 'evil'"),
    "nested config value": ({"model_config": {"depth": {"a": 1}}}, "value of 'depth' is dict"),
    "missing state_dict": ({"state_dict": DELETE}, "'state_dict' is NoneType"),
    "list state_dict": ({"state_dict": [1]}, "'state_dict' is list"),
    "string tensors": ({"state_dict": {"a": "b"}}, "name -> tensor"),
    "normalization list": ({"normalization": [0.5, 0.5]}, "'normalization' must be"),
    "normalization short": ({"normalization": {"mean": [0.5], "std": [1, 1, 1]}}, "must be"),
    "normalization zero std": ({"normalization": {"mean": [0] * 3, "std": [0] * 3}}, "must be"),
    "normalization strings": ({"normalization": {"mean": ["a"] * 3, "std": [1] * 3}}, "must be"),
    "normalization std 0 in float32": (
        {"normalization": {"mean": [0] * 3, "std": [1e-300] * 3}},
        "'normalization' must be",
    ),
    "normalization mean inf in float32": (
        {"normalization": {"mean": [1e300] * 3, "std": [1] * 3}},
        "'normalization' must be",
    ),
    "input_size string": ({"input_size": "96"}, "'input_size' is '96'"),
    "negative temperature": ({"temperature": -1.0}, "'temperature' is -1.0"),
    "version string": ({"version": "1"}, "'version' is '1'"),
    "threshold string": ({"threshold": "x"}, "'threshold' is 'x', expected a number in [0, 1]"),
    "threshold NaN": ({"threshold": float("nan")}, "'threshold' is nan"),
    "threshold above 1": ({"threshold": 5.0}, "'threshold' is 5.0"),
    "threshold negative": ({"threshold": -0.1}, "'threshold' is -0.1"),
    "threshold bool": ({"threshold": True}, "'threshold' is True"),
    "threshold_rule escape": ({"threshold_rule": "\x1b[31mred"}, "'threshold_rule' must be"),
    "threshold_rule list": ({"threshold_rule": ["a"]}, "'threshold_rule' must be"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_checkpoint_is_one_error_naming_the_file(tmp_path: Path, case: str) -> None:
    overrides, message = CASES[case]
    path = _save(tmp_path, **overrides)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_newer_version_message_reads_correctly(tmp_path: Path) -> None:
    path = _save(tmp_path, version=2)
    with pytest.raises(CheckpointError, match=r"version 2 is newer than this reader \(1\)"):
        read_checkpoint(path)


def test_timm_config_cannot_load_another_file_or_reach_the_hub(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(1)}, other)
    for evil in (
        {"checkpoint_path": str(other)},
        {"pretrained_cfg_overlay": {"file": str(other)}},
        {"pretrained": True},
    ):
        path = _save(tmp_path, model="timm/resnet18", model_config=evil)
        with pytest.raises(CheckpointError, match="which timm/resnet18 does not accept"):
            load_model(path)


def test_valid_checkpoint_still_loads(tmp_path: Path) -> None:
    model, ckpt = load_model(_save(tmp_path, model_config={"width": 16}))
    assert ckpt["model"] == "cnn" and not model.training
    for cut in (0, 0.39, 1):  # a shipped operating point, its rule a line of text
        _, ckpt = load_model(_save(tmp_path, threshold=cut, threshold_rule="sensitivity>=0.9"))
        assert ckpt["threshold"] == cut


class Evil:
    """A class torch's weights_only unpickler does not allow."""


def test_pickled_objects_are_refused_without_torch_advice(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": collections.OrderedDict(), "obj": Evil()}, path)
    for fn, error in ((read_state_dict, WeightsError), (read_checkpoint, CheckpointError)):
        with pytest.raises(error) as err:
            fn(path)
        text = str(err.value)
        assert "weights_only=False" not in text and "refused (weights_only)" in text
        assert text.startswith(str(path)) and "\n" not in text


@pytest.mark.parametrize("tta", ["false", 0, [1], None])
def test_ensemble_tta_must_be_a_bool(tmp_path: Path, tta: object) -> None:
    """A tampered ensemble's tta was taken by truth value: "false" averaged the 8 views."""
    member = {"model": "cnn", "model_config": {}, "mean": [0] * 3, "std": [1] * 3,
              "input_size": 96, "temperature": 1.0}  # fmt: skip
    path = _save(tmp_path, model="ensemble", model_config={"members": [member], "tta": tta})
    with pytest.raises(CheckpointError, match=r"'model_config' 'tta' is .*, expected true or"):
        read_checkpoint(path)


def test_ensemble_member_config_is_checked_too(tmp_path: Path) -> None:
    from histomodels.checkpoint import check_checkpoint

    member = {"model": "cnn", "model_config": {"weights": "/etc/passwd"}, "mean": [0] * 3,
              "std": [1] * 3, "input_size": 96, "temperature": 1.0}  # fmt: skip
    ckpt = checkpoint_dict(model="ensemble", model_config={"members": [member], "tta": False})
    with pytest.raises(CheckpointError, match=r"'members\[0\]\.model_config' has key 'weights'"):
        check_checkpoint(ckpt, tmp_path / "ens.pt")
    member["model_config"] = {"width": 16}
    check_checkpoint(ckpt, tmp_path / "ens.pt")  # a plain member is accepted


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_size", 10**6, r"members\[0\]' needs an integer 'input_size' in \[8, 4096\]"),
        ("input_size", "96", r"members\[0\]' needs an integer 'input_size'"),
        ("std", [1, 0, 1], r"members\[0\]' needs 'mean' and 'std' of 3 numbers each"),
        ("temperature", float("nan"), r"members\[0\]' needs a positive 'temperature'"),
        ("temperature", True, r"members\[0\]' needs a positive 'temperature'"),
        # finite in Python, 0 or inf in the float32 the model computes with: every score NaN
        ("temperature", 1e-300, r"members\[0\]' needs a positive 'temperature'"),
        ("std", [1e-300] * 3, r"members\[0\]' needs 'mean' and 'std' of 3 numbers each"),
        ("mean", [1e300] * 3, r"members\[0\]' needs 'mean' and 'std' of 3 numbers each"),
    ],
)
def test_ensemble_member_sizes_and_scales_are_checked(tmp_path, field, value, message) -> None:
    """A member's input size is what the ensemble resizes every patch to: a hostile one
    would allocate gigabytes at inference; a zero std or a NaN temperature gives garbage."""
    member = {"model": "cnn", "model_config": {}, "mean": [0] * 3, "std": [1] * 3,
              "input_size": 96, "temperature": 1.0, field: value}  # fmt: skip
    path = _save(tmp_path, model="ensemble", model_config={"members": [member], "tta": False})
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"depth": 100_000}, "builds a model far larger than its weights"),
        ({"blocks": 100_000}, "builds a model far larger than its weights"),
        ({"width": 300_000, "max_width": 300_000}, "builds a"),  # 3 TB in one layer
    ],
)
def test_model_config_cannot_build_a_giant(tmp_path: Path, config: dict, message: str) -> None:
    """A 2 KB checkpoint whose config says depth 100000 took 20 GB and 13 minutes before
    the weights were found not to fit: the build stops once it outgrows the weights."""
    path = _save(tmp_path, model_config=config)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert text.startswith(f"{path}: its model_config") and message in text, text
    assert "cannot build" not in text and "\n" not in text


def test_ensemble_member_config_cannot_build_a_giant(tmp_path: Path) -> None:
    from histomodels.ensemble import build_ensemble

    good, bomb = tmp_path / "good.pt", tmp_path / "bomb.pt"
    torch.save(checkpoint_dict(), good)
    torch.save(checkpoint_dict(model_config={"depth": 100_000}), bomb)
    with pytest.raises(CheckpointError, match=f"^{bomb}: its model_config builds a model far"):
        build_ensemble([good, bomb])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"width": 8}, "weights do not fit model 'cnn': "),
        ({"depth": -1}, "cannot build model 'cnn' (cnn needs depth, blocks, width >= 1"),
    ],
)
def test_ensemble_member_that_does_not_build_or_fit_is_named(tmp_path, config, message) -> None:
    """Each member is rebuilt as ``load_model`` rebuilds a checkpoint: a second member whose
    weights do not fit was blamed on the first (``good.pt: member weights do not fit``), one
    whose config cannot build gave the builder's words without any file."""
    from histomodels.ensemble import build_ensemble

    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(checkpoint_dict(), good)
    torch.save(checkpoint_dict(model_config=config), bad)
    with pytest.raises(CheckpointError) as err:
        build_ensemble([good, bad])
    assert str(err.value).startswith(f"{bad}: {message}"), err.value
    with pytest.raises(CheckpointError) as alone:
        load_model(bad)
    assert str(alone.value) == str(err.value)  # one rebuild, one message


def test_weights_that_do_not_fit_are_said_in_one_bounded_line(tmp_path: Path) -> None:
    """``build_with_weights`` put torch's whole load_state_dict message in the error: a
    line per kind of mismatch naming every key (6.8 KB, 22 lines for 300 extra tensors;
    a key is the file's own text, of any length). It is one line of counts, each with its
    first keys, cut and escaped (``registry.state_dict_mismatch``)."""
    ckpt = checkpoint_dict(model_config={"width": 8})
    for i in range(300):
        ckpt["state_dict"][f"extra{i}"] = torch.zeros(1)
    ckpt["state_dict"] = {"x\n" + "k" * 100_000: torch.zeros(1), **ckpt["state_dict"]}
    path = tmp_path / "misfit.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert text.startswith(f"{path}: weights do not fit model 'cnn': 301 unexpected in the "
                           "weights (x\\nkkk"), text[:300]  # fmt: skip
    assert "…, extra0, extra1 and 298 more); 21 of another shape (weights vs model) (" in text
    assert "\n" not in text and len(text) < 1000, len(text)


def test_views_claiming_more_than_the_file_stores_are_refused(tmp_path: Path) -> None:
    """A stride-0 view of one stored byte claims 10^13 values: it raised the giant guard's
    budget (the width-1024 model below was built) and the NaN check tried to allocate 40 TB."""
    ckpt = checkpoint_dict(model_config={"width": 1024, "max_width": 1024})
    ckpt["state_dict"]["pad"] = torch.zeros(1, dtype=torch.int8).expand(10**13)
    path = tmp_path / "views.pt"
    torch.save(ckpt, path)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(CheckpointError, match="'pad' claims more values than the file stores"):
        load_model(path)


def test_giant_budget_counts_shared_storage_once(tmp_path: Path) -> None:
    """Thousands of slices of one stored tensor must not add up to a budget for a giant."""
    ckpt = checkpoint_dict(model_config={"width": 1024, "max_width": 1024})
    big = torch.zeros(100_000)
    for i in range(2_000):
        ckpt["state_dict"][f"pad{i}"] = big[: 100_000 - i]
    path = tmp_path / "slices.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="builds a model far larger than its weights"):
        load_model(path)


def _build_in_thread(started: threading.Event, go_on: threading.Event, errors: list) -> None:
    """Another thread's model, larger than a small checkpoint's budget in tensors (4,000)
    and in values (17 M): it registers half its layers, waits, then the rest."""
    try:
        layers = [torch.nn.Linear(1, 1) for _ in range(1_000)]
        started.set()
        go_on.wait(10)
        layers += [torch.nn.Linear(1, 1) for _ in range(1_000)]
        layers.append(torch.nn.Linear(4096, 4200))
    except Exception as exc:  # CheckpointError: the guard counted this thread
        errors.append(exc)


def test_build_budget_counts_only_its_own_thread(tmp_path: Path) -> None:
    """The guard's hooks are global to the process: a model built meanwhile by another
    thread was counted against the checkpoint's budget, and refused with its error."""
    state = {"w": torch.zeros(10)}
    path = tmp_path / "small.pt"
    errors: list[Exception] = []
    started, go_on = threading.Event(), threading.Event()
    other = threading.Thread(target=_build_in_thread, args=(started, go_on, errors))
    other.start()
    started.wait(10)
    with build_budget(state, path):  # entered while the other thread is building
        go_on.set()
        other.join()
        guarded = torch.nn.Linear(2, 5)  # within the budget
    assert errors == [], errors
    assert guarded.weight.shape == (5, 2)
    # the guard still counts its own thread while another builds
    started.clear()
    go_on.clear()
    other = threading.Thread(target=_build_in_thread, args=(started, go_on, errors))
    other.start()
    started.wait(10)
    giant = f"^{path}: its model_config builds a model far"
    with pytest.raises(CheckpointError, match=giant), build_budget(state, path):
        go_on.set()
        torch.nn.ModuleList(torch.nn.Linear(1, 1) for _ in range(2_000))
    other.join()
    assert errors == [], errors


def test_resumed_last_pt_config_cannot_build_a_giant(tmp_path: Path) -> None:
    """``train --resume`` builds from ``last.pt``'s own config: the same budget applies."""
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    data, run = write_h5(tmp_path / "t.h5", 32, seed=0), tmp_path / "run"
    args = ["train", "--data", str(data), "--val", str(data), "--out", str(run)]
    tiny = '{"width": 4, "depth": 2}'
    r = CliRunner().invoke(app, [*args, "--epochs", "1", "--model-config", tiny, "--quiet"])
    assert r.exit_code == 0, r.output
    state = torch.load(run / "last.pt", weights_only=True)
    giant = {"depth": 13, "blocks": 64, "width": 4096, "max_width": 4096}  # within bounds
    state["model_config"] = state["train_config"]["model_config"] = giant
    torch.save(state, run / "last.pt")
    r = CliRunner().invoke(app, [*args, "--resume", "--epochs", "2"])
    assert r.exit_code == 1, r.output
    assert f"{run / 'last.pt'}: its model_config builds a model far larger" in r.output
    assert "Traceback" not in r.output


def test_resumed_last_pt_that_cannot_build_or_fit_names_the_file(tmp_path: Path) -> None:
    """``train --resume`` rebuilds ``last.pt`` as ``load_model`` rebuilds any checkpoint: an
    unusable value in its config named no file (``error: cnn needs depth …``)."""
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    data, run = write_h5(tmp_path / "t.h5", 32, seed=0), tmp_path / "run"
    args = ["train", "--data", str(data), "--val", str(data), "--out", str(run)]
    tiny = '{"width": 4, "depth": 2}'
    r = CliRunner().invoke(app, [*args, "--epochs", "1", "--model-config", tiny, "--quiet"])
    assert r.exit_code == 0, r.output
    saved = torch.load(run / "last.pt", weights_only=True)
    for config, message in (
        ({"width": 4, "depth": -1}, "model_config 'depth' is -1; cnn takes int in [1, 13]"),
        ({"width": 8, "depth": 2}, "weights do not fit model 'cnn': "),
    ):
        state = dict(saved, model_config=config)
        state["train_config"] = dict(saved["train_config"], model_config=config)
        torch.save(state, run / "last.pt")
        r = CliRunner().invoke(app, [*args, "--resume", "--epochs", "2"])
        assert r.exit_code == 1, r.output
        assert f"error: {run / 'last.pt'}: {message}" in r.output, r.output
        assert "Traceback" not in r.output


def test_a_resumed_ema_runs_raw_weights_are_checked_as_its_weights(tmp_path: Path) -> None:
    """An EMA (or SWA) run's ``last.pt`` keeps the raw weights it resumes from as
    ``train_state_dict``, which got none of ``state_dict``'s checks: a complex tensor was
    cast to real with a warning and NaN weights trained on until the run 'diverged'."""
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    data, run = write_h5(tmp_path / "t.h5", 32, seed=0), tmp_path / "run"
    args = ["train", "--data", str(data), "--val", str(data), "--out", str(run)]
    tiny = '{"width": 4, "depth": 2}'
    r = CliRunner().invoke(
        app, [*args, "--epochs", "1", "--ema", "0.9", "--model-config", tiny, "--quiet"]
    )
    assert r.exit_code == 0, r.output
    saved = torch.load(run / "last.pt", weights_only=True)
    raw = saved["train_state_dict"]
    name = _first_weight(raw)
    for tensor, message in (
        (raw[name].to(torch.complex64), f"'{name}' holds complex values (complex64)"),
        (raw[name].to_sparse(), f"'{name}' is a sparse_coo tensor, not a dense one"),
        (
            torch.full_like(raw[name], float("nan")),
            f"holds non-finite values (NaN or inf) in '{name}'",
        ),
    ):
        torch.save(dict(saved, train_state_dict={**raw, name: tensor}), run / "last.pt")
        r = CliRunner().invoke(app, [*args, "--resume", "--epochs", "2", "--quiet"])
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().splitlines() == [
            f"error: {run / 'last.pt'}: checkpoint field 'train_state_dict' {message}"
        ], r.output


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    """NaN weights made every score NaN and ``eval`` crashed in scikit-learn."""
    state = checkpoint_dict()["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    path = _save(tmp_path, state_dict=state)
    with pytest.raises(CheckpointError, match=f"non-finite values .* in '{name}'"):
        read_checkpoint(path)


class Payload:
    """Runs a command when unpickled (never, here)."""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)


def test_reduce_payload_never_runs_and_torch_warnings_stay_off_stderr(tmp_path, capfd) -> None:
    """A plain pickle (protocol 4, as ``pickle.dumps`` writes it) with a ``__reduce__``
    payload: refused, nothing run, and torch's pickle-protocol warning is not printed."""
    import pickle
    import warnings

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "histomodels.checkpoint", "x": Payload(marker)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning torch emits would fail the test
        for fn, error in ((read_state_dict, WeightsError), (read_checkpoint, CheckpointError)):
            with pytest.raises(error, match=f"^{path}: not a loadable"):
                fn(path)
    assert not marker.exists()
    assert capfd.readouterr().err == ""


def test_ensemble_member_that_is_an_ensemble_is_refused_by_name(tmp_path: Path) -> None:
    """It failed in the builder: ``ensemble() missing 1 required positional argument``."""
    member = {"model": "ensemble", "model_config": {}, "mean": [0] * 3, "std": [1] * 3,
              "input_size": 96, "temperature": 1.0}  # fmt: skip
    path = _save(tmp_path, model="ensemble", model_config={"members": [member], "tta": False})
    with pytest.raises(CheckpointError, match=r"'members\[0\]\.model' is 'ensemble'; an ensemble"):
        read_checkpoint(path)


def test_resumed_last_pt_keeps_the_traceback_of_a_bug_in_model_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On resume, ``check_config`` has matched the config's keys and value types against the
    builder, so a ``TypeError`` while building is a bug in the model code: it must keep its
    traceback (it became ``error: last.pt: cannot build model 'cnn' (...)``, exit 1, blaming
    the file). A checkpoint read for eval still names the file for the same error."""
    import functools

    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.models import registry
    from histomodels.synthetic import write_h5

    data, run = write_h5(tmp_path / "t.h5", 32, seed=0), tmp_path / "run"
    args = ["train", "--data", str(data), "--val", str(data), "--out", str(run)]
    tiny = '{"width": 4, "depth": 2}'
    r = CliRunner().invoke(app, [*args, "--epochs", "1", "--model-config", tiny, "--quiet"])
    assert r.exit_code == 0, r.output
    real = registry._REGISTRY["cnn"]

    @functools.wraps(real)  # the same signature: check_config passes
    def buggy(*a: object, **k: object) -> torch.nn.Module:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setitem(registry._REGISTRY, "cnn", buggy)
    r = CliRunner().invoke(app, [*args, "--resume", "--epochs", "2"])
    assert isinstance(r.exception, TypeError), r.output
    assert "unsupported operand" in str(r.exception) and "error:" not in r.output
    with pytest.raises(CheckpointError, match="cannot build model 'cnn' \\(unsupported operand"):
        load_model(run / "best.pt")


@pytest.mark.parametrize(
    ("config", "raised"),
    [
        ({"patch_size": 0}, "ZeroDivisionError"),
        ({"embed_dim": 7}, "AssertionError"),
        ({"img_size": []}, "IndexError"),
    ],
)
def test_a_timm_config_the_builder_chokes_on_is_one_error_line(
    tmp_path: Path, config: dict, raised: str
) -> None:
    """Values of the right keys and types that timm's ViT cannot build with raised other
    than TypeError/ValueError: predict gave a traceback. A file's config is untrusted, so
    any exception from building it is the one ``cannot build model`` line."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from histomodels.cli import app

    bad = _save(tmp_path, model="timm/vit_tiny_patch16_224", model_config=config)
    img = tmp_path / "img.png"
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(img)
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(bad), str(img), "--out", str(out)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    line = f"error: {bad}: cannot build model 'timm/vit_tiny_patch16_224' ({raised}: "
    assert r.output.startswith(line) and r.output.count("\n") == 1, r.output
    assert not out.exists()


def _first_weight(sd: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t.to_sparse(), "is a sparse_coo tensor, not a dense one"),
        (lambda t: torch.empty(t.shape, device="meta"), "is on device 'meta', holding no values"),
        (
            lambda t: torch.nested.nested_tensor([t.flatten(), t.flatten()[:3]]),
            "is a nested tensor",
        ),
        (lambda t: t.to(torch.complex64), r"holds complex values \(complex64\)"),
    ],
    ids=["sparse", "meta", "nested", "complex"],
)
def test_tensors_that_are_not_plain_weights_are_refused(tmp_path: Path, make, message) -> None:
    """Sparse, meta and nested tensors made torch tracebacks in eval (NotImplementedError
    'Cannot access storage of SparseTensorImpl', RuntimeError 'Tensor.item() cannot be
    called on meta tensors'); complex weights were cast to real with only a UserWarning."""
    import warnings

    good = checkpoint_dict()
    name = _first_weight(good["state_dict"])
    with warnings.catch_warnings():  # torch's prototype warning for nested tensors
        warnings.simplefilter("ignore")
        tensor = make(good["state_dict"][name])
    path = _save(tmp_path, state_dict={**good["state_dict"], name: tensor})
    with pytest.raises(CheckpointError, match=rf"best\.pt: .*'{name}' {message}"):
        read_checkpoint(path)
    weights = tmp_path / "w.pt"
    torch.save({**good["state_dict"], name: tensor}, weights)
    with pytest.raises(WeightsError, match=rf"w\.pt: tensor '{name}' {message}"):
        read_state_dict(weights)


def _refused_as_checkpoint_and_weights(
    tmp_path: Path, data: bytes, as_checkpoint: str, as_weights: str
) -> None:
    """``data`` written as ``best.pt`` and as ``w.pt``: each reader refuses it, one line."""
    path = tmp_path / "best.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=as_checkpoint):
        read_checkpoint(path)
    weights = tmp_path / "w.pt"
    weights.write_bytes(data)
    with pytest.raises(WeightsError, match=as_weights):
        read_state_dict(weights)


def test_a_flipped_byte_in_a_weight_is_found_by_its_crc(tmp_path: Path) -> None:
    """torch.load does not check the zip's CRC-32s: one flipped byte inside a weight loaded
    as a wrong weight and eval ran on it, exit 0."""
    import zipfile

    path = _save(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:  # the largest tensor's bytes
        info = max(archive.infolist(), key=lambda i: i.file_size)
    local = info.header_offset  # data follow the local header, its name and its extra field
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little")
    start += int.from_bytes(data[local + 28 : local + 30], "little")
    data[start + info.file_size // 2] ^= 0xFF
    _refused_as_checkpoint_and_weights(
        tmp_path,
        bytes(data),
        r"best\.pt: damaged file \(.* fails its CRC-32",
        r"w\.pt: damaged file \(.* fails its CRC-32",
    )


def test_a_zip_flagged_encrypted_is_one_line_and_complex_safetensors_refused(
    tmp_path: Path,
) -> None:
    """Review of 7b8e016: a ``torch.save`` zip whose central directory flags a member as
    encrypted made the CRC pre-check raise zipfile's RuntimeError (a traceback; before it,
    torch.load's refusal was one line); complex tensors in a ``.safetensors`` file were
    still cast to real, as they no longer are from ``.pt``."""
    from safetensors.torch import save_file

    path = _save(tmp_path)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 1  # general purpose flag: encrypted
    _refused_as_checkpoint_and_weights(
        tmp_path, bytes(data), r"best\.pt: ", r"w\.pt: not a loadable weights file"
    )

    good = checkpoint_dict()["state_dict"]
    name = _first_weight(good)
    complex_file = tmp_path / "c.safetensors"
    save_file({**good, name: good[name].to(torch.complex64)}, str(complex_file))
    with pytest.raises(WeightsError, match=rf"c\.safetensors: tensor '{name}' holds complex"):
        read_state_dict(complex_file)


def test_a_file_saved_without_crcs_loads(tmp_path: Path) -> None:
    """torch.save with ``serialization.config.save.compute_crc32 = False`` writes CRC 0 for
    every member, and torch.load reads it: the CRC pre-check refused it as damaged (review
    3 of 7b8e016). (torch's own ``config.patch``: monkeypatch's undo broke the setting for
    every later test in the process.)"""
    import torch.utils.serialization as serialization

    good = checkpoint_dict()
    weights = tmp_path / "w.pt"
    with serialization.config.patch({"save.compute_crc32": False}):  # type: ignore[attr-defined]
        path = _save(tmp_path)
        torch.save(good["state_dict"], weights)
    assert serialization.config.save.compute_crc32
    assert read_checkpoint(path)["state_dict"].keys() == good["state_dict"].keys()
    assert read_state_dict(weights).keys() == good["state_dict"].keys()


@pytest.mark.parametrize(("t", "said"), [(1e-300, "too small"), (1e39, "too large")])
def test_ensemble_refuses_a_member_temperature_float32_cannot_hold(
    tmp_path: Path, t: float, said: str
) -> None:
    """A member whose temperature 1e-300 (its own scores: fine, T applies in float64) was
    made an ensemble member, divided by 0 in float32: every score NaN, or, with the load
    check, an ensemble written that no reader accepts; 1e39 (inf in float32) was written
    and then refused by every reader (review 2). Refused at once, nothing written."""
    from histomodels.ensemble import write_ensemble

    good, odd = tmp_path / "good.pt", tmp_path / "odd.pt"
    torch.save(checkpoint_dict(), good)
    torch.save(checkpoint_dict(temperature=t), odd)
    read_checkpoint(odd)  # a valid checkpoint alone
    out = tmp_path / "ens.pt"
    with pytest.raises(
        CheckpointError, match=rf"^{odd}: temperature {re.escape(repr(t))} .* {said}"
    ):
        write_ensemble([good, odd], out)
    assert not out.exists()
