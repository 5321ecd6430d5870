"""Exported models run outside PyTorch and match it (ONNX Runtime, TorchScript)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint, writable_shipped_model
from conftest import deny_opening, refused_with, unboxed
from typer.testing import CliRunner

from histomodels.checkpoint import load_model
from histomodels.cli import app
from histomodels.export import export_checkpoint
from histomodels.inference import predict_logits
from histomodels.preprocess import to_input
from histomodels.synthetic import make_patches

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_runs_in_onnxruntime_with_dynamic_batch(tmp_path: Path, exporter: str) -> None:
    import onnx
    import onnxruntime as ort

    ckpt = tiny_checkpoint(tmp_path)
    res = export_checkpoint(ckpt, "onnx", tmp_path / "m.onnx", exporter=exporter)
    assert res["max_abs_diff"] < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["histomodels.model"] == "cnn" and "temperature" in meta["histomodels.output"]
    # real patches, batch sizes never seen at export time
    model, _ = load_model(ckpt)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    # the normalisation is JSON text in a string map, decoded as the docs say
    runtime_meta = sess.get_modelmeta().custom_metadata_map
    norm = json.loads(runtime_meta["histomodels.normalization"])
    assert len(norm["mean"]) == len(norm["std"]) == 3, norm
    for n in (1, 13):
        x, _ = make_patches(n, seed=n)
        got = np.asarray(sess.run(None, {"input": to_input(x, channels_last=False).numpy()})[0])
        assert got.shape == (n,)
        np.testing.assert_allclose(got, predict_logits(model, x), atol=1e-4)


def test_torchscript_parity(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    res = export_checkpoint(ckpt, "torchscript", tmp_path / "m.pt")
    assert res["max_abs_diff"] < 1e-4
    extra = {"histomodels.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    meta = json.loads(extra["histomodels.json"])
    assert "histomodels.threshold" not in meta  # none chosen
    norm = json.loads(meta["histomodels.normalization"])  # JSON text inside, as documented
    assert len(norm["mean"]) == len(norm["std"]) == 3, norm
    assert float(meta["histomodels.temperature"]) > 0
    x, _ = make_patches(3, seed=1)
    model, _ = load_model(ckpt)
    np.testing.assert_allclose(
        loaded(to_input(x)).detach().numpy(), predict_logits(model, x), atol=1e-4
    )


def test_cli_export_prints_parity(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    r = CliRunner().invoke(
        app, ["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    )
    assert r.exit_code == 0, r.output
    diff = float(r.output.split("max abs diff ")[1].split()[0])
    assert diff < 1e-4
    r = CliRunner().invoke(
        app, ["export", str(ckpt), "--format", "tflite", "--out", str(tmp_path / "m.x")]
    )
    said = unboxed(r.output)
    assert r.exit_code == 2 and "Invalid value for '--format'" in said, r.output
    assert "'tflite' is not one of 'onnx', 'torchscript'" in said, r.output


def test_cli_export_under_a_file_says_it_is_no_folder(tmp_path: Path) -> None:
    """``--out a/m.pt`` with ``a`` a file said ``error: a: file exists``."""
    ckpt = tiny_checkpoint(tmp_path)
    a = tmp_path / "a"
    a.write_text("mine")
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(a / "m.pt")])
    assert r.exit_code == 1, r.output
    assert r.stderr == f"error: {a}: is a file, not a folder\n"
    assert a.read_text() == "mine"
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        export_checkpoint(ckpt, "torchscript", a / "m.pt")  # the library says it too


def test_cli_export_parity_failure_leaves_nothing_written(tmp_path: Path) -> None:
    """A failed parity check is one error line and neither writes nor replaces the file
    (``--tolerance 0``: the TorchScript graph differs from eager PyTorch by ~2e-7 here; a
    negative tolerance is a usage error)."""
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "m.pt"
    args = ["export", str(ckpt), "--format", "torchscript", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0  # the user's previous export
    before = out.read_bytes()
    r = CliRunner().invoke(app, [*args, "--tolerance", "0"])
    assert r.exit_code == 1 and "parity check failed" in r.output, r.output
    assert "Traceback" not in r.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.pt")) == ["m.pt"]
    fresh = tmp_path / "fresh.pt"
    r = CliRunner().invoke(app, [*args[:-1], str(fresh), "--tolerance", "0"])
    assert r.exit_code == 1 and not fresh.exists()


def test_shipped_model_exports_with_the_dynamo_exporter(tmp_path: Path) -> None:
    # with the torch installed here; the regression it was written for (torch 2.11's dynamo
    # exporter and the centre prior) needs torch 2.11: see the prior test in test_cnn_centre
    import onnx

    from histomodels.pretrained import checkpoint_dict

    res = export_checkpoint("pcam-cnn", "onnx", tmp_path / "pcam.onnx")
    assert res["exporter"] == "dynamo" and res["max_abs_diff"] < 1e-4
    # the operating point the model card quotes travels with the model (it did not before)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "pcam.onnx")).metadata_props}
    shipped = checkpoint_dict("pcam-cnn")
    assert float(meta["histomodels.threshold"]) == shipped["threshold"]
    assert meta["histomodels.threshold_rule"] == shipped["threshold_rule"]
    # written under a mkstemp name (0600), the export must still get a plain file's mode
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "pcam.onnx").stat().st_mode) == 0o666 & ~umask


class _DataDependent(torch.nn.Module):
    """A branch on a tensor's value: torch.export refuses it, tracing takes one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        if m.sum() > 0:
            return m * 2
        return m


def test_auto_exporter_refuses_a_trace_that_depends_on_the_example(tmp_path: Path) -> None:
    from histomodels.export import ExportError, export_onnx

    net, x = _DataDependent().eval(), torch.rand(2, 3, 8, 8)
    with pytest.raises(Exception):  # noqa: B017 - torch.export's own error types vary
        export_onnx(net, x, tmp_path / "d.onnx", {}, "dynamo")
    with pytest.raises(ExportError, match="depends on the example input"):
        export_onnx(net, x, tmp_path / "a.onnx", {}, "auto")


def test_auto_exporter_falls_back_to_legacy_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a torch whose dynamo exporter fails on this model (as torch 2.11's did on pcam-cnn)
    real_export = torch.onnx.export

    def dynamo_fails(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("\x1b[96mFailed to decompose\x1b[0m the FX graph\nmore")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    ckpt = tiny_checkpoint(tmp_path)
    with caplog.at_level("WARNING", logger="histomodels.export"):
        res = export_checkpoint(ckpt, "onnx", tmp_path / "m.onnx")
    assert res["exporter"] == "legacy" and res["max_abs_diff"] < 1e-4
    assert "RuntimeError: Failed to decompose the FX graph" in caplog.text
    assert "\x1b" not in caplog.text and torch.__version__ in caplog.text
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "n.onnx")])
    assert r.exit_code == 0 and "(onnx via legacy," in r.output


def test_unknown_exporter_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app, ["export", str(tmp_path / "missing.pt"), "--exporter", "nope", "--out", "x.onnx"]
    )
    said = unboxed(r.output)
    assert r.exit_code == 2 and "Invalid value for '--exporter'" in said, r.output
    assert "'nope' is not one of" in said, r.output


def test_an_onnx_export_given_as_the_checkpoint_says_what_it_is_for(tmp_path: Path) -> None:
    """`histomodels eval m.onnx` said only 'not a loadable checkpoint (not a torch.save
    file: ...)': now it also says an export runs in ONNX Runtime, and what to give here; it
    points to ``histomodels export --help``, not to a docs/ path a pip install lacks."""
    from PIL import Image

    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    onnx_file = tmp_path / "m.onnx"
    export_checkpoint(ckpt, "onnx", onnx_file, exporter="legacy")
    x, _ = make_patches(1, seed=0)
    Image.fromarray(x[0]).save(tmp_path / "p.png")
    test_h5 = write_h5(tmp_path / "t.h5", 8, seed=3)
    runner = CliRunner()
    for command in (
        ["eval", str(onnx_file), "--data", str(test_h5), "--out", str(tmp_path / "ev")],
        ["predict", str(onnx_file), str(tmp_path / "p.png"), "--out", str(tmp_path / "p.csv")],
    ):
        r = runner.invoke(app, command)
        assert r.exit_code == 1, r.output
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.output
        assert r.stderr.startswith(f"error: {onnx_file}: not a loadable checkpoint (")
        assert "ONNX Runtime" in r.stderr and "the .pt checkpoint it was exported from" in r.stderr
        assert "(see `histomodels export --help`)" in r.stderr and "docs/" not in r.stderr
    assert not (tmp_path / "ev").exists() and not (tmp_path / "p.csv").exists()


def test_an_export_over_its_own_checkpoint_is_refused(tmp_path: Path) -> None:
    """``export RUN --out RUN/best.pt --format torchscript`` wrote the TorchScript file over
    the checkpoint it exported (exit 0: the trained weights lost, the run then "not a
    loadable checkpoint"); a bad checkpoint left the --out folders it had made."""
    ckpt = tiny_checkpoint(tmp_path)
    before = ckpt.read_bytes()
    r = CliRunner().invoke(app, ["export", str(ckpt), "--format", "torchscript", "--out",
                                 str(ckpt)])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        f"error: {ckpt}: is the checkpoint being exported; the export would replace it: "
        "choose another --out"
    )
    assert ckpt.read_bytes() == before
    bad = tmp_path / "bad.pt"
    bad.write_bytes(before[: len(before) // 2])
    r = CliRunner().invoke(app, ["export", str(bad), "--out", str(tmp_path / "new" / "m.onnx")])
    assert r.exit_code == 1 and "not a loadable checkpoint" in r.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("fmt", "name", "named"),
    [("torchscript", "m.onnx", "ONNX (.onnx)"), ("onnx", "m.pt", "TorchScript (.pt)")],
)
def test_a_format_the_out_suffix_contradicts_is_a_usage_error(
    tmp_path: Path, fmt: str, name: str, named: str
) -> None:
    """``export --format torchscript --out m.onnx`` wrote TorchScript into ``m.onnx``
    (exit 0; ONNX Runtime then failed on it): now exit 2, click's message, nothing written."""
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / name
    r = CliRunner().invoke(app, ["export", str(ckpt), "--format", fmt, "--out", str(out)])
    said = unboxed(r.output)
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--format' / '--out'" in said, said
    assert f"but '{name}' is named as {named}" in said, said
    assert not out.exists()


def test_the_out_suffix_chooses_the_format(tmp_path: Path) -> None:
    """Without ``--format``: ``.pt`` is TorchScript (it was ONNX, the fixed default), ``.onnx``
    ONNX, another suffix ONNX; with one, another suffix takes it."""
    import onnx

    ckpt = tiny_checkpoint(tmp_path)
    runner = CliRunner()
    for args, name, fmt in [
        ([], "a.pt", "torchscript"),
        ([], "b.onnx", "onnx"),
        ([], "c.bin", "onnx"),
        (["--format", "torchscript"], "d.bin", "torchscript"),
    ]:
        out = tmp_path / name
        r = runner.invoke(app, ["export", str(ckpt), *args, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith(f"wrote {out} ({fmt}"), r.stdout
        if fmt == "torchscript":
            assert torch.jit.load(str(out)) is not None
        else:
            onnx.checker.check_model(onnx.load(str(out)))


def test_an_export_replaces_only_an_earlier_export_of_its_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export RUN --out RUN/last.pt`` (or history.json, another checkpoint, the shipped
    weights of a writable install) replaced a file export does not write, and ``--out
    RUN/best.calibration.json`` with no sidecar yet made every later predict and eval of
    the run fail. Only an earlier export of the same format (its metadata says so) or an
    empty file is replaced; anything else is one error line naming --out, exit 1, nothing
    written."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    ckpt = Path(shutil.copy(tiny_checkpoint(tmp_path), run / "best.pt"))
    last = Path(shutil.copy(ckpt, run / "last.pt"))
    (run / "history.json").write_text('[{"epoch": 1}]')
    ts, onnx_out = tmp_path / "m.pt", tmp_path / "m.bin"  # .bin: named as no format
    for out in (ts, onnx_out):  # an earlier export of each format is replaced
        for _ in range(2):
            args = ["export", str(run), "--out", str(out)]
            r = CliRunner().invoke(app, args + (["--format", "onnx"] if out == onnx_out else []))
            assert r.exit_code == 0, r.output
    for out, fmt in ((last, "TorchScript"), (run / "history.json", "ONNX"),
                     (onnx_out, "TorchScript")):  # fmt: skip
        kept = out.read_bytes()
        name = "torchscript" if fmt == "TorchScript" else "onnx"
        r = CliRunner().invoke(app, ["export", str(run), "--format", name, "--out", str(out)])
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [
            f"error: {out}: exists and is not an earlier {fmt} export of histomodels; the "
            "export would replace it: choose another --out, or remove it first"
        ], r.output
        assert out.read_bytes() == kept
    side = run / "best.calibration.json"
    r = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--out", str(side)])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {side}: is the calibration file of the checkpoint being exported; the export "
        "would replace it: choose another --out"
    ]
    assert not side.exists()
    weights = writable_shipped_model(tmp_path, monkeypatch)
    kept = weights.read_bytes()
    r = CliRunner().invoke(app, ["export", "--model", "pcam-cnn", "--format", "onnx", "--out",
                                 str(weights)])  # fmt: skip
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {weights}: is the checkpoint being exported; the export would replace it: "
        "choose another --out"
    ]
    assert weights.read_bytes() == kept


def test_an_earlier_onnx_export_is_told_by_its_metadata_without_loading_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether --out holds an earlier ONNX export was told by ``onnx.load_model`` of the
    whole file (up to 2 GiB): a 1.9 GB file that is no export cost 14 s and 2.7 GB of memory
    to refuse. The metadata key is found by walking the top-level protobuf fields, seeking
    past the graph: a real export is still one, a large (sparse) file is told at once, with
    the marker after its graph or without, and the model is never loaded."""
    import time

    import onnx

    from histomodels import export

    real = tmp_path / "m.onnx"
    export_checkpoint(tiny_checkpoint(tmp_path), "onnx", real)

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("onnx.load_model read the whole file")

    monkeypatch.setattr(onnx, "load_model", no_load)
    assert export.is_export(real, "onnx")

    def big(name: str, key: str | None) -> Path:
        """~1.9 GB: a graph field (7) of zeros, then a metadata entry (14) named ``key``."""
        path, n = tmp_path / name, 1_900_000_000
        head = bytes([7 << 3 | 2])
        while True:  # the varint of n
            head += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                break
        meta = b""
        if key is not None:
            entry = onnx.StringStringEntryProto(key=key, value="cnn")
            meta = onnx.ModelProto(metadata_props=[entry]).SerializeToString()
        with open(path, "wb") as fh:
            fh.write(head)
            fh.seek(len(head) + 1_900_000_000)
            fh.write(meta)
        return path

    zeros = tmp_path / "zeros.bin"
    with open(zeros, "wb") as fh:
        fh.truncate(1_900_000_000)
    for path, expected in ((big("marked.onnx", "histomodels.model"), True),
                           (big("other.onnx", "other.key"), False),
                           (big("bare.onnx", None), False), (zeros, False)):  # fmt: skip
        start = time.perf_counter()
        assert export.is_export(path, "onnx") is expected, path
        assert time.perf_counter() - start < 1.0, path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_unreadable_file_at_out_is_said_to_be_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """An earlier export that cannot be read (mode 000 in a writable folder) was refused as
    'not an earlier … export' (any error reading it meant "not ours"): it is one line saying
    it cannot be read, exit 1, left as it was. (We run as root, so the open is made to
    fail.)"""
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "m.bin"
    export_checkpoint(ckpt, fmt, out)
    kept = out.read_bytes()
    deny_opening(monkeypatch, out)
    r = CliRunner().invoke(app, ["export", str(ckpt), "--format", fmt, "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [f"error: {out}: permission denied"]
    assert out.read_bytes() == kept


def test_export_out_dash_is_refused_not_written_as_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export --out -`` wrote an ONNX file named ``-`` (``-`` read as a file name, where
    ``predict --out -`` means standard output). A binary model is not written to standard
    output: one line, exit 1, nothing written; a file named ``-`` is had as ``./-``."""
    ckpt = tiny_checkpoint(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", "-"])
    assert refused_with(r) == (
        "-: binary model output to standard output is not supported; give a path "
        "(./- for one named -)"
    )
    assert not list(work.iterdir())
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", "./-", "--format", "onnx"])
    assert r.exit_code == 0, r.output
    assert (work / "-").stat().st_size > 0
