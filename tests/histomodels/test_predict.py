"""predict on files, folders and large images; hostile inputs fail with one clear line."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint, writable_shipped_model
from conftest import deny_opening
from PIL import Image
from typer.testing import CliRunner

from histomodels.checkpoint import load_model
from histomodels.cli import app
from histomodels.inference import cpu_has_fast_bf16, predict_logits, sigmoid
from histomodels.predict import PredictInputError, read_rgb, tile_image, tissue_fraction
from histomodels.synthetic import make_figure, make_patches

torch.set_num_threads(1)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_tiling_grid_and_tissue() -> None:
    img = np.full((200, 300, 3), 255, np.uint8)
    img[:96, :96] = (150, 60, 140)  # one tissue tile, the rest is white glass
    t = tile_image(img, 96)
    assert t.patches.shape == (2 * 3, 96, 96, 3)
    assert t.xy.tolist() == [[0, 0], [96, 0], [192, 0], [0, 96], [96, 96], [192, 96]]
    np.testing.assert_array_equal(t.patches[4], img[96:192, 96:192])
    assert t.tissue[0] == 1.0 and t.tissue[1:].max() == 0.0
    assert len(tile_image(img, 96, stride=48).xy) == 3 * 5
    assert tissue_fraction(np.zeros((1, 8, 8, 3), np.uint8))[0] == 0.0  # black border


def test_an_image_decoding_under_one_patch_is_named() -> None:
    """Pixels smaller than one patch where the header (all check_inputs reads) said more
    were refused as 'image is 50x40, smaller than one 96px patch': a skipped file's line
    that named no file. It is now the file's TooSmall line."""
    from histomodels.predict import TooSmall, image_tiles

    where = Path("slides") / "a.png"
    with pytest.raises(TooSmall) as err:
        image_tiles(np.zeros((40, 50, 3), np.uint8), where)
    assert str(err.value) == f"{where}: decodes to 50x40, smaller than one 96px patch"
    assert err.value.scaled == (50, 40) and err.value.size == 96


def test_predict_files_folder_and_large_image(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    patches, _ = make_patches(3, seed=2)
    folder = tmp_path / "patches"
    folder.mkdir()
    for i, p in enumerate(patches):
        Image.fromarray(p).save(folder / f"p{i}.png")
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(3, 4, seed=1)).save(big)
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(folder), str(big), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert len(rows) == 3 + 12
    assert {r["path"] for r in rows[:3]} == {str(folder / f"p{i}.png") for i in range(3)}
    # the CSV holds exactly what the model says for those patches (T = 1 here)
    model, _ = load_model(ckpt)
    expect = sigmoid(predict_logits(model, patches, precision="fp32"))  # predict's default
    got = np.array([float(r["probability"]) for r in rows[:3]])
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert (tmp_path / "pred_heatmaps" / "figure.png").stat().st_size > 0
    assert not (tmp_path / "pred_heatmaps" / "p0.png").exists()  # single patches: no heatmap
    big_rows = [r for r in rows if r["path"] == str(big)]
    assert {(int(r["x"]), int(r["y"])) for r in big_rows} == {
        (x, y) for x in (0, 96, 192, 288) for y in (0, 96, 192)
    }


def test_out_dash_writes_the_csv_to_standard_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict --out -`` wrote a file named ``-`` (and heatmaps into ``-_heatmaps``). ``-``
    is standard output now, the Unix convention: the CSV alone on stdout, the summary lines
    on stderr, no file and no heatmap folder made unless --heatmaps names one; a file named
    ``-`` is still had as ``./-``."""
    import csv as csv_module
    import io

    from histomodels.predict import CSV_COLUMNS

    ckpt = tiny_checkpoint(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(2, 3, seed=1)).save(big)
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--out", "-"])
    assert r.exit_code == 0, r.output
    rows = list(csv_module.reader(io.StringIO(r.stdout)))
    assert rows[0] == CSV_COLUMNS and len(rows) == 1 + 6
    assert r.stderr.splitlines()[0] == "6 patch(es) from 1 file(s) → standard output"
    assert not list(work.iterdir())  # no file '-', no '-_heatmaps'
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--out", "-", "--heatmaps",
                                 "hm"])  # fmt: skip
    assert r.exit_code == 0 and r.stdout.startswith(",".join(CSV_COLUMNS)), r.output
    assert [p.name for p in (work / "hm").iterdir()] == ["figure.png"]
    assert r.stderr.splitlines()[-1] == "1 heatmap(s) in hm"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--out", "./-",
                                 "--no-heatmaps"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (work / "-").read_text().startswith(",".join(CSV_COLUMNS))
    assert r.stdout.splitlines()[0] == "6 patch(es) from 1 file(s) → ./-"  # not '→ -'


def test_heatmaps_for_a_csv_on_standard_output_claim_no_csv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict --out - --heatmaps hm`` marked its heatmaps as drawn for a CSV named ``-``
    (a file ``./-`` to a reader of the PNG), and a later ``--out -`` run removed such a
    heatmap of an input it now scored as one patch: a heatmap of another pipeline's,
    belonging to no CSV file this run wrote. The mark says ``standard output`` now, and a
    run on standard output removes no earlier heatmap."""
    from histomodels.predict import HEATMAP_MARK

    ckpt = tiny_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    Image.fromarray(make_figure(2, 3, seed=1)).save(tmp_path / "big" / "figure.png")
    Image.fromarray(make_figure(1, 1, seed=2)).save(tmp_path / "small" / "figure.png")
    args = ["predict", str(ckpt), "--out", "-", "--heatmaps", "hm"]
    r = CliRunner().invoke(app, [*args, "big/figure.png"])
    assert r.exit_code == 0, r.output
    drawn = tmp_path / "hm" / "figure.png"
    with Image.open(drawn) as im:
        assert im.info[HEATMAP_MARK] == "standard output"
    kept = drawn.read_bytes()
    r = CliRunner().invoke(app, [*args, "small/figure.png"])  # one patch: no heatmap
    assert r.exit_code == 0, r.output
    assert drawn.read_bytes() == kept


def test_out_dash_keeps_the_csv_on_stdout_when_stderr_is_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stderr a terminal the progress bar's rich Progress redirected ``sys.stdout`` to
    its stderr console, and ``predict --out -`` took ``sys.stdout`` inside it: the CSV went
    to stderr and stdout was empty. The CSV is on stdout alone now."""
    from histomodels.predict import CSV_COLUMNS

    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(2, 3, seed=1)).save(big)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's Console(stderr=True) is a terminal
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--out", "-"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 1 + 6, r.stdout
    assert ",".join(CSV_COLUMNS) not in r.stderr


def test_out_dash_with_standard_output_closed_is_one_line(tmp_path: Path) -> None:
    """``predict --out - >&-``: Python's ``sys.stdout`` is None and the CSV writer raised a
    TypeError traceback after all the work. One error line now, before the work."""
    import subprocess
    import sys

    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(2, 3, seed=1)).save(big)
    cli = [sys.executable, "-c", "from histomodels.cli import app; app()"]
    r = subprocess.run([*cli, "predict", str(ckpt), str(big), "--out", "-"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: os.close(1), timeout=300)  # fmt: skip
    assert (r.returncode, r.stderr) == (1, "error: standard output is closed\n")


def test_hostile_inputs(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40), "white").save(small)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 Mpx in a few KB
    runner = CliRunner()
    out = tmp_path / "o.csv"
    for f, why in (
        (bad, "cannot read image"),
        (small, "smaller than"),
        (bomb, "(possible decompression bomb); --max-pixels raises the limit"),
        (tmp_path / "nope.png", "no such file"),
    ):
        r = runner.invoke(app, ["predict", str(ckpt), str(f), "--out", str(out)])
        assert r.exit_code == 1, r.output
        assert r.output.startswith("error: ") and str(f) in r.output and why in r.output
        assert len(r.output.strip().splitlines()) == 1
        assert not out.exists()
    with pytest.raises(PredictInputError, match="decompression bomb"):
        read_rgb(bomb, max_pixels=10_000_000)


def test_max_pixels_option(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    img = tmp_path / "wide.png"
    Image.fromarray(make_figure(2, 3, seed=0)).save(img)
    args = ["predict", str(ckpt), str(img), "--out", str(tmp_path / "o.csv")]
    r = CliRunner().invoke(app, [*args, "--max-pixels", "10000"])
    assert r.exit_code == 1 and "exceeds the limit of 10000" in r.output
    # the one error line names the option that raises the limit (before: only the limit)
    assert r.stderr.strip().endswith("; --max-pixels raises the limit"), r.output
    assert len(r.stderr.splitlines()) == 1
    r = CliRunner().invoke(app, [*args, "--max-pixels", "60000", "--scale", "2"])
    assert r.exit_code == 1 and "at scale 2 is" in r.output, r.output
    assert r.stderr.strip().endswith("; --max-pixels raises the limit"), r.output
    assert CliRunner().invoke(app, args).exit_code == 0


def test_scale_resizes_before_tiling(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    img = tmp_path / "x40.png"
    Image.fromarray(make_figure(4, 4, seed=3)).save(img)  # 384 px → 192 px at 0.5
    out = tmp_path / "o.csv"
    r = CliRunner().invoke(
        app, ["predict", str(ckpt), str(img), "--scale", "0.5", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert len(_rows(out)) == 4
    r = CliRunner().invoke(
        app, ["predict", str(ckpt), str(img), "--scale", "0.2", "--out", str(out)]
    )
    assert r.exit_code == 1 and "smaller than one 96px patch" in r.output


def test_a_skipped_file_in_a_tilde_folder_is_named_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder named ``~`` given as ``./~/b.png``: the warning for a file skipped said
    ``warning: ~/b.png`` ($HOME's to a reader) while the error, when none was scored, said
    ``./~/b.png`` (review M2). Both name it ``./~/b.png`` now."""
    ckpt = tiny_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    full = tmp_path / "full.png"
    Image.fromarray(make_figure(2, 2, seed=4)).save(full)
    Image.fromarray(make_figure(2, 2, seed=3)).save(tmp_path / "~" / "a.png")
    (tmp_path / "~" / "b.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = str(tmp_path / "pred.csv")
    r = CliRunner().invoke(app, ["predict", str(ckpt), "./~/a.png", "./~/b.png", "--out", out])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith("warning: ./~/b.png: cannot read image"), r.stderr
    r = CliRunner().invoke(app, ["predict", str(ckpt), "./~/b.png", "--out", out + "2"])
    assert r.exit_code == 1 and r.stderr.startswith("error: ./~/b.png: cannot read"), r.stderr


def test_a_file_failing_mid_run_is_skipped_and_the_others_are_written(tmp_path: Path) -> None:
    """A file whose header passes the up-front check but whose pixels do not decode stopped
    the run (no CSV, the heatmaps drawn before it removed). It is now one warning line (it
    was an error line and exit 1, as when nothing was scored), exit 0, and the CSV holds every
    row of the others and none of it."""
    ckpt = tiny_checkpoint(tmp_path)
    good = tmp_path / "a_good.png"
    Image.fromarray(make_figure(2, 2, seed=3)).save(good)
    full = tmp_path / "full.png"
    Image.fromarray(make_figure(2, 2, seed=4)).save(full)
    cut = tmp_path / "b_cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # header fine, data cut
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(good), str(cut), "--out", str(out)])
    assert r.exit_code == 3, r.output
    assert r.stderr == f"warning: {cut}: cannot read image (image file is truncated)\n"
    assert r.stdout.startswith(f"4 patch(es) from 1 file(s) → {out}\n")
    assert "Traceback" not in r.output
    assert [row["path"] for row in _rows(out)] == [str(good)] * 4
    assert sorted(p.name for p in (tmp_path / "pred_heatmaps").iterdir()) == ["a_good.png"]


def test_too_small_says_the_size_as_oriented_and_scaled(tmp_path: Path) -> None:
    """The header's size is as stored: a 300x50 JPEG with EXIF orientation 6 (a viewer and
    the scorer see 50x300) was said as '300x50' (and '150x25' at scale 0.5)."""
    stored = Image.fromarray(make_figure(4, 4, seed=1)[:50, :300])
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: 50 wide, 300 high as seen
    photo = tmp_path / "photo.jpg"
    stored.save(photo, exif=exif.tobytes())
    args = ["predict", "pcam-cnn", str(photo), "--no-heatmaps", "--out", str(tmp_path / "p.csv")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and r.stderr == (
        f"error: {photo}: 50x300 is smaller than one 96px patch\n"
    ), r.output
    r = CliRunner().invoke(app, [*args, "--scale", "0.5"])
    assert r.exit_code == 1 and r.stderr == (
        f"error: {photo}: 50x300 at scale 0.5 is 25x150, smaller than one 96px patch\n"
    ), r.output


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


#: Runs predict once per argument list (JSON) in this child; after each, a NUL on stderr
#: and how much its peak memory has grown (imports apart) on stdout.
_PEAKS = """
import json, resource, sys
import torch  # noqa
from histomodels.cli import app
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for args in json.loads(sys.argv[1]):
    try:
        app(args, prog_name="histomodels")
    except SystemExit:
        pass
    sys.stderr.write("\\0")
    sys.stderr.flush()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, flush=True)
"""


def test_a_thin_png_too_small_is_refused_without_decoding_it(tmp_path: Path) -> None:
    """A 60x10^6 PNG is too small for a 96 px patch however it is turned: the refusal
    decoded it only to word its size after orientation (1.7 s and 0.46 GB more than the
    header check). The orientation is read from the chunk headers now, never the pixels.
    The three files are refused in one process (one start-up): its peak memory is a high
    water mark, so each refusal is measured with those before it, and one decode (460 MB)
    would still show."""
    import json
    import subprocess
    import sys

    from histomodels.predict import MAX_PNG_CHUNKS

    Image.new("L", (60, 1_000_000), 200).save(tmp_path / "plain.png")  # 60 M px, a few 100 KB
    raw = (tmp_path / "plain.png").read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    late = _png_chunk(b"eXIf", exif.tobytes())
    cases = [
        ("plain.png", raw, "60x1000000 is"),  # no eXIf: the chunk walk reaches IEND
        # an eXIf after the pixels, orientation 6: turned
        ("exif6.png", raw[:-12] + late + raw[-12:], "1000000x60 is"),
        # eXIf not found within MAX_PNG_CHUNKS
        ("many.png", raw[:-12] + _png_chunk(b"prVt", b"") * MAX_PNG_CHUNKS + late + raw[-12:],
         "60x1000000 as stored is"),
    ]  # fmt: skip
    runs = []
    for name, data, _said in cases:
        (tmp_path / name).write_bytes(data)  # the eXIf before IEND, after the IDATs
        out = str(tmp_path / f"{name}.csv")
        runs.append(["predict", "pcam-cnn", str(tmp_path / name), "--no-heatmaps", "--out", out])
    r = subprocess.run([sys.executable, "-c", _PEAKS, json.dumps(runs)], capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    errors = r.stderr.split("\0")
    grown = [int(line) for line in r.stdout.split()[-len(cases) :]]
    assert len(errors) == len(cases) + 1 and errors[-1] == "", r.stderr
    for (name, _data, said), error, grown_mb in zip(cases, errors, grown, strict=False):
        assert error == f"error: {tmp_path / name}: {said} smaller than one 96px patch\n", error
        assert grown_mb < 100, (name, grown_mb)  # decoding took 460 MB more
        assert not (tmp_path / f"{name}.csv").exists()


@pytest.mark.parametrize(
    ("before", "after"),
    [((), (6, 1)), ((6,), (1,)), ((1,), (6,)), ((6, 1), ())],
)
def test_a_too_small_pngs_size_is_said_as_the_last_exif_turns_it(
    tmp_path: Path, before: tuple[int, ...], after: tuple[int, ...]
) -> None:
    """A PNG with several eXIf chunks (orientations ``before`` and ``after`` its pixels):
    Pillow decodes it as the last one says; the refusal read the first one after the
    pixels, or the one before them when there was one, and so said '200x60' for a PNG
    decoded 60x200 (or the reverse)."""
    import io

    def exif(turn: int) -> bytes:
        e = Image.Exif()
        e[0x0112] = turn
        return _png_chunk(b"eXIf", e.tobytes())

    buf = io.BytesIO()
    Image.new("L", (60, 200), 200).save(buf, "PNG")
    raw = buf.getvalue()
    at = raw.index(b"IDAT") - 4
    png = tmp_path / "small.png"
    png.write_bytes(
        raw[:at] + b"".join(map(exif, before)) + raw[at:-12] + b"".join(map(exif, after))
        + raw[-12:]
    )  # fmt: skip
    with Image.open(png) as im:  # how Pillow decodes it
        im.load()
        turn = im.getexif().get(0x0112)
    assert turn == (before + after)[-1]
    said = "200x60" if turn == 6 else "60x200"
    args = ["predict", "pcam-cnn", str(png), "--no-heatmaps", "--out", str(tmp_path / "p.csv")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and r.stderr == (
        f"error: {png}: {said} is smaller than one 96px patch\n"
    ), r.output


@pytest.mark.parametrize("exif", ["none", "before", "after"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_too_small_pngs_size_is_said_as_its_xmp_orientation_turns_it(
    tmp_path: Path, where: str, exif: str
) -> None:
    """A PNG with no eXIf but an XMP packet saying ``tiff:Orientation="6"`` is decoded and
    scored turned (Pillow's getexif falls back on XMP, as exif_transpose does), but the
    refusal of one too small read eXIf chunks only and said its size as stored ('200x60'
    for an image scored 60x200). An XMP before the pixels is read from the header now; one
    after them is known only by decoding, so the size is said 'as stored'. An eXIf chunk
    without an orientation (before or after the pixels) is the same: Pillow falls back on
    the XMP then too, but the refusal took the eXIf alone ('200x60 is', neither turned
    nor said as stored)."""
    import io

    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    chunk = _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp.encode())
    buf = io.BytesIO()
    Image.new("L", (200, 60), 200).save(buf, "PNG")
    raw = buf.getvalue()
    at = raw.index(b"IDAT") - 4 if where == "before" else len(raw) - 12
    if exif != "none":  # an eXIf chunk naming the camera, with no orientation
        tags = Image.Exif()
        tags[0x010F] = "camera"
        exif_chunk = _png_chunk(b"eXIf", tags.tobytes().removeprefix(b"Exif\x00\x00"))
        chunk = exif_chunk + chunk if exif == where else chunk
        if exif != where:
            cut = raw.index(b"IDAT") - 4 if exif == "before" else len(raw) - 12
            raw = raw[:cut] + exif_chunk + raw[cut:]
            at += len(exif_chunk) if cut <= at else 0
    png = tmp_path / "small.png"
    png.write_bytes(raw[:at] + chunk + raw[at:])
    with Image.open(png) as im:  # how Pillow decodes it: turned
        im.load()
        assert im.getexif().get(0x0112) == 6
        assert exif == "none" or im.getexif().get(0x010F) == "camera"
    said = "60x200" if where == "before" else "200x60 as stored"
    args = ["predict", "pcam-cnn", str(png), "--no-heatmaps", "--out", str(tmp_path / "p.csv")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and r.stderr == (
        f"error: {png}: {said} is smaller than one 96px patch\n"
    ), r.output


def test_one_image_too_small_at_scale_does_not_stop_the_run(tmp_path: Path) -> None:
    """One 150 px image in a folder, at --scale 0.5 (75 px, under one 96 px patch), stopped
    the whole run after the header check had passed it (exit 1, no CSV for the others). It
    is now skipped with one warning line, exit 0; the others are scored as without it."""
    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(3):  # 384 px, 192 px at --scale 0.5: four patches each
        Image.fromarray(make_figure(4, 4, seed=10 + i)).save(folder / f"t{i}.png")
    tiny = folder / "t1_tiny.png"  # sorted between the others
    Image.fromarray(make_figure(4, 4, seed=20)[:150, :150]).save(tiny)
    out = tmp_path / "pred.csv"
    args = ["predict", str(ckpt), "--scale", "0.5", "--no-heatmaps", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, str(folder)])
    assert r.exit_code == 3, r.output
    assert r.stderr == (
        f"warning: {tiny}: 150x150 at scale 0.5 is 75x75, smaller than one 96px patch; "
        "predict cuts images into 96px patches: to score such tiles whole (labelled, one "
        "folder per class) use eval --data FOLDER --scale 0.5\n"
    )
    assert r.stdout.startswith(f"12 patch(es) from 3 file(s) → {out}\n")
    with_tiny = out.read_text()
    tiny.unlink()
    r = CliRunner().invoke(app, [*args, str(folder)])
    assert r.exit_code == 0, r.output
    assert with_tiny == out.read_text()
    assert {row["path"] for row in _rows(out)} == {str(folder / f"t{i}.png") for i in range(3)}


def test_every_file_that_cannot_be_scored_gets_its_own_line(tmp_path: Path) -> None:
    """Unreadable, too small and over --max-pixels among good files: one warning line each,
    in the order given, exit 0 (it was exit 1, as when nothing is scored); the good files'
    rows are written. With no good file: the same lines as errors, exit 1, nothing written
    (a CSV of an earlier run left as it was). The library raises
    SkippedInputs naming them, with the summary of what was written; when no file could be
    scored, no CSV is written."""
    from histomodels.predict import OverPixelLimit, SkippedInputs, TooSmall, predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(make_figure(2, 2, seed=3)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40), "white").save(small)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300), "white").save(big)
    out = tmp_path / "o.csv"
    files = [bad, good, small, big]
    r = CliRunner().invoke(
        app, ["predict", str(ckpt), *map(str, files), "--out", str(out), "--max-pixels", "50000"]
    )
    assert r.exit_code == 3, r.output
    lines = r.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == [str(bad), str(small), str(big)]
    assert all(line.startswith("warning: ") for line in lines)
    assert "cannot read image" in lines[0] and "smaller than one 96px patch" in lines[1]
    assert "300x300 pixels exceeds the limit of 50000" in lines[2]
    assert lines[2].endswith("; --max-pixels raises the limit")
    assert [row["path"] for row in _rows(out)] == [str(good)] * 4
    before = out.read_bytes()
    none = CliRunner().invoke(app, ["predict", str(ckpt), str(bad), str(small), "--out", str(out)])
    assert none.exit_code == 1, none.output
    assert none.stderr == "".join(
        f"error: {line.removeprefix('warning: ')}\n" for line in lines[:2]
    )
    assert none.stdout == "" and out.read_bytes() == before
    with pytest.raises(SkippedInputs) as err:
        predict_paths(ckpt, files, out, max_pixels=50_000, draw_heatmaps=False)
    assert [type(e) for e in err.value.problems] == [
        PredictInputError,
        TooSmall,  # a PredictInputError; the command gives several of them one line
        OverPixelLimit,
    ]
    assert str(err.value).startswith(f"{bad}: cannot read image") and "and 2 more" in str(err.value)
    assert err.value.summary["files"] == 1 and err.value.summary["rows"] == 4
    out.unlink()
    with pytest.raises(SkippedInputs) as err:
        predict_paths(ckpt, [bad, small], out)
    assert len(err.value.problems) == 2 and err.value.summary["csv"] is None
    assert not out.exists()


def test_images_at_another_magnification_than_pcam_get_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 40x region scored at --scale 1 came out as tumour nearly everywhere with no word
    (a Camelyon17 2048 px tile: 0.98-1.00 per tile); the nucleus size now says so once."""
    from histomodels.predict import predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    fig = make_figure(4, 4, seed=3)  # drawn at PCam scale
    Image.fromarray(fig).save(tmp_path / "pcam_scale.png")
    big = Image.fromarray(fig).resize(
        (fig.shape[1] * 4, fig.shape[0] * 4), Image.Resampling.BICUBIC
    )
    big.save(tmp_path / "x40.png")

    def warnings(path: str, scale: float = 1.0) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="histomodels.predict"):
            predict_paths(ckpt, [tmp_path / path], tmp_path / "p.csv", scale=scale)
        return [r.getMessage() for r in caplog.records]

    assert warnings("pcam_scale.png") == []
    (line,) = warnings("x40.png")
    assert "look" in line and "larger than in PCam patches" in line and "at --scale 1:" in line
    suggested = float(line.split("try --scale ")[1].split()[0])
    assert 0.15 <= suggested <= 0.35  # the true factor is 0.25
    assert warnings("x40.png", scale=0.25) == []
    assert len(_rows(tmp_path / "p.csv")) == 16  # the CSV is written as before


def test_a_suggested_scale_that_leaves_no_patch_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Camelyon16 256 px tiles at 40x were told 'try --scale 0.27', and that scale
    then failed every one: 'error: 44 of 44 file(s) are smaller than one 96px patch at scale
    0.27 … 69x69'. The warning now says so with its suggestion, and what would work."""
    from histomodels.predict import predict_paths, warn_magnification

    caplog.set_level("WARNING", logger="histomodels.predict")
    warn_magnification([0.266, 0.27, 0.26], 1.0, patch=([(256, 256)], 96, True))
    # the same 256 px image at --scale 0.5
    warn_magnification([0.266], 0.5, patch=([(256, 256)], 96, True))
    # a Camelyon17 tile: room to spare
    warn_magnification([0.266], 1.0, patch=([(2048, 2048)], 96, True))
    first, second, big = (r.getMessage() for r in caplog.records)
    # 354 px is the least side at 0.27 as predict rounds it (round(354 * 0.27) = 96); it
    # said ceil(96 / 0.27) = 356 (review N6)
    assert first.endswith(
        "try --scale 0.27 (a rough estimate from nucleus size, ±30%); but at --scale 0.27 an "
        "image 256 px a side is 69 px, smaller than one 96px patch: give regions of at least "
        "354 px a side at this magnification, or, to score such tiles whole (labelled, one "
        "folder per class) use eval --data FOLDER --scale 0.27"
    ), first
    assert "try --scale 0.13" in second and "an image 256 px a side is 33 px" in second
    assert big.endswith("try --scale 0.27 (a rough estimate from nucleus size, ±30%)"), big
    # eval is pointed to only where it would score such tiles whole (review M3): not for a
    # model that enlarges its input, a tile under 32 px there, one more than 2:1, two sizes
    caplog.clear()
    warn_magnification([0.266], 1.0, patch=([(256, 256)], 96, False))
    warn_magnification([0.266], 0.5, patch=([(100, 100)], 96, True))  # 13 px at 0.13
    warn_magnification([0.266], 1.0, patch=([(300, 100)], 96, True))
    warn_magnification([0.266], 1.0, patch=([(256, 256), (200, 200)], 96, True))
    for line in (r.getMessage() for r in caplog.records):
        assert "smaller than one 96px patch" in line and "eval --data" not in line, line

    ckpt = tiny_checkpoint(tmp_path)  # end to end: a 40x crop of 320 px (80 px at PCam scale)
    fig = make_figure(4, 4, seed=3)
    x40 = Image.fromarray(fig).resize(
        (fig.shape[1] * 4, fig.shape[0] * 4), Image.Resampling.BICUBIC
    )
    x40.crop((0, 0, 320, 320)).save(tmp_path / "x40_crop.png")
    caplog.clear()
    predict_paths(ckpt, [tmp_path / "x40_crop.png"], tmp_path / "p.csv", draw_heatmaps=False)
    (line,) = (r.getMessage() for r in caplog.records)
    assert "an image 320 px a side is" in line and "smaller than one 96px patch" in line, line
    # the side is the image's own, not worked back from its scaled size (review N7: a
    # 401 px crop at --scale 0.5, 200 px there, was 'an image 400 px a side')
    x40.crop((0, 0, 401, 401)).save(tmp_path / "x40_401.png")
    caplog.clear()
    predict_paths(
        ckpt, [tmp_path / "x40_401.png"], tmp_path / "q.csv", draw_heatmaps=False, scale=0.5
    )
    (line,) = (r.getMessage() for r in caplog.records)
    assert "an image 401 px a side is" in line, line


def test_no_heatmaps_writes_the_same_csv_and_no_pngs(tmp_path: Path) -> None:
    """Drawing a heatmap costs ~0.5 s an image (89 Camelyon16 256 px tiles: 78 s with them,
    19 s without on a loaded machine); --no-heatmaps keeps the CSV only."""
    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(2, 3, seed=1)).save(big)
    runs = {}
    for name, extra in (("with", []), ("without", ["--no-heatmaps"])):
        out = tmp_path / name / "pred.csv"
        r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        runs[name] = out.read_text()
    assert (tmp_path / "with" / "pred_heatmaps" / "figure.png").exists()
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == ["pred.csv"]
    assert runs["with"] == runs["without"]
    r = CliRunner().invoke(
        app, ["predict", str(ckpt), str(big), "--no-heatmaps", "--heatmaps", str(tmp_path / "h")]
    )
    assert r.exit_code == 2 and "give one of them, not both" in r.output
    assert not (tmp_path / "h").exists()


def test_a_file_at_the_default_heatmap_folder_fails_at_once(tmp_path: Path) -> None:
    """``--heatmaps`` was checked up front, its default (``<csv stem>_heatmaps``) not: a
    file there let predict score everything, then fail with 'file exists'."""
    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(2, 3, seed=1)).save(big)
    (tmp_path / "s_heatmaps").write_text("not a folder")
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--out", str(out)])
    assert r.exit_code == 1 and r.exception is not None
    assert r.output == f"error: {tmp_path / 's_heatmaps'}: is a file, not a folder\n"
    assert not out.exists()
    args = ["predict", str(ckpt), str(big), "--out", str(out), "--no-heatmaps"]
    assert CliRunner().invoke(app, args).exit_code == 0 and out.exists()


def test_greyscale_images_get_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A greyscale file (or grey pixels stored as RGB) was scored as if it were H&E, with
    no word; now one warning names how many and one of them."""
    from histomodels.predict import predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    patches, _ = make_patches(2, seed=4)
    Image.fromarray(patches[0]).save(tmp_path / "he.png")
    Image.fromarray(patches[1]).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(patches[1]).convert("L").convert("RGB").save(tmp_path / "grey_rgb.png")
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(ckpt, [tmp_path], tmp_path / "out" / "p.csv")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"2 of 3 image(s) are greyscale (e.g. {tmp_path / 'grey.png'})")
    assert len(_rows(tmp_path / "out" / "p.csv")) == 3  # still scored
    caplog.clear()
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(ckpt, [tmp_path / "he.png"], tmp_path / "out" / "p.csv")
    assert caplog.records == []


def test_blank_tiles_are_not_called_greyscale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Background tiles (pure white, near-white JPEG, one flat shade) have R=G=B too; they
    were counted as greyscale images ('3 of 4 image(s) are greyscale (e.g. bg.jpg)'). Only
    grey images with tissue-like content count."""
    from histomodels.predict import predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    patches, _ = make_patches(2, seed=4)
    Image.fromarray(patches[0]).save(tmp_path / "col.png")
    rng = np.random.default_rng(0)
    bg = np.clip(rng.normal(242, 3, (96, 96, 1)), 0, 255).astype(np.uint8).repeat(3, -1)
    Image.fromarray(bg).save(tmp_path / "bg.jpg", quality=90)
    Image.fromarray(np.full((96, 96, 3), 255, np.uint8)).save(tmp_path / "white.png")
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    files = [tmp_path / n for n in ("col.png", "bg.jpg", "white.png", "flat.png")]
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        summary = predict_paths(ckpt, files, tmp_path / "a.csv", draw_heatmaps=False)
    assert summary["rows"] == 4 and caplog.records == []
    Image.fromarray(patches[1]).convert("L").save(tmp_path / "grey.png")  # grey tissue
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(ckpt, [*files, tmp_path / "grey.png"], tmp_path / "b.csv")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"1 of 5 image(s) are greyscale (e.g. {tmp_path / 'grey.png'})")


def test_csv_says_tumour_yes_no_and_the_threshold_it_used(tmp_path: Path) -> None:
    """The CSV had a probability only: users copied the threshold from the model card. Two
    columns are appended (the first six keep their order): the threshold and the call at
    it (a checkpoint without one: 0.5; --threshold overrides)."""
    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(3, 4, seed=1)).save(big)
    out = tmp_path / "pred.csv"
    base = ["predict", str(ckpt), str(big), "--out", str(out), "--no-heatmaps"]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    # the temperature eval --val fitted is used, its threshold is not: the line says so
    assert (
        "tumour = probability >= 0.5000: default 0.5 (the model ships no threshold; eval --val "
        "does not store the one it chose: give it as --threshold)"
    ) in r.output
    header = out.read_text().splitlines()[0]
    assert header == "path,x,y,size,tissue_fraction,probability,threshold,tumour"
    rows = _rows(out)
    probs = np.array([float(r["probability"]) for r in rows])
    assert {r["threshold"] for r in rows} == {"0.500000"}
    assert [r["tumour"] for r in rows] == ["yes" if p >= 0.5 else "no" for p in probs]
    levels = np.unique(probs)
    mid = len(levels) // 2
    cut = float((levels[mid - 1] + levels[mid]) / 2)  # between two tiles: no rounding ties
    r = CliRunner().invoke(app, [*base, "--threshold", str(cut)])
    assert r.exit_code == 0 and f"tumour = probability >= {cut:.4f}: --threshold" in r.output
    rows = _rows(out)
    assert [r["tumour"] for r in rows] == ["yes" if p >= cut else "no" for p in probs]
    assert {"yes", "no"} == {r["tumour"] for r in rows}
    r = CliRunner().invoke(app, [*base, "--threshold", "1.5"])
    assert r.exit_code == 2 and "1.5 is not in the range 0<=x<=1." in r.output


def test_the_call_agrees_with_the_probability_the_csv_shows(tmp_path: Path) -> None:
    """A threshold equal to a row's printed (6-decimal) probability calls that row tumour:
    the call was made on the unrounded value, so a row rounded up showed e.g. 0.412345
    >= 0.412345 and "no"."""
    from histomodels.predict import predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(3, 4, seed=1)).save(big)
    out = tmp_path / "pred.csv"
    predict_paths(ckpt, [big], out, draw_heatmaps=False)
    shown = sorted({r["probability"] for r in _rows(out)})
    for cut in shown[:: max(1, len(shown) // 6)]:
        predict_paths(ckpt, [big], out, draw_heatmaps=False, threshold=float(cut))
        for row in _rows(out):
            called = float(row["probability"]) >= float(row["threshold"])
            assert row["tumour"] == ("yes" if called else "no"), (cut, row)


def test_a_threshold_between_printed_digits_is_compared_unrounded(tmp_path: Path) -> None:
    """``--threshold 0.9999996`` was printed so but written ``1.000000`` and compared
    rounded, so p = 0.9999997 passed a threshold of 1; the CSV shows the threshold exactly
    and each probability with the digits its call takes. A threshold of 1 the user gave
    is not said to be one where validation scores 'saturate'."""
    from histomodels.predict import cut_text, probability_text

    assert cut_text(0.5) == "0.500000" and cut_text(0.9999996) == "0.9999996"
    assert probability_text(0.9999997, 1.0) == "0.9999997"
    assert probability_text(0.4123449, 0.412345) == "0.4123449"
    assert probability_text(0.4123451, 0.412345) == "0.412345"
    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "figure.png"
    Image.fromarray(make_figure(3, 4, seed=1)).save(big)
    out = tmp_path / "pred.csv"
    base = ["predict", str(ckpt), str(big), "--out", str(out), "--no-heatmaps"]
    assert CliRunner().invoke(app, base).exit_code == 0
    shown = sorted({r["probability"] for r in _rows(out)})
    for text in shown[:: max(1, len(shown) // 4)]:
        cut = float(text) + 4e-7  # rounds to the row's 6 decimals: the old call was 'yes'
        r = CliRunner().invoke(app, [*base, "--threshold", repr(cut)])
        assert r.exit_code == 0, r.output
        for row in _rows(out):
            assert float(row["threshold"]) == cut, row
            called = float(row["probability"]) >= cut
            assert row["tumour"] == ("yes" if called else "no"), (cut, row)
    r = CliRunner().invoke(app, [*base, "--threshold", "1"])
    assert "tumour = probability >= 1.0000: --threshold\n" in r.output, r.output
    assert "saturate" not in r.output


def test_a_multi_page_tiff_gets_one_warning_that_only_its_first_page_is_scored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 3-page TIFF was scored on its first page only, with no word; now one warning line
    names the file (single-page TIFFs: none)."""
    from histomodels.predict import predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    patches, _ = make_patches(4, seed=5)
    pages = [Image.fromarray(p) for p in patches]
    pages[0].save(tmp_path / "three.tif", save_all=True, append_images=pages[1:3])
    pages[3].save(tmp_path / "one.tif")
    with Image.open(tmp_path / "three.tif") as im:
        assert getattr(im, "n_frames", 1) == 3  # the input really has three pages
    out = tmp_path / "p.csv"
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(ckpt, [tmp_path / "one.tif", tmp_path / "three.tif"], out)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'three.tif'}: only the first of several pages is scored"
    ]
    assert [r["path"] for r in _rows(out)] == [
        str(tmp_path / "one.tif"),
        str(tmp_path / "three.tif"),
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(ckpt, [tmp_path / "one.tif"], out)
    assert caplog.records == []
    # the command: one `warning:` line on stderr
    r = CliRunner().invoke(
        app, ["predict", str(ckpt), str(tmp_path / "three.tif"), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == [
        f"warning: {tmp_path / 'three.tif'}: only the first of several pages is scored"
    ]
    # several such files: still one line, with how many
    pages[1].save(tmp_path / "two.tif", save_all=True, append_images=[pages[2]])
    caplog.clear()
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(ckpt, [tmp_path], out)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("2 of 3 file(s) hold several pages or frames: only the first of each")


def _tiff_with_damaged_second_page(kind: str, pages_in_all: int = 2) -> bytes:
    """A little-endian TIFF of ``pages_in_all`` pages whose last IFD (the second one by
    default) is damaged so that Pillow's page count (``n_frames``) raises ``kind``: an
    unknown compression code (KeyError 40193) or an ImageWidth entry claiming more values
    than the file holds (TypeError "Missing dimensions"). Damage found by fuzzing the page
    chain (review of commit 51cbab9)."""
    import io
    import struct

    patches, _ = make_patches(pages_in_all, seed=7)
    pages = [Image.fromarray(p) for p in patches]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    b = bytearray(buf.getvalue())
    assert b[:2] == b"II"
    last = struct.unpack_from("<I", b, 4)[0]
    for _ in range(pages_in_all - 1):  # follow the chain to the last IFD
        n = struct.unpack_from("<H", b, last)[0]
        last = struct.unpack_from("<I", b, last + 2 + 12 * n)[0]
    hit = 0
    for i in range(struct.unpack_from("<H", b, last)[0]):
        entry = last + 2 + 12 * i
        tag = struct.unpack_from("<H", b, entry)[0]
        if kind == "KeyError" and tag == 259:  # Compression: an unknown code
            struct.pack_into("<H", b, entry + 8, 40193)
            hit += 1
        if kind == "TypeError" and tag == 256:  # ImageWidth: count far past the file's end
            struct.pack_into("<I", b, entry + 4, 0x13000001)
            hit += 1
    assert hit == 1
    return bytes(b)


@pytest.mark.parametrize("kind", ["KeyError", "TypeError"])
def test_a_tiff_whose_page_chain_is_damaged_is_scored_on_its_first_page(
    tmp_path: Path, kind: str
) -> None:
    """Counting pages raised KeyError/TypeError out of predict (a traceback) on a TIFF with a
    damaged second IFD; the count is a hint only, so such a file is scored as one page, as
    it was before the page warning existed."""
    import warnings

    ckpt = tiny_checkpoint(tmp_path)
    f = tmp_path / "damaged.tif"
    f.write_bytes(_tiff_with_damaged_second_page(kind))
    with Image.open(f) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises({"KeyError": KeyError, "TypeError": TypeError}[kind]):
            _ = getattr(im, "n_frames", 1)  # the input really is damaged the way described
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "pages" not in r.stderr
    assert [row["path"] for row in _rows(out)] == [str(f)]


def test_counting_pages_stops_at_the_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The page count walked every page of a TIFF (Pillow's n_frames), only to warn that the
    first one is scored: slow on TIFFs of very many pages. It stops at the second now: a
    3-page TIFF whose third page is damaged (n_frames raises there, so it was counted as
    one page, with no warning) gets the warning, and its first page is scored."""
    import warnings

    from histomodels.predict import _pages, predict_paths

    f = tmp_path / "scan.tif"
    f.write_bytes(_tiff_with_damaged_second_page("KeyError", pages_in_all=3))
    with Image.open(f) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyError):
            _ = getattr(im, "n_frames", 1)  # the third page really is unreadable
    with Image.open(f) as im:
        assert _pages(im) == 2 and im.tell() == 0
    out = tmp_path / "p.csv"
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        predict_paths(tiny_checkpoint(tmp_path), [f], out, draw_heatmaps=False)
    assert [r.getMessage() for r in caplog.records] == [
        f"{f}: only the first of several pages is scored"
    ]
    assert [row["path"] for row in _rows(out)] == [str(f)]


class _PageWalk:
    """Stands in for an open Pillow image whose page walk raises ``exc`` from outside Pillow
    (our code's bugs) or runs out of memory: ``seek`` and ``n_frames`` alike."""

    format = "TIFF"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def tell(self) -> int:
        return 0

    def seek(self, frame: int) -> None:
        raise self.exc

    @property
    def n_frames(self) -> int:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [MemoryError(), KeyboardInterrupt(), TypeError("a bug"), AttributeError("a bug")]
)
def test_counting_pages_lets_memory_errors_interrupts_and_bugs_through(
    exc: BaseException,
) -> None:
    """Counting pages swallowed every Exception as "a damaged page chain", MemoryError and
    our own bugs included; only what Pillow raises on a damaged file means one page now
    (the damaged-TIFF tests above)."""
    from histomodels.predict import _pages

    with pytest.raises(type(exc)):
        _pages(_PageWalk(exc))


@pytest.mark.parametrize("stored", ["x", float("nan"), 5.0])
def test_a_checkpoint_with_an_unusable_threshold_is_one_error_line(
    tmp_path: Path, stored: object
) -> None:
    """predict, ``eval --data`` and ``eval --manifest`` trusted a checkpoint's stored
    ``threshold``: "x" gave a ValueError traceback, NaN and 5.0 exit 0 with every patch
    called tumour=no. Now the checkpoint is refused at load: one line naming it, exit 1,
    nothing written."""
    from histocore.manifest import Image as Row
    from histocore.manifest import Manifest, Record
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    raw = torch.load(ckpt, weights_only=True)
    raw["threshold"], raw["threshold_rule"] = stored, "sensitivity>=0.9"
    torch.save(raw, ckpt)
    patch = tmp_path / "patch.png"
    Image.fromarray(make_patches(1, seed=3)[0][0]).save(patch)
    data = write_h5(tmp_path / "test.h5", 16, seed=7)
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    Image.fromarray(make_figure(2, 2, seed=1)).save(run / "images" / "fig.png")
    m = Manifest(run_dir=run, query="synthetic")
    m.add_record(Record(id="pmid:1", stage="filtered"))
    m.add_image(Row(id="pmid:1/fig", record_id="pmid:1", path="images/fig.png",
                    sha256="0" * 64, width=192, height=192, kept=True))  # fmt: skip
    m.save()
    m.close()
    out = tmp_path / "out"
    every = ["--out", str(out)]
    commands = {
        "predict": ["predict", str(ckpt), str(patch), "--out", str(out / "p.csv")],
        "eval --data": ["eval", str(ckpt), "--data", str(data), *every, "--bootstrap", "0"],
        "eval --manifest": ["eval", str(ckpt), "--manifest", str(run), "--scale", "1", *every],
    }
    for name, args in commands.items():
        r = CliRunner().invoke(app, args)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, (name, r.output)
        assert lines[0].startswith(f"error: {ckpt}: ") and "'threshold'" in lines[0], name
        assert not out.exists(), name


def test_predict_and_eval_give_the_same_probability_by_default(tmp_path: Path) -> None:
    """predict defaulted to --precision auto (bf16 autocast for a cnn on CPUs with native
    bf16), eval to fp32: the same checkpoint gave one patch probabilities up to 0.0076
    apart (0.0082 on PCam valid). Both default to fp32 now; auto stays an explicit choice of
    either command. Both on the CPU, also where a GPU is visible (there they run TF32
    convolutions over other batches: up to 1.5e-4 apart on an H200)."""
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    data = write_h5(tmp_path / "test.h5", 24, seed=8)
    folder = tmp_path / "patches"
    folder.mkdir()
    patches, _ = make_patches(24, seed=8)  # the patches write_h5 stores (lossless PNG)
    for i, p in enumerate(patches):
        Image.fromarray(p).save(folder / f"p{i:02d}.png")
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(ckpt), "--data", str(data), "--device", "cpu",
                            "--out", str(tmp_path / "eval"), "--bootstrap", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    by_eval = [float(row["probability"]) for row in _rows(tmp_path / "eval" / "predictions.csv")]
    out = tmp_path / "pred.csv"
    r = runner.invoke(
        app, ["predict", str(ckpt), str(folder), "--out", str(out), "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    by_predict = [float(row["probability"]) for row in _rows(out)]
    np.testing.assert_allclose(by_predict, by_eval, rtol=0, atol=1e-6)
    if cpu_has_fast_bf16():  # the faster path is still there when asked for
        r = runner.invoke(app, ["predict", str(ckpt), str(folder), "--out", str(out),
                                "--precision", "auto", "--device", "cpu"])  # fmt: skip
        assert r.exit_code == 0, r.output
        fast = np.array([float(row["probability"]) for row in _rows(out)])
        assert np.abs(fast - np.array(by_eval)).max() > 1e-6


def _psd(path: Path, rgb: np.ndarray, layers: int = 0, side: int = 64) -> Path:
    """An RGB Photoshop file (raw planes) holding ``rgb`` flattened and ``layers`` layers of
    ``side`` px cut from it side by side; Pillow reads the flattened image, from frame 1."""
    import struct

    h, w, _ = rgb.shape
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    records, pixels = b"", b""
    for i in range(layers):
        records += struct.pack(">iiiiH", 0, i * side, side, (i + 1) * side, 3)
        records += b"".join(struct.pack(">hI", ch, 2 + side * side) for ch in range(3))
        extra = struct.pack(">II", 0, 0) + b"\x01a\x00\x00"  # no mask, no ranges, name "a"
        records += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">I", len(extra)) + extra
        for ch in range(3):
            pixels += struct.pack(">H", 0) + rgb[:side, i * side : (i + 1) * side, ch].tobytes()
    info = struct.pack(">h", layers) + records + pixels if layers else b""
    info += b"\x00" * (len(info) % 2)
    masks = struct.pack(">I", len(info)) + info + struct.pack(">I", 0) if layers else b""
    sections = struct.pack(">III", 0, 0, len(masks)) + masks  # colour mode data, resources
    planes = struct.pack(">H", 0) + rgb.transpose(2, 0, 1).tobytes()  # raw, channel by channel
    path.write_bytes(head + sections + planes)
    return path


def test_odd_but_valid_inputs_are_scored(tmp_path: Path) -> None:
    """Three inputs refused before review 2: a PSD (Pillow numbers its frames from 1, and
    seeking back to 0 raised EOFError: the whole run ended in 'Aborted.'); a 50 px image at
    --scale 2 (100 px: the size was checked before the scale); and a folder named like an
    image (slide1.tif/, tiles named after their slide), read as a file that failed."""
    ckpt = tiny_checkpoint(tmp_path)
    rgb = make_figure(2, 2, seed=3)[:192, :192]
    psd = _psd(tmp_path / "scan.psd", rgb)
    assert Image.open(psd).size == (192, 192)
    layered = _psd(tmp_path / "layered.psd", rgb, layers=2)
    with Image.open(layered) as im:
        assert getattr(im, "n_frames", 1) == 2
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb)
    small = tmp_path / "small.png"
    Image.fromarray(rgb[:50, :50]).save(small)
    slide = tmp_path / "in" / "slide1.tif"
    slide.mkdir(parents=True)
    Image.fromarray(rgb).save(slide / "t0.png")
    out = tmp_path / "p.csv"
    inputs = [str(psd), str(layered), str(tmp_path / "in")]
    r = CliRunner().invoke(app, ["predict", str(ckpt), *inputs, "--out", str(out),
                                 "--no-heatmaps"])  # fmt: skip
    assert r.exit_code == 0 and not r.stderr, r.output  # a PSD's layers are not pages
    paths = [row["path"] for row in _rows(out)]
    assert paths == [str(psd)] * 4 + [str(layered)] * 4 + [str(slide / "t0.png")] * 4
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(small), "--scale", "2",
                                 "--out", str(out), "--no-heatmaps"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [row["path"] for row in _rows(out)] == [str(small)]


def test_skipped_inputs_survive_a_process_pool(tmp_path: Path) -> None:
    """SkippedInputs could not be unpickled (its __init__ takes two arguments): raised in a
    worker it broke the whole pool. Its message says what was written."""
    import pickle

    from histomodels.predict import SkippedInputs

    exc = SkippedInputs([PredictInputError("t.png: empty file")], {"files": 2, "csv": "p.csv"})
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is SkippedInputs and str(back) == str(exc)
    assert [str(p) for p in back.problems] == ["t.png: empty file"]
    assert back.summary == {"files": 2, "csv": "p.csv"}
    assert str(exc) == "t.png: empty file; the other 2 file(s) were scored into p.csv"


def test_a_broken_link_in_a_folder_is_a_warning_line(tmp_path: Path) -> None:
    """Review 3: walking folders for files only (not folders named like images) dropped a
    link whose target is gone without a word, exit 0; now one warning line names it (exit 0:
    the good file was scored)."""
    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(make_figure(2, 2, seed=4)[:96, :96]).save(folder / "good.png")
    (folder / "bad.png").symlink_to(tmp_path / "moved" / "away.png")
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(folder), "--out", str(out),
                                 "--no-heatmaps"])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith(f"warning: {folder / 'bad.png'}: "), r.stderr
    assert [row["path"] for row in _rows(out)] == [str(folder / "good.png")]


@pytest.mark.timeout(60)
def test_a_named_pipe_given_directly_says_what_it_is(tmp_path: Path) -> None:
    """A pipe named on the command line said ``no such file or folder`` (it is there); it
    now gets the reader's line, the same as a pipe inside a folder, and nothing blocks (a
    warning beside the folder's good file, exit 0; an error, exit 1, when it is all)."""
    import os

    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(make_figure(2, 2, seed=4)[:96, :96]).save(folder / "good.png")
    pipe = folder / "p.png"
    os.mkfifo(pipe)
    why = "cannot read image (not a regular file (a pipe, socket or device))"
    for given in (folder, pipe):
        out = tmp_path / "p.csv"
        r = CliRunner().invoke(app, ["predict", str(ckpt), str(given), "--out", str(out),
                                     "--no-heatmaps"])  # fmt: skip
        assert r.exit_code == (3 if given == folder else 1), r.output
        said = "warning" if given == folder else "error"
        assert r.stderr.strip() == f"{said}: {pipe}: {why}", r.stderr
        out.unlink(missing_ok=True)


def test_a_scale_is_named_as_given(tmp_path: Path) -> None:
    """A message names the --scale the user gave: ':g' showed six digits ('at scale
    0.333333' for 0.3333333)."""
    ckpt = tiny_checkpoint(tmp_path)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(make_figure(4, 4, seed=20)[:150, :150]).save(tiny)
    args = ["predict", str(ckpt), "--scale", "0.3333333", "--no-heatmaps"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p.csv"), str(tiny)])
    assert r.exit_code == 1, r.output
    assert f"error: {tiny}: 150x150 at scale 0.3333333 is 50x50, smaller" in r.stderr


def _heatmap_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_heatmap_folder_holds_no_heatmap_this_run_did_not_draw(tmp_path: Path) -> None:
    """A heatmap an earlier run drew for a file this run skips, or now scores as one patch
    (no heatmap), stayed beside the new CSV, as if it were this run's. Once the CSV is
    written, each input's heatmap is this run's or gone; other files stay; a run that
    writes no CSV removes nothing."""
    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, n in (("a", 2), ("b", 2), ("c", 4)):  # 192, 192 and 384 px
        Image.fromarray(make_figure(n, n, seed=len(name) + n)).save(folder / f"{name}.png")
    out, heat = tmp_path / "pred.csv", tmp_path / "pred_heatmaps"
    run = ["predict", str(ckpt), str(folder), "--out", str(out)]
    assert CliRunner().invoke(app, run).exit_code == 0
    assert _heatmap_files(heat) == ["a.png", "b.png", "c.png"]
    (heat / "notes.txt").write_text("mine")
    good_b = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(good_b[: len(good_b) // 2])  # header fine, data cut
    r = CliRunner().invoke(app, run)
    assert r.exit_code == 3 and r.stderr.startswith(f"warning: {folder / 'b.png'}: "), r.output
    assert _heatmap_files(heat) == ["a.png", "c.png", "notes.txt"]
    r = CliRunner().invoke(app, [*run, "--scale", "0.5"])  # a: one 96 px patch, no heatmap
    assert r.exit_code == 3, r.output
    assert _heatmap_files(heat) == ["c.png", "notes.txt"]
    assert {row["path"] for row in _rows(out)} == {str(folder / "a.png"), str(folder / "c.png")}
    kept = (heat / "c.png").read_bytes(), out.read_bytes()
    r = CliRunner().invoke(app, [*run, "--max-pixels", "100"])  # nothing scored, no CSV
    assert r.exit_code == 1, r.output
    assert _heatmap_files(heat) == ["c.png", "notes.txt"]
    assert ((heat / "c.png").read_bytes(), out.read_bytes()) == kept


def test_a_heatmap_replaces_only_a_heatmap_predict_drew(tmp_path: Path) -> None:
    """The staged heatmap was renamed over whatever sat at ``<heatmaps>/<stem>.png``, a
    user's own PNG included (only removal was limited to predict's own heatmaps). A file
    there that is not a heatmap predict drew is now one error line, exit 1, before any
    heatmap is drawn or the CSV written; a heatmap drawn for another CSV is replaced, and a
    file at the name of an input scored as one patch (no heatmap) is left alone."""
    from histomodels.predict import HEATMAP_MARK

    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, n in (("a", 2), ("b", 3), ("p", 1)):  # 192 px, 288 px, one patch
        Image.fromarray(make_figure(n, n, seed=n)).save(folder / f"{name}.png")
    out, heat = tmp_path / "pred.csv", tmp_path / "pred_heatmaps"
    heat.mkdir()
    mine = heat / "b.png"
    Image.fromarray(make_figure(1, 1, seed=9)).save(mine)
    (heat / "p.png").write_text("my notes")  # p gets no heatmap: never judged, left alone
    kept = mine.read_bytes()
    run = ["predict", str(ckpt), str(folder), "--out", str(out)]
    for theirs in (kept, b"not an image"):
        mine.write_bytes(theirs)
        r = CliRunner().invoke(app, run)
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [
            f"error: {mine}: exists and is not a heatmap predict drew (its PNG text chunk "
            f"'{HEATMAP_MARK}' is missing); the heatmap of {folder / 'b.png'} would replace "
            "it: give another --heatmaps or --no-heatmaps, or remove it first"
        ]
        assert mine.read_bytes() == theirs and not out.exists()
        assert _heatmap_files(heat) == ["b.png", "p.png"]  # a's heatmap not drawn either
    mine.unlink()
    r = CliRunner().invoke(app, run)
    assert r.exit_code == 0, r.output
    assert _heatmap_files(heat) == ["a.png", "b.png", "p.png"]
    assert (heat / "p.png").read_text() == "my notes"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(folder), "--out",
                                 str(tmp_path / "other.csv"), "--heatmaps", str(heat)])  # fmt: skip
    assert r.exit_code == 0, r.output  # the heatmaps pred.csv's run drew are predict's own
    with Image.open(heat / "b.png") as im:
        assert im.info[HEATMAP_MARK] == str((tmp_path / "other.csv").resolve())


def test_a_file_made_at_a_heatmaps_name_while_later_inputs_are_scored_is_kept(
    tmp_path: Path,
) -> None:
    """The file at an input's heatmap name was judged when that input was scored, but the
    staged heatmap was renamed over it only after every later input was (minutes): a PNG
    another process made there meanwhile was replaced. It is judged again right before
    the renames: one error line, the file as it was, no CSV and no heatmap. The file is
    made from a torch forward hook once a's heatmap is staged, while b is scored."""
    import torch

    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, n in (("a", 2), ("b", 3)):
        Image.fromarray(make_figure(n, n, seed=n)).save(folder / f"{name}.png")
    out, heat = tmp_path / "pred.csv", tmp_path / "pred_heatmaps"
    mine = heat / "a.png"
    theirs = b"made by another process"

    def appear(*_: object) -> None:
        if not mine.exists() and any(heat.glob(".a.png.*.part")):
            mine.write_bytes(theirs)

    hook = torch.nn.modules.module.register_module_forward_hook(appear)
    try:
        r = CliRunner().invoke(app, ["predict", str(ckpt), str(folder), "--out", str(out)])
    finally:
        hook.remove()
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines()[-1].startswith(
        f"error: {mine}: exists and is not a heatmap predict drew"
    ), r.stderr
    assert mine.read_bytes() == theirs and not out.exists()
    assert _heatmap_files(heat) == ["a.png"]


def test_a_heatmap_is_never_written_over_an_input_or_another_heatmap(tmp_path: Path) -> None:
    """--heatmaps naming the folder of a PNG input wrote the input's heatmap over the input
    (the image was lost); two inputs whose names clash even with their folder's name
    (d1/x/img.png, d2/x/img.png) shared one heatmap file, the second drawn over the first."""
    ckpt = tiny_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    img = folder / "a.png"
    Image.fromarray(make_figure(2, 2, seed=3)).save(img)
    before = img.read_bytes()
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(img), "--heatmaps", str(folder),
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(f"error: {img}: its heatmap would be written over it"), r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert img.read_bytes() == before and not out.exists()
    twins = [tmp_path / d / "x" / "img.png" for d in ("d1", "d2")]
    for i, f in enumerate(twins):
        f.parent.mkdir(parents=True)
        Image.fromarray(make_figure(2, 2, seed=5 + i)).save(f)
    r = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, twins), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert _heatmap_files(tmp_path / "p_heatmaps") == ["x_img.png", "x_img_2.png"]


def test_the_csv_is_never_written_over_the_checkpoint_its_sidecar_or_an_input(
    tmp_path: Path,
) -> None:
    """``predict RUN IMG --out RUN/best.pt`` replaced the trained weights with the CSV (the
    run was lost; export refuses its own checkpoint as --out), and ``--out`` naming the
    checkpoint's calibration sidecar or an input image replaced that file too. Each is one
    error line naming --out, exit 1, nothing written; an earlier CSV is still replaced, as
    eval and export replace their earlier output."""
    import shutil

    from histomodels.calibration import calibration_path, write_calibration

    run = tmp_path / "run"
    run.mkdir()
    ckpt = Path(shutil.copy(tiny_checkpoint(tmp_path), run / "best.pt"))
    side = calibration_path(ckpt)
    assert write_calibration(ckpt, 1.25, "val.h5") == str(side)
    folder = tmp_path / "in"
    folder.mkdir()
    img = folder / "a.png"
    Image.fromarray(make_patches(1, seed=3)[0][0]).save(img)
    kept = {f: f.read_bytes() for f in (ckpt, side, img)}
    for model in (run, ckpt):
        for out, what in ((ckpt, "the checkpoint predict reads"),
                          (side, "the calibration file of the checkpoint predict reads"),
                          (img, "one of the images to score")):  # fmt: skip
            r = CliRunner().invoke(app, ["predict", str(model), str(folder), "--out", str(out)])
            assert r.exit_code == 1, r.output
            assert r.stderr.splitlines() == [
                f"error: {out}: is {what}; the CSV would replace it: choose another --out"
            ]
            assert {f: f.read_bytes() for f in kept} == kept
    assert not (tmp_path / "in" / "a_heatmaps").exists()
    out = tmp_path / "p.csv"
    out.write_text("path,x,y,size,tissue_fraction,probability\nold.png,0,0,96,1.0,0.5\n")
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("path,x,y,") and "old.png" not in out.read_text()


def test_the_csv_is_never_written_where_the_calibration_sidecar_will_be(
    tmp_path: Path,
) -> None:
    """``predict RUN IMG --no-heatmaps --out RUN/best.calibration.json`` with no sidecar
    yet (the usual case: none before ``eval --val``) wrote the CSV there, exit 0, and every
    later predict or eval of the run failed ('not a calibration file'): --out was compared
    with the sidecar by file identity only, and a missing file has none. It is refused by
    its real path too (also spelt through ``..``), nothing written."""
    import shutil

    from histomodels.calibration import calibration_path

    run = tmp_path / "run"
    run.mkdir()
    ckpt = Path(shutil.copy(tiny_checkpoint(tmp_path), run / "best.pt"))
    side = calibration_path(ckpt)
    img = tmp_path / "a.png"
    Image.fromarray(make_patches(1, seed=3)[0][0]).save(img)
    for model in (run, ckpt):
        for out in (side, run / ".." / "run" / side.name):
            r = CliRunner().invoke(
                app, ["predict", str(model), str(img), "--no-heatmaps", "--out", str(out)]
            )
            assert r.exit_code == 1, r.output
            assert r.stderr.splitlines() == [
                f"error: {out}: is the calibration file of the checkpoint predict reads; "
                "the CSV would replace it: choose another --out"
            ]
            assert not side.exists()
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "--no-heatmaps",
                                 "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert r.exit_code == 0, r.output


def test_the_csv_replaces_only_an_earlier_predictions_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict RUN IMG --out RUN/last.pt`` (or history.json, config.json, another
    checkpoint such as an ensemble's member) replaced a file predict does not read, and with
    a writable install ``--model pcam-cnn --out …/pretrained/pcam-cnn.safetensors`` the
    shipped weights. Only an earlier predictions CSV (predict's header, an older version's
    shorter one too) or an empty file is replaced; anything else there, a pipe included, is
    one error line naming --out, exit 1, nothing written."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    ckpt = Path(shutil.copy(tiny_checkpoint(tmp_path), run / "best.pt"))
    member = Path(shutil.copy(ckpt, tmp_path / "member.pt"))
    (run / "history.json").write_text('[{"epoch": 1}]')
    (run / "config.json").write_text('{"model": "cnn"}')
    last = Path(shutil.copy(ckpt, run / "last.pt"))
    edited = tmp_path / "edited.csv"  # a CSV, but not one predict wrote
    edited.write_text("path,probability\na.png,0.5\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    img = tmp_path / "a.png"
    Image.fromarray(make_patches(1, seed=3)[0][0]).save(img)
    for out in (last, run / "history.json", run / "config.json", member, edited):
        kept = out.read_bytes()
        r = CliRunner().invoke(app, ["predict", str(run), str(img), "--out", str(out)])
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [
            f"error: {out}: exists and is not a predictions CSV (its first line is not "
            "predict's header); the CSV would replace it: choose another --out, or remove it "
            "first"
        ]
        assert out.read_bytes() == kept
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "--out", str(fifo)])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {fifo}: not a regular file (a pipe, socket or device); the CSV would "
        "replace it: choose another --out"
    ]
    assert fifo.is_fifo()
    assert not list(tmp_path.rglob("*_heatmaps"))
    weights = writable_shipped_model(tmp_path, monkeypatch)
    kept = weights.read_bytes()
    r = CliRunner().invoke(app, ["predict", "--model", "pcam-cnn", str(img), "--out",
                                 str(weights)])  # fmt: skip
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {weights}: is the checkpoint predict reads; the CSV would replace it: "
        "choose another --out"
    ]
    assert weights.read_bytes() == kept
    empty = tmp_path / "empty.csv"
    empty.touch()
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "--out", str(empty)])
    assert r.exit_code == 0, r.output
    assert empty.read_text().startswith(",".join(["path", "x", "y", "size"]))


def test_an_earlier_csv_saved_with_a_bom_is_replaced(tmp_path: Path) -> None:
    """An earlier predictions CSV opened and saved in Excel starts with a UTF-8 BOM, and was
    refused as 'not a predictions CSV' (its first line, BOM and all, was not the header). A
    BOM before predict's header is allowed: the CSV is replaced; a BOM before other columns
    is still refused."""
    from histomodels.predict import CSV_COLUMNS

    ckpt = tiny_checkpoint(tmp_path)
    img = tmp_path / "a.png"
    Image.fromarray(make_patches(1, seed=3)[0][0]).save(img)
    out, other = tmp_path / "excel.csv", tmp_path / "other.csv"
    out.write_bytes(b"\xef\xbb\xbf" + ",".join(CSV_COLUMNS).encode() + b"\r\nx.png,0\r\n")
    other.write_bytes(b"\xef\xbb\xbfpath,probability\r\nx.png,0.5\r\n")
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(img), "--no-heatmaps",
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith(",".join(CSV_COLUMNS) + "\n")
    assert str(img) in out.read_text()
    kept = other.read_bytes()
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(img), "--no-heatmaps",
                                 "--out", str(other)])  # fmt: skip
    assert r.exit_code == 1 and "is not a predictions CSV" in r.stderr, r.output
    assert other.read_bytes() == kept


def test_an_unreadable_file_at_out_is_said_to_be_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier predictions CSV that cannot be read (mode 000 in a writable folder) was
    refused as 'not a predictions CSV' (which it may well be): it is one line saying it
    cannot be read, exit 1, left as it was. (We run as root, so the open is made to fail.)"""
    from histomodels.predict import CSV_COLUMNS

    ckpt = tiny_checkpoint(tmp_path)
    img = tmp_path / "a.png"
    Image.fromarray(make_patches(1, seed=3)[0][0]).save(img)
    out = tmp_path / "earlier.csv"
    out.write_text(",".join(CSV_COLUMNS) + "\n")
    deny_opening(monkeypatch, out)
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(img), "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [f"error: {out}: permission denied"]
    assert out.read_text() == ",".join(CSV_COLUMNS) + "\n"


def test_the_csv_is_never_the_heatmap_folder_nor_a_heatmap(tmp_path: Path) -> None:
    """``--heatmaps hm --out hm/big.png`` wrote the CSV, then big.png's heatmap over it (the
    CSV lost, exit 0); ``--heatmaps hm2 --out hm2`` scored everything, then failed 'hm2: is a
    folder' and left an empty hm2/. Each is one error line naming --out before anything is
    read or written; a CSV in the heatmap folder under another name is written."""
    ckpt = tiny_checkpoint(tmp_path)
    big = tmp_path / "big.png"
    Image.fromarray(make_figure(2, 2, seed=4)).save(big)
    hm, hm2 = tmp_path / "hm", tmp_path / "hm2"
    cases = [
        (hm, hm / "big.png", "is where the heatmap of {big} is drawn; it would replace the CSV: "
         "choose another --out or --heatmaps"),
        (hm2, hm2, "is the heatmap folder, and the CSV a file: give --out a file outside it, "
         "or another --heatmaps"),
        (hm2 / "sub", hm2, f"would hold {hm2 / 'sub'}, and the CSV a file: give --out a file "
         "outside it, or another --heatmaps"),
    ]  # fmt: skip
    for heat, out, said in cases:
        args = ["predict", str(ckpt), str(big), "--heatmaps", str(heat), "--out", str(out)]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [f"error: {out}: {said.format(big=big)}"]
        assert not hm.exists() and not hm2.exists()
    out = hm / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(big), "--heatmaps", str(hm),
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("path,x,y,") and (hm / "big.png").is_file()


def test_clashing_heatmap_names_do_not_depend_on_the_inputs_order(tmp_path: Path) -> None:
    """d1/x/img.png and d2/x/img.png got x_img.png and x_img_2.png in the order given: the
    same images given the other way round swapped their heatmaps' names (a rerun drew each
    over the other's old one). The suffixes follow the inputs' paths."""
    from histomodels.predict import heatmap_targets

    heat = tmp_path / "h"
    d1, d2, d3 = (tmp_path / d / "x" / "img.png" for d in ("d1", "d2", "d3"))
    want = {d1: heat / "x_img.png", d2: heat / "x_img_2.png", d3: heat / "x_img_3.png"}
    for order in ([d1, d2, d3], [d3, d2, d1], [d2, d3, d1]):
        got = heatmap_targets(order, heat)
        assert got == want and list(got) == order  # still in the inputs' order
    # a relative spelling of the same file is named by where it is
    rel = Path(os.path.relpath(d2))
    assert heatmap_targets([rel, d1], heat) == {rel: heat / "x_img_2.png", d1: heat / "x_img.png"}


def test_an_interrupted_rerun_leaves_the_earlier_runs_heatmaps(tmp_path: Path, monkeypatch) -> None:
    """A rerun into the same CSV drew each heatmap over the earlier run's, and when it was
    interrupted (Ctrl-C, an error) removed the ones it had drawn: the earlier CSV stayed,
    its heatmaps were gone. Heatmaps are drawn aside and put in place with the CSV."""
    import matplotlib.figure

    from histomodels.predict import predict_paths

    ckpt = tiny_checkpoint(tmp_path)
    files = []
    for i in range(2):
        files.append(tmp_path / f"im{i}.png")
        Image.fromarray(make_figure(2, 2, seed=7 + i)).save(files[-1])
    out = tmp_path / "p.csv"
    predict_paths(ckpt, files, out)
    heat = tmp_path / "p_heatmaps"
    before = {name: (heat / name).read_bytes() for name in _heatmap_files(heat)}
    assert list(before) == ["im0.png", "im1.png"]
    csv_before = out.read_bytes()
    real, saved = matplotlib.figure.Figure.savefig, []

    def savefig(self, *args, **kwargs):  # the second heatmap: interrupted
        saved.append(1)
        if len(saved) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    with pytest.raises(KeyboardInterrupt):
        predict_paths(ckpt, files, out, stride=48)  # other heatmaps than before
    assert {name: (heat / name).read_bytes() for name in _heatmap_files(heat)} == before
    assert out.read_bytes() == csv_before
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    predict_paths(ckpt, files, out, stride=48)  # not interrupted: the new ones, nothing else
    assert _heatmap_files(heat) == ["im0.png", "im1.png"]
    assert all((heat / name).read_bytes() != old for name, old in before.items())


def test_a_folder_at_a_heatmaps_name_writes_nothing(tmp_path: Path) -> None:
    """Heatmaps drawn aside are renamed over their targets after the CSV is written: a
    folder at the second one's name then failed the rename, leaving the new CSV and the
    first heatmap behind an error line (review 3). It is refused as it is met, naming the
    target, before the CSV: nothing written."""
    ckpt = tiny_checkpoint(tmp_path)
    files = []
    for i in range(2):
        files.append(tmp_path / f"im{i}.png")
        Image.fromarray(make_figure(2, 2, seed=3 + i)).save(files[-1])
    heat, out = tmp_path / "heat", tmp_path / "p.csv"
    (heat / "im1.png").mkdir(parents=True)
    r = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, files), "--out", str(out),
                                 "--heatmaps", str(heat)])  # fmt: skip
    assert r.exit_code == 1
    assert (
        r.stderr.strip().splitlines()[-1] == f"error: {heat / 'im1.png'}: is a folder, not a file"
    )
    assert not out.exists() and sorted(p.name for p in heat.iterdir()) == ["im1.png"]


def test_a_run_removes_only_heatmaps_predict_drew_for_the_same_csv(tmp_path: Path) -> None:
    """The stale-heatmap clean-up unlinked every input's target name this run drew nothing
    at: a user's own small.png in --heatmaps (its input one patch) was deleted, as was the
    heatmap another CSV's run had drawn into a shared folder, and a folder at that name made
    the run exit 1 after writing its CSV. Only a PNG whose text chunk names this CSV goes."""
    ckpt = tiny_checkpoint(tmp_path)
    heat = tmp_path / "heat"
    heat.mkdir()
    small, big = tmp_path / "in" / "small.png", tmp_path / "in" / "big.png"
    small.parent.mkdir()
    Image.fromarray(make_figure(1, 1, seed=1)).save(small)  # one patch: no heatmap
    Image.fromarray(make_figure(2, 2, seed=2)).save(big)
    mine = heat / "small.png"
    Image.fromarray(make_figure(1, 1, seed=9)).save(mine)  # the user's own file
    kept = mine.read_bytes()

    def predict(out: str, *inputs: Path) -> None:
        r = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, inputs), "--heatmaps",
                                     str(heat), "--out", str(tmp_path / out)])  # fmt: skip
        assert r.exit_code == 0, r.output

    predict("p1.csv", small, big)
    assert mine.read_bytes() == kept and (heat / "big.png").is_file()
    Image.fromarray(make_figure(1, 1, seed=3)).save(big)  # now one patch: p2 draws nothing
    predict("p2.csv", small, big)
    assert mine.read_bytes() == kept and (heat / "big.png").is_file()  # p1's heatmap
    predict("p1.csv", small, big)  # p1's own earlier heatmap of big goes
    assert mine.read_bytes() == kept and not (heat / "big.png").exists()
    mine.unlink()
    mine.mkdir()
    predict("p1.csv", small, big)
    assert mine.is_dir()


def test_a_checkpoint_at_a_huge_input_size_is_scored_in_batches_under_the_pixel_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint declaring input_size 4096 (the largest a checkpoint may) made predict
    and eval build batches of --batch-size images at that size: 256 of them, a 51 GB
    float32 input before the network's own activations. A batch now holds at most 2**24
    pixels as the network sees them (batch_size the upper bound), with the same scores; a
    model that resizes its input itself (an ensemble member at 1024 px) counts at the size
    it resizes to."""
    from histomodels.checkpoint import make_checkpoint, save_checkpoint
    from histomodels.ensemble import build_ensemble
    from histomodels.inference import Predictor
    from histomodels.models import create_model

    torch.manual_seed(0)
    tiny = {"depth": 1, "blocks": 1, "width": 2, "dropout": 0.0}
    net = create_model("cnn", **tiny).eval()
    ckpt = save_checkpoint(tmp_path / "big.pt", make_checkpoint(net, "cnn", tiny, input_size=1024))
    pred = Predictor.load(ckpt, device="cpu")
    seen: list[int] = []
    pred.model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (20, 1024, 1024, 3), dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="histomodels.inference"):
        got = pred.logits(patches, batch_size=256)
        cap = (1 << 24) // (1024 * 1024)  # 16
        assert seen == [cap, 20 - cap]
        pred.logits(patches[:17], batch_size=256)  # said once, not once per call (file)
    said = [r.getMessage() for r in caplog.records if "inference in batches" in r.getMessage()]
    assert said == [
        "inference in batches of at most 16 image(s): the model sees each at 1024x1024 px, "
        "and a batch holds at most 16777216 pixels"
    ]
    seen.clear()
    one_by_one = [pred.logits(patches[i : i + 1], batch_size=1)[0] for i in range(20)]
    np.testing.assert_allclose(got, one_by_one, rtol=1e-5, atol=1e-5)

    from histomodels.inference import MAX_BATCH_PIXELS, batch_limit, pixels_seen

    assert MAX_BATCH_PIXELS == 1 << 24
    assert batch_limit(pred.model, 4096, 4096, 256) == 1  # the 51 GB batch: one image
    assert batch_limit(pred.model, 96, 96, 256) == 256  # PCam patches: as asked
    # an ensemble member resizing 96 px patches to 1024 px counts at 1024 px
    small = save_checkpoint(tmp_path / "small.pt", make_checkpoint(net, "cnn", tiny))
    ens_path = save_checkpoint(tmp_path / "ens.pt", build_ensemble([small, ckpt]))
    ens_pred = Predictor.load(ens_path, device="cpu")
    assert pixels_seen(ens_pred.model, 96, 96) == 1024 * 1024
    assert batch_limit(ens_pred.model, 96, 96, 256) == cap


def test_tiles_too_small_at_the_scale_share_one_line_that_points_to_eval(tmp_path: Path) -> None:
    """256 px tiles at --scale 0.25 (64 px, under one 96 px patch) gave one line per tile,
    89 for the Camelyon16 folder. Several such files share one line now, where the first
    stood, with how many and one example, pointing to eval --data --scale, which scores
    such tiles whole, when it would (each at least 32 px there, a model that does not
    enlarge its input itself). Other problems keep a line each. A single such file's line
    points there too (it did not)."""
    ckpt = tiny_checkpoint(tmp_path)
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i in range(3):
        Image.fromarray(make_figure(3, 3, seed=30 + i)[:256, :256]).save(tiles / f"t{i}.png")
    out = tmp_path / "p.csv"
    args = ["predict", str(ckpt), "--scale", "0.25", "--no-heatmaps", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, str(tiles)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        f"error: 3 of 3 file(s) are smaller than one 96px patch at scale 0.25, e.g. "
        f"{tiles / 't0.png'}: 256x256 at scale 0.25 is 64x64; predict cuts images into 96px "
        "patches: to score such tiles whole (labelled, one folder per class) use eval --data "
        "FOLDER --scale 0.25"
    ]
    assert not out.exists()
    # one such file: its own line, with the same pointer (it had none)
    r = CliRunner().invoke(app, [*args, str(tiles / "t0.png")])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        f"error: {tiles / 't0.png'}: 256x256 at scale 0.25 is 64x64, smaller than one 96px "
        "patch; predict cuts images into 96px patches: to score such tiles whole (labelled, "
        "one folder per class) use eval --data FOLDER --scale 0.25"
    ]
    # among files that are scored: a warning, exit 3; an unreadable file keeps its own line
    big = tmp_path / "big.png"
    Image.fromarray(make_figure(8, 8, seed=3)).save(big)  # 768 px: 192 px at 0.25
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    r = CliRunner().invoke(app, [*args, str(bad), str(tiles), str(big)])
    assert r.exit_code == 3, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"warning: {bad}: cannot read image"), lines
    assert lines[1].startswith("warning: 3 of 5 file(s) are smaller than one 96px patch"), lines
    assert [row["path"] for row in _rows(out)] == [str(big)] * 4
    # under 32 px at the scale (PCam's label region) eval refuses them too: no pointer
    r = CliRunner().invoke(app, [*args[:3], "0.1", *args[4:], str(tiles)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        f"error: 3 of 3 file(s) are smaller than one 96px patch at scale 0.1, e.g. "
        f"{tiles / 't0.png'}: 256x256 at scale 0.1 is 26x26"
    ]
    # small files that come out at 2 sizes at the scale: eval refuses such a folder
    # ("images come out at 2 sizes"), so no pointer to it
    Image.fromarray(make_figure(3, 3, seed=40)).save(tiles / "t3.png")  # 288 px: 72x72
    r = CliRunner().invoke(app, [*args, str(tiles)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        f"error: 4 of 4 file(s) are smaller than one 96px patch at scale 0.25, e.g. "
        f"{tiles / 't0.png'}: 256x256 at scale 0.25 is 64x64"
    ]


def test_oblong_tiles_too_small_point_to_eval_and_strips_do_not(tmp_path: Path) -> None:
    """The pointer to eval was given only when no side was longer than a patch, but eval
    cuts a longer side to its central patch: near-square tiles it scores (100x90, a 512x300
    tile at --scale 0.25, 128x75) lost it. A tile (no side more than twice the other) gets
    it, a strip does not; eval scores that folder, every tile at 96x75."""
    ckpt = tiny_checkpoint(tmp_path)
    tiles = tmp_path / "tiles"
    for i, cls in enumerate(["normal", "tumor"]):
        (tiles / cls).mkdir(parents=True)
        Image.fromarray(make_figure(4, 6, seed=50 + i)[:300, :512]).save(tiles / cls / "t.png")
    out = tmp_path / "p.csv"
    args = ["predict", str(ckpt), "--no-heatmaps", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--scale", "0.25", str(tiles)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        f"error: 2 of 2 file(s) are smaller than one 96px patch at scale 0.25, e.g. "
        f"{tiles / 'normal' / 't.png'}: 512x300 at scale 0.25 is 128x75; predict cuts images "
        "into 96px patches: to score such tiles whole (labelled, one folder per class) use "
        "eval --data FOLDER --scale 0.25"
    ]
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--data", str(tiles), "--scale", "0.25",
                                 "--bootstrap", "0", "--out", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["scored_px"] == [96, 75], metrics
    one = tmp_path / "near_square.png"
    Image.fromarray(make_figure(2, 2, seed=5)[:90, :100]).save(one)
    r = CliRunner().invoke(app, [*args, str(one)])
    assert r.exit_code == 1 and r.stderr == (
        f"error: {one}: 100x90 is smaller than one 96px patch; predict cuts images into 96px "
        "patches: to score such tiles whole (labelled, one folder per class) use eval --data "
        "FOLDER --scale 1\n"
    ), r.stderr
    strip = tmp_path / "strip.png"
    Image.fromarray(make_figure(4, 4, seed=6)[:40, :300]).save(strip)  # 300x40: a strip
    r = CliRunner().invoke(app, [*args, str(strip)])
    assert r.exit_code == 1 and r.stderr == (
        f"error: {strip}: 300x40 is smaller than one 96px patch\n"
    ), r.stderr


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_batch_size_help_says_it_is_an_upper_bound(command: str) -> None:
    """--batch-size said "Patches per inference batch."; a batch holds at most 2**24 pixels
    as the network sees them, so the help says it is the most, not always what runs."""
    import re

    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(re.sub(r"[│|]", " ", r.output).split())
    assert "Most patches per inference batch (fewer where a batch would pass 2**24 pixels" in text


def test_cli_predict_threads_sets_torchs_intra_op_threads(tmp_path: Path) -> None:
    """predict had no --threads (only train, finetune and tune did): on a shared machine
    only OMP_NUM_THREADS limited it. ``--threads N`` now sets torch's threads, as train's
    does."""
    ckpt = tiny_checkpoint(tmp_path)
    patch = tmp_path / "p.png"
    Image.fromarray(make_patches(1, seed=2)[0][0]).save(patch)
    out = tmp_path / "pred.csv"
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2  # another count than the one it had
    try:
        r = CliRunner().invoke(app, ["predict", str(ckpt), str(patch), "--out", str(out),
                                     "--threads", str(want)])  # fmt: skip
        assert r.exit_code == 0 and r.exception is None, r.output
        assert torch.get_num_threads() == want
        assert len(_rows(out)) == 1
    finally:
        torch.set_num_threads(before)


def test_an_input_under_an_unknown_home_or_with_a_name_too_long_is_one_line(
    tmp_path: Path,
) -> None:
    """``predict CKPT '~nosuchuser/x.png'`` was a RuntimeError traceback and a 300-byte
    image name an OSError one (the up-front check's expanduser() and exists()); an
    unknown user's ``~`` is a name now, as in bash: not found (named ``./~no_such…``: a
    name in the working folder, not a home)."""
    ckpt = tiny_checkpoint(tmp_path)
    long_name = str(tmp_path / ("a" * 300 + ".png"))
    for given, problem in (("~no_such_user_here/x.png", "no such file or folder"),
                           (long_name, "file name too long")):  # fmt: skip
        r = CliRunner().invoke(app, ["predict", str(ckpt), given, "--out",
                                     str(tmp_path / "p.csv")])  # fmt: skip
        assert r.exit_code == 1, r.output
        shown = f"./{given}" if given.startswith("~") else given
        assert r.stderr.lower().startswith(f"error: {shown}: {problem}".lower()), r.stderr
        assert r.stderr.count("\n") == 1 and not (tmp_path / "p.csv").exists()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # there, leading nowhere: not missing
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(tmp_path / "loop"), "--out",
                                 str(tmp_path / "p.csv")])  # fmt: skip
    assert r.stderr == f"error: {tmp_path / 'loop'}: too many levels of symbolic links\n"


def _header_liar(path: Path, said: tuple[int, int], rgb: np.ndarray) -> None:
    """A file of the test's own Pillow format (what a third-party plugin or a lenient decoder
    may do): its header says ``said``, its pixels decode to ``rgb``'s size."""
    import io
    import struct

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    path.write_bytes(b"LIAR" + struct.pack("<II", *said) + buf.getvalue())


def test_a_heatmap_is_judged_as_decoded_not_as_the_header_says(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Whether an input gets a heatmap, and so whether the file at its heatmap's name is
    judged (:func:`test_a_heatmap_replaces_only_a_heatmap_predict_drew`), went by its
    header: a file whose header says one patch but whose pixels decode to four drew its
    heatmap over the user's own PNG there. It is judged again as decoded: one error line,
    the PNG and everything else as they were."""
    import io
    import struct

    from PIL import ImageFile

    class Liar(ImageFile.ImageFile):
        format, format_description = "LIAR", "header and pixels disagree"

        def _open(self) -> None:
            assert self.fp is not None
            self._size = struct.unpack("<II", self.fp.read(12)[4:])
            self._mode = "RGB"
            self._pixels = self.fp.read()

        def load(self):  # type: ignore[override]
            if self._im is None:
                with Image.open(io.BytesIO(self._pixels)) as png:
                    self.im = png.convert("RGB").im
                self._size = self.im.size
            return Image.Image.load(self)

    # registered in Pillow's own lists, every plugin loaded first (Image.init): a new ID list
    # swapped in before Pillow's preinit got the basic formats, lost with it at teardown (no
    # JPEG/PNG/GIF/BMP opened in this process after); removed again in place
    Image.init()
    Image.register_open("LIAR", Liar, lambda prefix: prefix[:4] == b"LIAR")
    request.addfinalizer(lambda: (Image.ID.remove("LIAR"), Image.OPEN.pop("LIAR")))
    ckpt = tiny_checkpoint(tmp_path)
    liar = tmp_path / "liar.png"
    _header_liar(liar, (96, 96), make_figure(2, 2, seed=3))  # decodes to 192x192: 4 patches
    with Image.open(liar) as im:
        assert im.size == (96, 96)
        im.load()
        assert im.size == (192, 192)
    out, heat = tmp_path / "pred.csv", tmp_path / "pred_heatmaps"
    heat.mkdir()
    mine = heat / "liar.png"
    Image.fromarray(make_figure(1, 1, seed=9)).save(mine)
    kept = mine.read_bytes()
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(liar), "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines()[-1].startswith(
        f"error: {mine}: exists and is not a heatmap predict drew"
    ), r.stderr
    assert mine.read_bytes() == kept and not out.exists()
    assert _heatmap_files(heat) == ["liar.png"]
