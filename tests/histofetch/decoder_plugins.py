"""Test-only Pillow plugins that make chosen figure files kill or hang the process that
decodes them, and a ``filter --jobs 2`` run that uses them (worker processes load them
through a ``sitecustomize`` on their path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import PIL.Image
from pdf_factory import he_like

from histocore.manifest import Image, Manifest, Record

#: A file starting with this kills its decoder's process (a decoder that segfaults).
KILLS = b"KILLS-ITS-READER"
#: A file starting with this makes its decoder sleep for an hour (one that crawls).
HANGS = b"HANGS-ITS-READER"

PLUGINS = """import os
import time

from PIL import Image, ImageFile


class _KillsItsReader(ImageFile.ImageFile):
    format = "KILLER"

    def _open(self):
        os._exit(70)  # a decoder that segfaults: the process is gone, no exception


def _kills(head):  # a file made to kill, or any file on a machine whose decoders all crash
    if head[:3] == b"\\xff\\xd8\\xff" and "HISTOFETCH_TEST_JPEG_DECODER_CRASHES" in os.environ:
        return True  # a machine whose JPEG decoder alone crashes (a broken libjpeg)
    return head[:16] == b"KILLS-ITS-READER" or "HISTOFETCH_TEST_DECODERS_CRASH" in os.environ


class _HangsItsReader(ImageFile.ImageFile):
    format = "HANGER"

    def _open(self):
        time.sleep(3600)  # a decoder crawling through a pathological file


# before Pillow's own: tried first
Image.register_open("KILLER", _KillsItsReader, _kills)
Image.register_open("HANGER", _HangsItsReader, lambda head: head[:16] == b"HANGS-ITS-READER")
"""


def filter_run(
    tmp_path: Path,
    n: int,
    killers: set[int],
    fmt: str = "png",
    hangers: frozenset[int] = frozenset(),
) -> tuple[Path, list[str], dict[str, str]]:
    """A run of ``n`` extracted records, one figure each; the figures of ``killers`` kill
    the process that decodes them, those of ``hangers`` make it hang (:data:`PLUGINS`).
    Returns the run, the ``filter --jobs 2`` command line and the environment it needs
    (store closed)."""
    run = tmp_path / "run"
    with Manifest.load(run, create=True) as m:  # closed: no -wal/-shm left open
        for k in range(n):
            rid = f"pmid:{k}"
            m.add_record(Record(id=rid, stage="extracted"))
            rel = f"images/{k}.{fmt}"
            (run / "images").mkdir(parents=True, exist_ok=True)
            if k in killers or k in hangers:
                (run / rel).write_bytes((KILLS if k in killers else HANGS) + bytes(64))
            else:
                PIL.Image.fromarray(he_like(160, 160, seed=k)).save(run / rel)
            m.add_image(Image(id=f"{rid}/fig1", record_id=rid, path=rel, sha256="0", width=160,
                              height=160, caption="Figure 1. H&E of a lymph node."))  # fmt: skip
        m.save()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PLUGINS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), *sys.path])
    cmd = [sys.executable, "-m", "histofetch.cli", "filter", "--run", str(run), "--jobs", "2",
           "--no-sheet", "--no-panels"]  # fmt: skip
    return run, cmd, env
