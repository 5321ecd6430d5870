"""Ensembles are ordinary checkpoints: built from runs, averaged per member, exported."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import train_tiny
from conftest import refused_with
from typer.testing import CliRunner

from histomodels.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from histomodels.cli import app
from histomodels.ensemble import build_ensemble, write_ensemble
from histomodels.export import export_checkpoint
from histomodels.inference import Predictor
from histomodels.synthetic import make_patches

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny CNNs trained differently; the second with its own normalisation and a
    fitted-looking temperature, saved as a run folder (best.pt inside)."""
    root = tmp_path_factory.mktemp("members")
    a = train_tiny(root / "a.pt", seed=0)
    b_path = train_tiny(root / "b_tmp.pt", seed=1)
    ckpt = read_checkpoint(b_path)
    ckpt["normalization"] = {"mean": [0.6, 0.4, 0.7], "std": [0.2, 0.25, 0.15]}
    ckpt["temperature"] = 1.7
    run = root / "run_b"
    save_checkpoint(run / "best.pt", ckpt)
    return [a, run]


def _member_logits(sources: Sequence[Path | str], x: np.ndarray, tta: bool) -> np.ndarray:
    out = []
    for src in sources:
        p = Predictor.load(src, device="cpu", precision="fp32")
        out.append(p.logits(x, tta=tta) / p.temperature)
    return np.mean(out, axis=0)


@pytest.mark.parametrize("tta", [False, True])
def test_ensemble_averages_calibrated_member_logits(
    members: list[Path], tmp_path: Path, tta: bool
) -> None:
    path = write_ensemble(members, tmp_path / "ens", tta=tta)
    assert path == tmp_path / "ens" / "best.pt"
    raw = torch.load(path, weights_only=True)  # a plain dict: no code runs on load
    assert raw["model"] == "ensemble" and len(raw["model_config"]["members"]) == 2
    specs = raw["model_config"]["members"]
    assert specs[1]["mean"] == [0.6, 0.4, 0.7] and specs[1]["temperature"] == 1.7
    x, _ = make_patches(24, seed=5)
    pred = Predictor.load(tmp_path / "ens", device="cpu", precision="fp32")  # run folder
    got = pred.logits(x)  # TTA is inside the ensemble when it was built with it
    np.testing.assert_allclose(got, _member_logits(members, x, tta), atol=1e-4)
    # and the ensemble differs from either member alone
    alone = Predictor.load(members[0], device="cpu", precision="fp32").logits(x)
    assert np.abs(got - alone).max() > 1e-3


def test_ensemble_onnx_export_matches_eager(members: list[Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    ens = write_ensemble(members, tmp_path / "ens.pt", tta=True)
    res = export_checkpoint(ens, "onnx", tmp_path / "ens.onnx")
    assert res["max_abs_diff"] < 1e-4 and res["model"] == "ensemble"
    x, _ = make_patches(7, seed=9)
    sess = ort.InferenceSession(str(tmp_path / "ens.onnx"), providers=["CPUExecutionProvider"])
    got = np.asarray(
        sess.run(None, {"input": (x.astype(np.float32) / 255).transpose(0, 3, 1, 2)})[0]
    )
    np.testing.assert_allclose(got, _member_logits(members, x, True), atol=1e-4)


def test_ensemble_refuses_bad_members(members: list[Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="at least two"):
        build_ensemble(members[:1])
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        build_ensemble([members[0], tmp_path / "missing.pt"])
    stained = read_checkpoint(members[0])
    stained["stain"] = {"stains": [[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]], "max_c": [1.9, 1.0]}
    save_checkpoint(tmp_path / "stained.pt", stained)
    with pytest.raises(CheckpointError, match="stain"):
        build_ensemble([members[0], tmp_path / "stained.pt"])
    assert not (tmp_path / "out").exists()
    # a member given twice (as itself, as a run folder and its best.pt, or as a hard link
    # of its file: the link was taken as a second member) counted twice
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", read_checkpoint(members[1]))
    os.link(members[0], tmp_path / "linked.pt")
    for twice in (
        [members[0], members[1], members[0]],
        [run, run / "best.pt"],
        [members[0], tmp_path / "linked.pt"],
    ):
        with pytest.raises(CheckpointError, match=f"^{twice[-1]}: the same checkpoint as"):
            build_ensemble(twice)
    r = CliRunner().invoke(app, ["ensemble", "pcam-cnn", "pcam-cnn", "--out", str(tmp_path / "e")])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        "error: pcam-cnn: the same checkpoint as pcam-cnn; give each member once (a repeated "
        "member would count twice in the average)"
    ]
    # a member that links to itself: the twin check's Path.resolve raised RuntimeError (a
    # symlink loop, Python < 3.13), a traceback; now the loop is named, nothing written
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop.name)
    out = tmp_path / "looped"
    for given in (loop, loop / "best.pt"):
        r = CliRunner().invoke(app, ["ensemble", str(members[0]), str(given), "--out", str(out)])
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().splitlines() == [
            f"error: {loop}: too many levels of symbolic links"
        ]
        assert not out.exists()


def test_cli_ensemble_then_eval_predict(members: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    from histomodels.synthetic import write_h5

    runner = CliRunner()
    r = runner.invoke(app, ["ensemble", *map(str, members), "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    x, _ = make_patches(1, seed=3)
    Image.fromarray(x[0]).save(tmp_path / "p.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(tmp_path / "p.png"),
                            "--out", str(tmp_path / "pred.csv")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "1 patch(es)" in r.output
    test_h5, val_h5 = (
        write_h5(tmp_path / "t.h5", 64, seed=7),
        write_h5(tmp_path / "v.h5", 64, seed=8),
    )
    args = ["eval", str(tmp_path / "ens"), "--data", str(test_h5), "--val", str(val_h5)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "ev"), "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ev" / "metrics.json").is_file()
    r = runner.invoke(app, ["ensemble", str(members[0]), "--out", str(tmp_path / "one")])
    assert r.exit_code == 2 and "at least two" in r.output  # a usage error
    assert not (tmp_path / "one").exists()


@pytest.mark.parametrize("tta", [False, True])
def test_eval_of_an_ensemble_built_with_tta_says_its_scores_are_tta(
    members: list[Path], tmp_path: Path, tta: bool
) -> None:
    """An ensemble built with ``--tta`` averages the 8 views inside the model: eval's
    metrics.json and its printed line said ``tta=False`` (no ``eval --tta``), which the
    report showed as "test-time augmentation: False"."""
    import json

    from histomodels.synthetic import write_h5

    ens = write_ensemble(members, tmp_path / "ens", tta=tta)
    test_h5 = write_h5(tmp_path / "t.h5", 32, seed=7)
    r = CliRunner().invoke(app, ["eval", str(ens), "--data", str(test_h5), "--out",
                                 str(tmp_path / "ev"), "--bootstrap", "20"])  # fmt: skip
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["tta"] is tta and metrics.get("tta_inside_model", False) is tta
    line = next(x for x in r.stdout.splitlines() if x.startswith("temperature "))
    assert line.endswith("tta=True (the ensemble's own 8 views)" if tta else "tta=False")


def test_members_keep_the_temperature_eval_stored_beside_them(
    members: list[Path], tmp_path: Path
) -> None:
    """``eval --val`` keeps a fitted temperature in a sidecar (best.calibration.json), not
    in the checkpoint; the ensemble takes each member's as predict would."""
    import shutil

    from histomodels.calibration import write_calibration

    member = shutil.copy(members[0], tmp_path / "a.pt")
    assert write_calibration(member, 2.5, "val.h5") == str(tmp_path / "a.calibration.json")
    assert Predictor.load(member, device="cpu").temperature == 2.5
    raw = build_ensemble([member, members[1]])
    assert [m["temperature"] for m in raw["model_config"]["members"]] == [2.5, 1.7]
    x, _ = make_patches(8, seed=4)
    save_checkpoint(tmp_path / "ens.pt", raw)
    got = Predictor.load(tmp_path / "ens.pt", device="cpu", precision="fp32").logits(x)
    np.testing.assert_allclose(got, _member_logits([member, members[1]], x, False), atol=1e-4)


def test_an_ensemble_is_not_a_member(members: list[Path], tmp_path: Path) -> None:
    """A nested ensemble would be written but refused at load (its member specs are not
    plain config values): it is refused when building, naming the source, and nothing is
    written."""
    inner = write_ensemble(members, tmp_path / "inner.pt")
    with pytest.raises(CheckpointError, match=r"inner\.pt: .*ensemble.*its members"):
        write_ensemble([inner, members[0]], tmp_path / "outer.pt")
    assert not (tmp_path / "outer.pt").exists()
    r = CliRunner().invoke(app, ["ensemble", str(inner), str(members[0]), "--out",
                                 str(tmp_path / "outer")])  # fmt: skip
    assert r.exit_code == 1 and r.output.startswith("error: ") and "its members" in r.output
    assert not (tmp_path / "outer").exists()


def test_an_ensemble_folder_moved_without_its_members_predicts_the_same(
    members: list[Path], tmp_path: Path
) -> None:
    """An ensemble holds its members' weights and preprocessing: moved to another place (or
    machine) with the members gone, it loads and predicts the same, calibration included
    (the sidecar ``eval --val`` writes moves with the folder; it is keyed by sha256)."""
    import shutil

    from PIL import Image

    from histomodels.synthetic import write_h5

    here, there = tmp_path / "machine_a", tmp_path / "machine_b"
    local = [Path(shutil.copytree(members[1], here / "run_b")), Path(shutil.copy(members[0], here))]
    runner = CliRunner()
    r = runner.invoke(app, ["ensemble", *map(str, local), "--out", str(here / "ens")])
    assert r.exit_code == 0, r.output
    test_h5, val_h5 = write_h5(here / "t.h5", 64, seed=7), write_h5(here / "v.h5", 64, seed=8)
    args = ["eval", str(here / "ens"), "--data", str(test_h5), "--val", str(val_h5)]
    r = runner.invoke(app, [*args, "--out", str(here / "ev"), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert (here / "ens" / "best.calibration.json").is_file()
    x, _ = make_patches(6, seed=11)
    (tmp_path / "patches").mkdir()
    for i, patch in enumerate(x):
        Image.fromarray(patch).save(tmp_path / "patches" / f"p{i}.png")

    def predict(ens: Path, out: Path) -> str:
        r = runner.invoke(app, ["predict", str(ens), str(tmp_path / "patches"), "--out", str(out)])
        assert r.exit_code == 0, r.output
        return out.read_text().replace(str(ens), "ENS")

    before = predict(here / "ens", tmp_path / "before.csv")
    there.mkdir()
    moved = Path(shutil.move(str(here / "ens"), there / "ensemble"))
    shutil.rmtree(here)  # the members (and the data they were checked on) are gone
    assert predict(moved, tmp_path / "after.csv") == before
    temperature = Predictor.load(moved, device="cpu").temperature
    assert temperature != 1.0  # the fitted one, from the sidecar that moved with it


def test_an_ensemble_records_its_members_by_absolute_path(
    members: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each member's ``source`` and ``ensemble_of`` were stored as typed (``runs/b``),
    meaningless once the ensemble was moved or read from another folder: they are the
    absolute, resolved paths now (a run folder stays the folder; a link is followed), and a
    shipped model stays its name."""
    import shutil

    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    shutil.copytree(members[1], work / "runs" / "b")
    shutil.copy(members[0], work / "a.pt")
    (work / "link.pt").symlink_to(work / "a.pt")
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, ["ensemble", "runs/b", "./link.pt", "--out", "ens"])
    assert r.exit_code == 0, r.output
    raw = torch.load(work / "ens" / "best.pt", weights_only=True)
    want = [str((work / "runs" / "b").resolve()), str((work / "a.pt").resolve())]
    assert raw["ensemble_of"] == want
    assert [m["source"] for m in raw["model_config"]["members"]] == want
    shipped = build_ensemble(["pcam-cnn", "runs/b"])
    assert shipped["ensemble_of"] == ["pcam-cnn", want[0]]
    assert [m["source"] for m in shipped["model_config"]["members"]] == ["pcam-cnn", want[0]]
    # a file named like it here: the name is still the shipped model (it was that file, and
    # the pair was refused as one checkpoint given twice); ./pcam-cnn is the file
    shutil.copy(members[0], work / "pcam-cnn")
    both = build_ensemble(["pcam-cnn", "./pcam-cnn"])
    assert both["ensemble_of"] == ["pcam-cnn", str(work / "pcam-cnn")]


def test_a_member_given_as_a_link_keeps_the_temperature_fitted_beside_the_link(
    members: list[Path], tmp_path: Path
) -> None:
    """``eval LINK --val`` writes its temperature beside the link and ``predict LINK`` reads it
    there; the ensemble looked beside the link's target once it recorded resolved paths,
    and took the checkpoint's T silently."""
    import shutil

    from histomodels.calibration import write_calibration

    (tmp_path / "store").mkdir()
    (tmp_path / "runs").mkdir()
    shutil.copy(members[0], tmp_path / "store" / "a.pt")
    link = tmp_path / "runs" / "mine.pt"
    link.symlink_to(tmp_path / "store" / "a.pt")
    assert Path(write_calibration(link, 2.5, "test")).parent == link.parent
    ens = build_ensemble([link, members[1]])
    first = ens["model_config"]["members"][0]
    assert first["temperature"] == 2.5
    assert first["source"] == str((tmp_path / "store" / "a.pt").resolve())


def _refused_and_kept(given: list[str], *outs: Path) -> None:
    """``ensemble GIVEN --out OUT`` for each of ``outs``: refused in one line (not an
    earlier ensemble), exit 1, OUT left byte for byte as it was."""
    for out in outs:
        kept = out.read_bytes()
        r = CliRunner().invoke(app, ["ensemble", *given, "--out", str(out)])
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().splitlines() == [
            f"error: {out}: exists and is not an earlier ensemble of histomodels; the "
            "ensemble would replace it: choose another --out, or remove it first"
        ]
        assert out.read_bytes() == kept


def test_an_ensemble_is_not_written_over_a_member_or_a_training_run(
    members: list[Path], tmp_path: Path
) -> None:
    """``--out`` naming a member (its run folder or its file) replaced that member's weights
    with the ensemble, exit 0; a training run's folder lost its best.pt the same way. Both
    are one error line now, the files as they were."""
    import shutil

    run = tmp_path / "run_b"
    shutil.copytree(members[1], run)
    before = (run / "best.pt").read_bytes()
    for out in (run, run / "best.pt"):
        r = CliRunner().invoke(app, ["ensemble", str(members[0]), str(run), "--out", str(out)])
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().splitlines() == [
            f"error: {run / 'best.pt'}: is the checkpoint of member {run}; the ensemble would "
            "replace its weights: choose another --out"
        ]
    (run / "last.pt").write_bytes(before)  # a training run, not a member this time
    r = CliRunner().invoke(app, ["ensemble", str(members[0]), str(members[1]), "--out", str(run)])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        f"error: {run}: holds a trained run (last.pt); the ensemble would replace its "
        "best.pt: choose another --out"
    )
    assert (run / "best.pt").read_bytes() == before


def test_an_ensemble_replaces_only_an_earlier_ensemble(members: list[Path], tmp_path: Path) -> None:
    """``--out RUN/last.pt`` (a trained run's other checkpoint), another model's ``.pt`` or a
    pipe named ``x.pt`` was replaced by the ensemble, exit 0. Only an earlier ensemble or an
    empty file is replaced now; anything else is one error line naming it, exit 1, left as
    it was."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    last = Path(shutil.copy(members[0], run / "last.pt"))
    other = Path(shutil.copy(members[0], tmp_path / "other.pt"))
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    given = [str(members[0]), str(members[1])]
    _refused_and_kept(given, last, other, notes)
    r = CliRunner().invoke(app, ["ensemble", *given, "--out", str(fifo)])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        f"error: {fifo}: not a regular file (a pipe, socket or device); the ensemble would "
        "replace it: choose another --out"
    ]
    assert fifo.is_fifo()
    for out in (tmp_path / "ens.pt", tmp_path / "ens"):  # made, then made again over itself
        for _ in range(2):
            r = CliRunner().invoke(app, ["ensemble", *given, "--out", str(out)])
            assert r.exit_code == 0, r.output
    empty = tmp_path / "empty.pt"
    empty.touch()
    r = CliRunner().invoke(app, ["ensemble", *given, "--out", str(empty)])
    assert r.exit_code == 0 and read_checkpoint(empty)["model"] == "ensemble", r.output


def test_a_checkpoint_that_only_mentions_ensemble_of_is_not_replaced(
    members: list[Path], tmp_path: Path
) -> None:
    """An earlier ensemble was told by searching its pickle's bytes for the format tag and
    ``ensemble_of``: a trained checkpoint whose train_config named ``ensemble_of_sites.h5``
    was taken for one and replaced. The pickle's top-level dict is read now (its opcodes,
    nothing unpickled); a nested dict holding all three keys is not it either. A truncated
    file (its start cut off: zipfile's seek said 'invalid argument') was an I/O error line;
    it is not an earlier ensemble."""
    given = [str(members[0]), str(members[1])]
    ckpt = read_checkpoint(members[0])
    ckpt["train_config"] = {"data": "/data/ensemble_of_sites.h5"}
    mentions = save_checkpoint(tmp_path / "mentions.pt", ckpt)
    ckpt["train_config"] = {"format": ckpt["format"], "model": "ensemble", "ensemble_of": []}
    nested = save_checkpoint(tmp_path / "nested.pt", ckpt)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(members[0]).read_bytes()[100:])
    _refused_and_kept(given, mentions, nested, cut)
    earlier = tmp_path / "earlier.pt"
    r = CliRunner().invoke(app, ["ensemble", given[1], given[0], "--out", str(earlier)])
    assert r.exit_code == 0, r.output
    before = read_checkpoint(earlier)["ensemble_of"]
    r = CliRunner().invoke(app, ["ensemble", *given, "--out", str(earlier)])
    assert r.exit_code == 0, r.output
    assert read_checkpoint(earlier)["ensemble_of"] == before[::-1]  # replaced


def test_tta_on_an_ensemble_built_with_tta_is_not_run_twice(
    members: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """``eval --tta`` / ``predict --tta`` on an ensemble built with ``--tta`` ran the model
    on 8 views of each patch, each averaging its own 8 views: 8x the work for the same
    scores (the views of the dihedral views are those views), with no word. The outer views
    are now skipped, said once."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ens = write_ensemble(members, Path(tmp) / "ens", tta=True)
        pred = Predictor.load(ens, device="cpu", precision="fp32")
    calls = []
    pred.model.register_forward_hook(lambda *_: calls.append(1))
    x, _ = make_patches(6, seed=5)
    with caplog.at_level("INFO", logger="histomodels.inference"):
        inner = pred.logits(x, batch_size=8)
        assert len(calls) == 1 and not caplog.records
        twice = [pred.logits(x, batch_size=8, tta=True) for _ in range(2)]
    assert len(calls) == 3  # one forward a batch, not 8
    for got in twice:
        np.testing.assert_allclose(got, inner, atol=1e-6)
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("test-time augmentation: this ensemble averages the 8 dihedral views")


def test_an_ensemble_written_where_it_cannot_be_names_the_out_path(
    members: list[Path], tmp_path: Path
) -> None:
    """``--out`` in a folder that cannot be written to said `error: ro/.ens.pt.x8k2q1.tmp:
    permission denied`, naming a temp file the user never gave; the line names ``--out``
    now, exit 1, nothing written (a run folder's best.pt likewise)."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "run").mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        (folder / "run").chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(folder), str(folder / "run")],
                        capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("running as root where chattr +i is not supported: nothing is read-only")
    try:
        for out, named in ((folder / "ens.pt", folder / "ens.pt"),
                           (folder / "run", folder / "run" / "best.pt")):  # fmt: skip
            r = CliRunner().invoke(app, ["ensemble", *map(str, members), "--out", str(out)])
            assert r.exit_code == 1, r.output
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {named}: "), r.stderr
            assert lines[0].endswith(("permission denied", "operation not permitted"))
    finally:
        subprocess.run(["chattr", "-i", str(folder), str(folder / "run")], capture_output=True)
        folder.chmod(0o755)
        (folder / "run").chmod(0o755)
    assert sorted(p.name for p in folder.rglob("*")) == ["run"]


def test_an_ensemble_out_in_a_file_is_refused_before_the_members_load(tmp_path: Path) -> None:
    """``--out f/e.pt`` with ``f`` a file was checked only after every member loaded (a
    missing member's line came first); a run folder ``--out`` that is a link to nowhere
    was made only after that too."""
    f = tmp_path / "f"
    f.write_text("mine")
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    dang = tmp_path / "dang"
    for out, said in ((f / "e.pt", f"{f}: is a file, not a folder"),
                      (dang, f"{dang}: broken symbolic link")):  # fmt: skip
        r = CliRunner().invoke(
            app, ["ensemble", "/no/such/a.pt", "/no/such/b.pt", "--out", str(out)]
        )
        assert r.exit_code == 1 and r.stderr == f"error: {said}\n", r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dang", "f"]


def test_an_ensemble_out_dash_is_refused_not_written_as_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ensemble A B --out -`` made a run folder named ``-`` (``-`` read as a path, where
    ``predict --out -`` means standard output). A binary model is not written to standard
    output: one line, exit 1, before the members load, nothing written."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["ensemble", "nowhere/a", "nowhere/b", "--out", "-"])
    assert refused_with(r) == (
        "-: binary model output to standard output is not supported; give a path "
        "(./- for one named -)"
    )
    assert not list(tmp_path.iterdir())
