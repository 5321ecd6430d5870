"""``Manifest.images``: a dict of image rows by id, indexed by record as well.

Stages ask "the images of this record" once per record; a plain dict answers that by
scanning every image of the run, which makes a stage quadratic in the run's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any


class ImageTable(MutableMapping[str, Any]):
    """``Manifest.images``: a dict of images by id that also indexes them by record, so
    :meth:`Manifest.images_of` costs the record's images, not the whole run's."""

    def __init__(self, items: Iterable[tuple[str, Any]] = ()) -> None:
        self._rows: dict[str, Any] = {}
        self._of: dict[str, dict[str, None]] = {}
        for key, img in items:
            self[key] = img

    def __getitem__(self, key: str) -> Any:
        return self._rows[key]

    def __setitem__(self, key: str, img: Any) -> None:
        if key in self._rows:
            del self[key]
        self._rows[key] = img
        self._of.setdefault(img.record_id, {})[key] = None

    def __delitem__(self, key: str) -> None:
        img = self._rows.pop(key)
        ids = self._of.get(img.record_id, {})
        ids.pop(key, None)
        if not ids:
            self._of.pop(img.record_id, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"ImageTable({len(self)} images)"

    def of(self, record_id: str) -> list[Any]:
        return [self._rows[k] for k in self._of.get(record_id, ())]
