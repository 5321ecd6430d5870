"""``ImageTable``: ``Manifest.images`` as a dict that also indexes images by record."""

from __future__ import annotations

import pytest

from histocore.image_table import ImageTable
from histocore.manifest import Image


def _img(image_id: str, record_id: str) -> Image:
    return Image(
        id=image_id,
        record_id=record_id,
        path=f"images/{image_id}.png",
        sha256="0" * 64,
        width=10,
        height=10,
    )


def test_images_of_a_record_in_insertion_order() -> None:
    table = ImageTable([(i.id, i) for i in (_img("a1", "A"), _img("b1", "B"), _img("a2", "A"))])
    assert [i.id for i in table.of("A")] == ["a1", "a2"]
    assert [i.id for i in table.of("B")] == ["b1"]
    assert table.of("missing") == []
    assert list(table) == ["a1", "b1", "a2"] and len(table) == 3


def test_replacing_an_image_moves_it_to_its_new_record() -> None:
    table = ImageTable()
    table["x"] = _img("x", "A")
    table["x"] = _img("x", "B")
    assert table.of("A") == [] and [i.record_id for i in table.of("B")] == ["B"]
    assert len(table) == 1


def test_deleting_keeps_the_index_in_step() -> None:
    table = ImageTable([("a1", _img("a1", "A")), ("a2", _img("a2", "A"))])
    del table["a1"]
    assert [i.id for i in table.of("A")] == ["a2"]
    table.pop("a2")
    assert table.of("A") == [] and len(table) == 0 and repr(table) == "ImageTable(0 images)"
    with pytest.raises(KeyError):
        del table["a2"]
