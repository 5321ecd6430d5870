"""Safe reading of untrusted OA packages: hostile members are refused, never extracted."""

from __future__ import annotations

from pathlib import Path

import pytest
from ncbi_server import image_bytes, make_pdf, make_tgz

from histofetch.archive import (
    ArchiveError,
    ArchiveLimits,
    decode_image,
    figure_captions,
    pdfs_in,
    pick_figures,
    read_tar,
)

NXML = b"""<?xml version="1.0"?>
<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>
<fig id="F1"><label>Figure 1</label><caption><p>H&amp;E of a lymph node
 metastasis.</p></caption><graphic xlink:href="fig1"/></fig>
</body></article>"""


def test_good_package_is_read_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pdf = make_pdf()
    data = make_tgz(
        [
            ("PMC1", None, "dir"),
            ("PMC1/article.pdf", pdf, "file"),
            ("PMC1/fig1.jpg", image_bytes("JPEG", (40, 30), (200, 100, 180)), "file"),
            ("PMC1/fig1.gif", image_bytes("GIF", (10, 8), (200, 100, 180)), "file"),
            ("PMC1/article.nxml", NXML, "file"),
        ]
    )
    files = read_tar(data)
    assert set(files) == {"PMC1/article.pdf", "PMC1/fig1.jpg", "PMC1/fig1.gif", "PMC1/article.nxml"}
    assert files["PMC1/article.pdf"] == pdf
    assert list(tmp_path.iterdir()) == []  # nothing was written to disk
    assert pick_figures(list(files)) == ["PMC1/fig1.jpg"]  # the .gif thumbnail loses
    assert figure_captions(files) == {"fig1": "Figure 1 H&E of a lymph node metastasis."}
    assert pdfs_in({"a/mmc1_sup.pdf": b"", "a/main.pdf": b""}) == ["a/main.pdf", "a/mmc1_sup.pdf"]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("../evil.txt", b"x", "file"), "'..'"),
        (("PMC1/../../evil.txt", b"x", "file"), "'..'"),
        (("/etc/cron.d/evil", b"x", "file"), "absolute"),
        (("PMC1/link", b"/etc/passwd", "symlink"), "link"),
        (("PMC1/hard", b"PMC1/a.txt", "hardlink"), "link"),
        (("PMC1/dev", None, "chr"), "device"),
    ],
)
def test_hostile_members_reject_the_package(
    member: tuple[str, bytes | None, str], message: str, tmp_path: Path
) -> None:
    data = make_tgz([("PMC1/a.txt", b"fine", "file"), member])
    with pytest.raises(ArchiveError, match=message):
        read_tar(data)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_size_and_count_limits() -> None:
    data = make_tgz([("big.bin", b"0" * 5000, "file")])
    with pytest.raises(ArchiveError, match="too large"):
        read_tar(data, ArchiveLimits(max_member_bytes=1000))
    many = make_tgz([(f"f{i}.txt", b"x", "file") for i in range(12)])
    with pytest.raises(ArchiveError, match="too many members"):
        read_tar(many, ArchiveLimits(max_members=10))
    total = make_tgz([(f"f{i}.bin", b"0" * 800, "file") for i in range(5)])
    with pytest.raises(ArchiveError, match="unpacked size"):
        read_tar(total, ArchiveLimits(max_total_bytes=3000))


def test_corrupt_and_truncated_archives() -> None:
    with pytest.raises(ArchiveError, match="not a readable tar"):
        read_tar(b"<html>this is an error page</html>")
    data = make_tgz([("a.bin", bytes(range(256)) * 400, "file")])
    with pytest.raises(ArchiveError):
        read_tar(data[: len(data) // 2])


def test_image_pixel_limit_refuses_before_decoding() -> None:
    png = image_bytes("PNG", (100, 100), (1, 2, 3))
    with pytest.raises(ArchiveError, match="over the 5000 px limit"):
        decode_image(png, "fig.png", max_pixels=5000)
    assert decode_image(png, "fig.png", max_pixels=10_000).size == (100, 100)


def test_alpha_and_palette_figures_become_rgb_on_white() -> None:
    rgba = image_bytes("PNG", (4, 4), (255, 0, 0, 0), mode="RGBA")  # fully transparent red
    img = decode_image(rgba, "a.png", 10_000)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    grey = decode_image(image_bytes("PNG", (4, 4), 77, mode="L"), "g.png", 10_000)
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (77, 77, 77)
    with pytest.raises(ArchiveError, match="cannot be decoded"):
        decode_image(b"GIF89a-not-really", "x.gif", 10_000)
