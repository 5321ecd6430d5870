"""Build the hostile-input corpus at test time (nothing binary is committed).

Each builder writes one file (or folder) that attacks one parser and returns its path.
:func:`build_corpus` writes them all into a folder; ``python tests/abuse/make_corpus.py DIR``
does the same from the command line so a person can look at the files.

The PDFs are written by hand (:func:`raw_pdf`) so every byte is under our control:
PyMuPDF would repair or normalise exactly what the attack relies on.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import zlib
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Raw PDF writing
# ---------------------------------------------------------------------------------------------


def raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF whose object ``i + 1`` is ``objects[i]`` (object 1 is the catalog), valid xref."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % num + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def stream(dictionary: bytes, data: bytes) -> bytes:
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def _page_tree(page_resources: bytes, contents: bytes = b"") -> list[bytes]:
    """Objects 1-4: catalog, pages, one page, its content stream."""
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 300] /Resources "
        + page_resources
        + b" /Contents 4 0 R >>",
        stream(b"", contents),
    ]


def nested_forms_pdf(depth: int = 8, links: int = 10) -> bytes:
    """Form XObjects nested ``depth`` deep, each naming the next ``links`` times.

    An object walk that does not remember visited objects does ``links ** depth`` work
    (10**8 here) for a file of under 2 KB; the bottom form holds one real image.
    """
    first = 5  # object number of the level-0 form
    image = first + depth

    def xobjects(target: int) -> bytes:
        return (
            b"<< /XObject << "
            + b" ".join(b"/F%d %d 0 R" % (i, target) for i in range(links))
            + b" >> >>"
        )

    objects = _page_tree(xobjects(first))
    for level in range(depth):
        child = first + level + 1
        res = xobjects(child) if level < depth - 1 else b"<< /XObject << /Im0 %d 0 R >> >>" % image
        objects.append(
            stream(b"/Type /XObject /Subtype /Form /BBox [0 0 1 1] /Resources " + res, b"")
        )
    pixels = zlib.compress(np.full((40, 40, 3), 200, np.uint8).tobytes())
    objects.append(
        stream(
            b"/Type /XObject /Subtype /Image /Width 40 /Height 40 /ColorSpace /DeviceRGB "
            b"/BitsPerComponent 8 /Filter /FlateDecode",
            pixels,
        )
    )
    return raw_pdf(objects)


def _zeros_flate(n: int) -> bytes:
    """``n`` zero bytes, Flate-compressed in chunks (never ``n`` bytes in memory)."""
    comp = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = []
    for _ in range(n // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(bytes(n % len(chunk))))
    parts.append(comp.flush())
    return b"".join(parts)


def mask_bomb_pdf(side: int = 9000, key: bytes = b"/SMask", stored: int | None = None) -> bytes:
    """A 100x100 RGB image whose soft mask (or ``/Mask``) declares ``side`` x ``side`` pixels.

    ``stored``: bytes of mask data actually written (default all; a decoder pads the rest).
    """
    pixels = zlib.compress(np.full((100, 100, 3), 120, np.uint8).tobytes())
    image = stream(
        b"/Type /XObject /Subtype /Image /Width 100 /Height 100 /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Filter /FlateDecode " + key + b" 6 0 R",
        pixels,
    )
    mask = stream(
        b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode" % (side, side),
        _zeros_flate(side * side if stored is None else stored),
    )
    objects = _page_tree(b"<< /XObject << /Im0 5 0 R >> >>", b"q 200 0 0 200 50 50 cm /Im0 Do Q")
    return raw_pdf([*objects, image, mask])


def image_pdf(n_pages: int = 3, side: int = 64, seed: int = 0) -> bytes:
    """A valid PDF with one distinct random RGB image per page (incompressible pixels)."""
    rng = np.random.default_rng(seed)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for _ in range(n_pages):
        page, content, img = len(objects) + 1, len(objects) + 2, len(objects) + 3
        kids.append(page)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 300] "
            b"/Resources << /XObject << /Im0 %d 0 R >> >> /Contents %d 0 R >>" % (img, content)
        )
        objects.append(stream(b"", b"q 200 0 0 200 50 50 cm /Im0 Do Q"))
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8).tobytes()
        objects.append(
            stream(
                b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                b"/BitsPerComponent 8" % (side, side),
                pixels,
            )
        )
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        n_pages,
    )
    return raw_pdf(objects)


def reference_loop_pdf(length: int = 1) -> bytes:
    """One 64x64 image whose ``/Length`` is a reference into a ring of ``length`` objects,
    each only a reference to the next (``6 0 obj 6 0 R endobj`` for 1): pdfminer follows it
    for ever; MuPDF stops after a few and reads the stream anyway."""
    pixels = np.random.default_rng(0).integers(0, 256, 64 * 64 * 3, dtype=np.uint8).tobytes()
    ring = [b"%d 0 R" % (6 + (i + 1) % length) for i in range(length)]
    image = (
        b"<< /Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Length 6 0 R >>\nstream\n" + pixels + b"\nendstream"
    )
    draw = b"q 64 0 0 64 0 0 cm /Im1 Do Q"
    return raw_pdf([*_page_tree(b"<< /XObject << /Im1 5 0 R >> >>", draw), image, *ring])


def half_pdf_with_eof() -> bytes:
    """The first half of a valid PDF with ``%%EOF`` appended (passes a naive tail check)."""
    data = image_pdf()
    return data[: len(data) // 2] + b"\n%%EOF\n"


# ---------------------------------------------------------------------------------------------
# HDF5 and gzip
# ---------------------------------------------------------------------------------------------


def pcam_h5(
    path: Path,
    n: int = 8,
    side: int = 96,
    labels: np.ndarray | None = None,
    y_dtype: str = "uint8",
) -> Path:
    """A one-file PCam layout (``x`` + ``y``)."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["x"] = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        f["y"] = (np.arange(n) % 2 if labels is None else labels).astype(y_dtype)
    return path


def h5_declaring(path: Path, n: int = 200_000) -> Path:
    """A tiny file whose ``x`` declares ``n`` 96x96x3 patches (chunked, almost nothing stored)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8, chunks=(1, 96, 96, 3))
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8))
    return path


def h5_external(path: Path, target: Path) -> Path:
    """``x`` stored externally in ``target`` (any local file), ``y`` inside."""
    import h5py

    n = max(1, target.stat().st_size // (96 * 96 * 3))
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "x", shape=(n, 96, 96, 3), dtype=np.uint8, external=[(str(target), 0, n * 96 * 96 * 3)]
        )
        f["y"] = np.zeros(n, np.uint8)
    return path


def h5_external_link(path: Path, target: Path) -> Path:
    """``x`` is an external link into another HDF5 file."""
    import h5py

    pcam_h5(target)
    with h5py.File(path, "w") as f:
        f["x"] = h5py.ExternalLink(str(target), "/x")
        f["y"] = np.zeros(8, np.uint8)
    return path


def h5_groups(path: Path) -> Path:
    """``x`` and ``y`` are groups, not datasets."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("x")
        f.create_group("y")
    return path


def corrupt_gzip(path: Path) -> Path:
    """A ``.h5.gz`` whose deflate stream is invalid 100 bytes in (``zlib.error``, not CRC)."""
    tmp = path.with_name(path.name + ".src.h5")
    pcam_h5(tmp)
    data = gzip.compress(tmp.read_bytes())
    tmp.unlink()
    path.write_bytes(data[:100] + b"\xff" * 16 + data[116:])
    return path


def gzip_bomb(path: Path, size: int = 300_000_000) -> Path:
    """A small ``.gz`` that expands to ``size`` zero bytes (written in chunks)."""
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        for _ in range(size // len(chunk)):
            fh.write(chunk)
        fh.write(bytes(size % len(chunk)))
    return path


# ---------------------------------------------------------------------------------------------
# Checkpoints and manifests
# ---------------------------------------------------------------------------------------------


def checkpoint_dict(**overrides: object) -> dict:
    """A valid histomodels checkpoint dict for the tiny default CNN, with overrides."""
    from histomodels.checkpoint import make_checkpoint
    from histomodels.models import create_model

    model = create_model("cnn")
    ckpt = make_checkpoint(model, "cnn", {})
    for key, value in overrides.items():
        if value is _DELETE:
            ckpt.pop(key, None)
        else:
            ckpt[key] = value
    return ckpt


_DELETE = object()
DELETE = _DELETE


def manifest_lines(rows: list[dict]) -> str:
    header = {"kind": "header", "schema": "histofetch.manifest", "version": 1, "query": None}
    return "\n".join(json.dumps(r) for r in [header, *rows]) + "\n"


# ---------------------------------------------------------------------------------------------
# The whole corpus
# ---------------------------------------------------------------------------------------------


def build_pdfs(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "nested_forms.pdf": nested_forms_pdf(),
        "smask_bomb.pdf": mask_bomb_pdf(side=30000, stored=1 << 20),
        "mask_bomb.pdf": mask_bomb_pdf(side=30000, key=b"/Mask", stored=1 << 20),
        "half_with_eof.pdf": half_pdf_with_eof(),
        "empty.pdf": b"",
        "html.pdf": b"<html><body>Access denied</body></html>",
    }
    paths = {}
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    return paths


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but holds almost no data."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build_data(out: Path) -> dict[str, Path]:
    """Hostile datasets (HDF5, gzip, CSV) plus one good one, ``good.h5``."""
    import h5py

    out.mkdir(parents=True, exist_ok=True)
    p: dict[str, Path] = {"good.h5": pcam_h5(out / "good.h5", n=16)}
    p["labels_half.h5"] = pcam_h5(
        out / "labels_half.h5", n=4, labels=np.array([0, 0.5, 0.9, 1]), y_dtype="f4"
    )
    p["labels_bytes.h5"] = pcam_h5(
        out / "labels_bytes.h5", n=2, labels=np.array([b"x", b"y"]), y_dtype="S1"
    )
    p["patch64.h5"] = pcam_h5(out / "patch64.h5", n=4, side=64)
    p["patch1.h5"] = pcam_h5(out / "patch1.h5", n=4, side=1)
    p["empty.h5"] = pcam_h5(out / "empty.h5", n=0)
    p["groups.h5"] = h5_groups(out / "groups.h5")
    secret = out / "secret.bin"
    secret.write_bytes(b"private bytes of another local file " * 2000)
    p["external.h5"] = h5_external(out / "external.h5", secret)
    p["extlink.h5"] = h5_external_link(out / "extlink.h5", out / "linked_target.h5")
    p["declares_200k.h5"] = h5_declaring(out / "declares_200k.h5")
    p["not_hdf5.h5"] = out / "not_hdf5.h5"
    p["not_hdf5.h5"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    for kind in ("corrupt", "bomb"):
        folder = out / f"gz_{kind}"
        folder.mkdir()
        pcam_h5(folder / "s_y.h5")
        x = folder / "s_x.h5.gz"
        corrupt_gzip(x) if kind == "corrupt" else gzip_bomb(x, size=200_000_000)
        p[f"gz_{kind}"] = x
    for name, body in (
        ("kaggle_latin1", b"id,label\na,0\n# caf\xe9\n"),
        ("kaggle_half", b"id,label\na,0.5\n"),
    ):
        folder = out / name
        (folder / "train").mkdir(parents=True)
        from PIL import Image

        Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(folder / "train" / "a.tif")
        (folder / "train_labels.csv").write_bytes(body)
        p[name] = folder / "train_labels.csv"
    forged = out / "x\nerror: forged.h5"
    forged.write_bytes(b"not hdf5")
    p["newline_name"] = forged
    with h5py.File(out / "enc_half.h5", "w") as f:
        enc = f.create_dataset("encoded", (2,), dtype=h5py.vlen_dtype(np.uint8))
        enc[0] = enc[1] = np.frombuffer(png_declaring(96, 96), np.uint8)
        f["y"] = np.array([0.5, 1.0])
    p["enc_half.h5"] = out / "enc_half.h5"
    return p


def build_checkpoints(out: Path) -> dict[str, Path]:
    """A good checkpoint and malformed ones (schema breaks, hostile model_config, pickles)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    variants: dict[str, dict] = {
        "good.pt": {},
        "no_model.pt": {"model": DELETE},
        "model_int.pt": {"model": 3},
        "config_list.pt": {"model_config": [1]},
        "config_weights.pt": {"model_config": {"weights": "/etc/passwd"}},
        "timm_overlay.pt": {
            "model": "timm/resnet18",
            "model_config": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}},
        },
        "no_state_dict.pt": {"state_dict": DELETE},
        "norm_list.pt": {"normalization": [0.5, 0.5]},
        "norm_strings.pt": {"normalization": {"mean": ["a"] * 3, "std": [1] * 3}},
        "version_2.pt": {"version": 2},
    }
    paths = {}
    for name, overrides in variants.items():
        torch.save(checkpoint_dict(**overrides), out / name)
        paths[name] = out / name
    (out / "truncated.pt").write_bytes((out / "good.pt").read_bytes()[:5000])
    paths["truncated.pt"] = out / "truncated.pt"
    return paths


def build_images(out: Path) -> dict[str, Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = {"bomb.png": out / "bomb.png", "tile.png": out / "tile.png"}
    paths["bomb.png"].write_bytes(png_declaring(100_000, 100_000))
    Image.fromarray(np.full((600, 600, 3), 128, np.uint8)).save(paths["tile.png"])
    paths["text.png"] = out / "text.png"
    paths["text.png"].write_text("not an image")
    return paths


def build_runs(out: Path) -> dict[str, Path]:
    """Training-run folders (for ``report``) and histofetch run folders with bad manifests."""
    record = {"kind": "record", "id": "r1", "stage": "filtered"}
    image = {
        "kind": "image",
        "id": "r1/a",
        "record_id": "r1",
        "path": "images/a.png",
        "sha256": "0" * 64,
        "width": 96,
        "height": 96,
    }
    runs = {
        "bad_stage": [{**record, "stage": "exploded"}],
        "list_label": [record, {**image, "label": ["metastasis"]}],
        "int_path": [record, {**image, "path": 7}],
        "kept_string": [record, {**image, "kept": "false"}],
    }
    paths = {}
    for name, rows in runs.items():
        (out / name).mkdir(parents=True)
        (out / name / "manifest.jsonl").write_text(manifest_lines(rows))
        paths[name] = out / name
    (out / "newer").mkdir()
    from histocore.manifest import SCHEMA_VERSION

    header = {"kind": "header", "schema": "histofetch.manifest", "version": SCHEMA_VERSION + 1}
    (out / "newer" / "manifest.jsonl").write_text(json.dumps(header) + "\n")
    paths["newer"] = out / "newer"
    for name, history in (
        ("history_dict", {"epoch": 1}),
        ("history_str", [{"epoch": 1, "train_loss": "x"}]),
    ):
        (out / name).mkdir()
        (out / name / "history.json").write_text(json.dumps(history))
        paths[name] = out / name
    return paths


def build_corpus(root: Path) -> dict[str, Path]:
    """Every hostile input, by name (``pdf/…``, ``data/…``, ``ckpt/…``, ``img/…``, ``run/…``)."""
    corpus: dict[str, Path] = {}
    for prefix, build in (
        ("pdf", build_pdfs),
        ("data", build_data),
        ("ckpt", build_checkpoints),
        ("img", build_images),
        ("run", build_runs),
    ):
        for name, path in build(root / prefix).items():
            corpus[f"{prefix}/{name}"] = path
    return corpus


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_corpus.py DIR", file=sys.stderr)
        return 2
    for name, path in build_corpus(Path(argv[0])).items():
        print(f"{name}: {str(path)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
