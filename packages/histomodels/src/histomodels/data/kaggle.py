"""The Kaggle "Histopathologic Cancer Detection" release: ``train_labels.csv`` + ``train/<id>.tif``.

The CSV is checked whole when the dataset is opened (header, 0/1 labels, duplicate ids,
a ``.tif`` for every id) so errors name the CSV line up front; images are decoded on demand.
The values a message quotes are cut and escaped (:func:`~histomodels.data.ids.shown_id`):
a cell may hold up to csv's 128 KB, and was echoed whole.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from histocore.io import RefusedFile, read_capped
from histomodels.data.base import MAX_LABELS_CSV_BYTES, DatasetError, KnownLabels
from histomodels.data.ids import id_problem, shown_id
from histomodels.data.images import decode_image

LABELS_CSV = "train_labels.csv"
#: The largest labels CSV read (Kaggle's has 220,025 rows, about 10 MB): the readers' cap.
MAX_LABELS_BYTES = MAX_LABELS_CSV_BYTES


class KaggleDataset(KnownLabels):
    """Kaggle folder reader. ``images`` defaults to ``<folder>/train``."""

    def __init__(
        self, folder: Path, *, images: Path | None = None, patch_size: int | None = 96
    ) -> None:
        self.folder = folder
        self.csv_path = folder / LABELS_CSV
        self.image_dir = images or folder / "train"
        self.source = f"kaggle:{folder}"
        self.size = None if patch_size is None else (patch_size, patch_size)
        if not self.image_dir.is_dir():
            raise DatasetError(
                f"{folder}: no image folder {self.image_dir.name}/ beside {LABELS_CSV}"
            )
        ids: list[str] = []
        labels: list[int] = []
        seen: dict[str, int] = {}
        try:  # utf-8-sig: a BOM written by Excel is not part of the 'id' header
            text = read_capped(self.csv_path, MAX_LABELS_BYTES).decode("utf-8-sig")
        except RefusedFile as exc:
            raise DatasetError(f"{self.csv_path}: {exc}, not a labels CSV") from None
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{self.csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["id", "label"]:
                got = (
                    "nothing" if header is None
                    else "a blank line" if not header  # it said "nothing", as of no line
                    else shown_id(",".join(header))
                )  # fmt: skip
                raise DatasetError(f"{self.csv_path}:1: expected header 'id,label', got {got}")
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                where = f"{self.csv_path}:{lineno}"
                if len(row) < 2:
                    raise DatasetError(f"{where}: expected 'id,label', got {shown_id(row[0])}")
                pid, label = row[0].strip(), row[1].strip()
                if (problem := id_problem(pid)) is not None:  # as an encoded .h5's patch_id
                    raise DatasetError(f"{where}: id {problem}")
                if label not in ("0", "1"):
                    raise DatasetError(
                        f"{where}: label {shown_id(label)} for id {shown_id(pid)} is not 0/1"
                    )
                if pid in seen:
                    raise DatasetError(f"{where}: id {shown_id(pid)} repeats line {seen[pid]}")
                seen[pid] = lineno
                ids.append(pid)
                labels.append(int(label))
        except csv.Error as exc:  # a field over csv's 128 KB limit
            raise DatasetError(
                f"{self.csv_path}:{reader.line_num}: unreadable CSV ({exc})"
            ) from None
        if not ids:
            raise DatasetError(f"{self.csv_path}: no rows")
        present = {p.stem for p in self.image_dir.glob("*.tif")}
        for pid in ids:
            if pid not in present:
                raise DatasetError(
                    f"{self.csv_path}:{seen[pid]}: id {shown_id(pid)} has no image "
                    f"(<id>.tif) in {self.image_dir}"
                )
        self._ids = ids
        self._labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        index = self._row(index)
        pid = self._ids[index]
        path = self.image_dir / f"{pid}.tif"
        return decode_image(path, str(path), size=self.size), int(self._labels[index]), pid
