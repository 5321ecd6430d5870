"""Class-per-folder image trees (``root/0``, ``root/1`` or ``root/normal``, ``root/tumor``).

A folder holding images directly (no class sub-folders) is read as unlabelled (label -1).
Unknown class-folder names are an error, not a silent skip: a typo would otherwise drop
a whole class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histomodels.data.base import DatasetError, KnownLabels
from histomodels.data.images import IMAGE_SUFFIXES, decode_image

#: Folder names read as each class (case-insensitive).
CLASS_NAMES = {
    0: (
        "0",
        "normal",
        "negative",
        "neg",
        "benign",
        "no_metastasis",
        "non-tumor",
        "nontumor",
        "non_tumor",
        "non-tumour",
        "non_tumour",
        "healthy",
    ),
    1: (
        "1",
        "tumor",
        "tumour",
        "positive",
        "pos",
        "metastasis",
        "metastatic",
        "cancer",
        "malignant",
    ),
}
_LOOKUP = {name: label for label, names in CLASS_NAMES.items() for name in names}


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(
        p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()
    )


class FolderDataset(KnownLabels):
    """Images under class folders; ids are paths relative to the root."""

    def __init__(self, root: Path, *, patch_size: int | None = 96) -> None:
        self.root = root
        self.source = f"folders:{root}"
        self.size = None if patch_size is None else (patch_size, patch_size)
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _images_in(p))
        files: list[Path] = []
        labels: list[int] = []
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if subdirs:
            unknown = [d.name for d in subdirs if d.name.lower() not in _LOOKUP]
            if unknown:
                raise DatasetError(
                    f"{root}: class folder(s) {unknown} not understood; use 0/1 or names like "
                    "normal/tumor (see histomodels.data.folders.CLASS_NAMES)"
                )
            if loose:
                raise DatasetError(
                    f"{root}: {loose[0].name} sits beside class folders; move it into one"
                )
            for d in subdirs:
                imgs = _images_in(d)
                files += imgs
                labels += [_LOOKUP[d.name.lower()]] * len(imgs)
        else:
            files = _images_in(root)
            labels = [-1] * len(files)
        if not files:
            raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.files = files
        self._labels = np.array(labels, dtype=np.int64)
        self._ids = [p.relative_to(root).as_posix() for p in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        path = self.files[index]
        return (
            decode_image(path, str(path), size=self.size),
            int(self._labels[index]),
            self._ids[index],
        )
