"""Build small PDFs with PyMuPDF at test time, from images whose pixels the tests know.

Each helper returns the expected RGB array the extractor must produce, so extraction is
checked pixel-exact. Raw image XObjects (indexed, 16-bit, CMYK) are written by hand because
``insert_image`` would re-encode them as RGB.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pymupdf


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def he_like(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """Synthetic H&E-looking texture: an uneven pink eosin field with purple nuclei of
    varying size, shape and stain depth, slightly blurred like a scanned slide (the shipped
    classifier takes it for H&E, p ≈ 0.7–0.8; crude flat disks it does not)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    small = rng.random((max(2, h // 6), max(2, w // 6)))
    field = np.asarray(
        PIL.Image.fromarray((small * 255).astype(np.uint8)).resize(
            (w, h), PIL.Image.Resampling.BICUBIC
        )
    )
    img = np.empty((h, w, 3), np.float32)
    img[...] = np.array([236, 170, 205]) - (field[..., None] / 255.0) * np.array([30, 60, 40])
    for _ in range(max(8, h * w // 100)):  # dense: no row of it is near-uniform
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.uniform(2.5, 6), rng.uniform(2.5, 6)
        shade = rng.uniform(0.6, 1.0)
        # the nucleus lies within 6 px of its centre: test only that box (same pixels)
        box = np.s_[max(0, cy - 7) : cy + 8, max(0, cx - 7) : cx + 8]
        nucleus = ((yy[box] - cy) / ry) ** 2 + ((xx[box] - cx) / rx) ** 2 <= 1
        colour = np.array([95, 60, 150]) * shade + np.array([40, 20, 20]) * (1 - shade)
        img[box][nucleus] = colour
    img += rng.normal(0, 10, img.shape)
    blurred = PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        PIL.ImageFilter.GaussianBlur(0.7)
    )
    return np.asarray(blurred)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Expected result of the extractor's documented SMask rule (rgb·a + white·(1−a))."""
    a = alpha.astype(np.uint32)[..., None]
    return ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _xobject_dict(doc: pymupdf.Document, page: pymupdf.Page) -> tuple[int, str]:
    """(xref, key path) of the page's /XObject dictionary, following indirect objects."""
    holder, prefix = page.xref, "Resources"
    kind, value = doc.xref_get_key(holder, "Resources")
    if kind == "xref":
        holder, prefix = int(value.split()[0]), ""
    elif kind == "null":
        doc.xref_set_key(holder, "Resources", "<<>>")
    xo_key = f"{prefix}/XObject" if prefix else "XObject"
    kind, value = doc.xref_get_key(holder, xo_key)
    if kind == "xref":
        return int(value.split()[0]), ""
    if kind == "null":
        doc.xref_set_key(holder, xo_key, "<<>>")
    return holder, xo_key


def _draw_xobject(doc: pymupdf.Document, page: pymupdf.Page, xref: int, rect: pymupdf.Rect):
    """Paint image XObject ``xref`` into ``rect`` by appending to the page's content."""
    name = f"ImT{xref}"
    holder, key = _xobject_dict(doc, page)
    doc.xref_set_key(holder, f"{key}/{name}" if key else name, f"{xref} 0 R")
    h = page.rect.height  # PDF user space has y up; PyMuPDF rects have y down
    ops = (
        f"q {rect.width:.2f} 0 0 {rect.height:.2f} {rect.x0:.2f} {h - rect.y1:.2f} cm "
        f"/{name} Do Q\n"
    ).encode()
    contents = page.get_contents()
    if contents:
        cx = contents[-1]
        stream = doc.xref_stream(cx)
        assert stream is not None  # a page's contents xref is a stream
        doc.update_stream(cx, stream + b"\n" + ops)
    else:
        cx = doc.get_new_xref()
        doc.update_object(cx, "<<>>")
        doc.update_stream(cx, ops)
        doc.xref_set_key(page.xref, "Contents", f"{cx} 0 R")


def add_raw_image(
    doc: pymupdf.Document,
    page: pymupdf.Page,
    rect: pymupdf.Rect,
    width: int,
    height: int,
    colorspace: str,
    data: bytes,
    bpc: int = 8,
    smask: bytes | None = None,
) -> int:
    """A hand-made image XObject (Flate-compressed by PyMuPDF); returns its xref.

    ``smask``: 8-bit greyscale soft-mask samples of the same size (0 = transparent).
    """
    mask_ref = ""
    if smask is not None:
        mref = doc.get_new_xref()
        doc.update_object(
            mref,
            f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} "
            "/ColorSpace /DeviceGray /BitsPerComponent 8 >>",
        )
        doc.update_stream(mref, smask)
        mask_ref = f"/SMask {mref} 0 R "
    xref = doc.get_new_xref()
    doc.update_object(
        xref,
        f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} "
        f"/ColorSpace {colorspace} /BitsPerComponent {bpc} {mask_ref}>>",
    )
    doc.update_stream(xref, data)
    _draw_xobject(doc, page, xref, rect)
    return xref


def build_known_pdf(path: Path) -> dict[str, np.ndarray]:
    """A 3-page PDF with one image of each kind; returns {label: expected RGB}.

    Page 1: RGB (captioned), RGBA (SMask), greyscale, a 16 px icon, the RGB image again.
    Page 2: CMYK, indexed, 16-bit RGB, and a second xref with the RGB image's pixels.
    Page 3: the page-1 RGB xref drawn again (a duplicate placement).
    """
    doc = pymupdf.open()
    expected: dict[str, np.ndarray] = {}

    p1 = doc.new_page(width=595, height=842)
    rgb = random_rgb(64, 80, seed=1)
    rgb_xref = p1.insert_image(pymupdf.Rect(50, 50, 210, 178), stream=png_bytes(rgb))
    p1.insert_text((50, 195), "Figure 1: A known RGB test image.", fontsize=9)
    expected["rgb"] = rgb

    base = random_rgb(48, 48, seed=2)
    alpha = np.random.default_rng(8).integers(0, 256, (48, 48), np.uint8)
    alpha[:8] = 0  # fully transparent rows must come out white
    add_raw_image(
        doc,
        p1,
        pymupdf.Rect(250, 50, 346, 146),
        48,
        48,
        "/DeviceRGB",
        base.tobytes(),
        smask=alpha.tobytes(),
    )
    expected["alpha"] = composite_on_white(base, alpha)

    grey = np.random.default_rng(3).integers(0, 256, (40, 56), np.uint8)
    p1.insert_image(pymupdf.Rect(50, 300, 162, 380), stream=png_bytes(grey))
    expected["grey"] = np.repeat(grey[..., None], 3, axis=2)

    icon = random_rgb(16, 16, seed=4)
    p1.insert_image(pymupdf.Rect(400, 300, 416, 316), stream=png_bytes(icon))
    p1.insert_image(pymupdf.Rect(50, 500, 210, 628), xref=rgb_xref)  # same xref, twice

    p2 = doc.new_page(width=595, height=842)
    cmyk = np.random.default_rng(5).integers(0, 256, (36, 44, 4), np.uint8)
    add_raw_image(doc, p2, pymupdf.Rect(50, 50, 138, 122), 44, 36, "/DeviceCMYK", cmyk.tobytes())
    cmyk_pix = pymupdf.Pixmap(pymupdf.csCMYK, 44, 36, cmyk.tobytes(), False)
    expected["cmyk"] = np.frombuffer(
        pymupdf.Pixmap(pymupdf.csRGB, cmyk_pix).samples, np.uint8
    ).reshape(36, 44, 3)

    palette = np.array([[255, 0, 0], [0, 128, 0], [20, 40, 250], [250, 250, 0]], np.uint8)
    index = np.random.default_rng(6).integers(0, 4, (40, 40), np.uint8)
    lookup = "<" + palette.tobytes().hex() + ">"
    add_raw_image(
        doc,
        p2,
        pymupdf.Rect(200, 50, 280, 130),
        40,
        40,
        f"[/Indexed /DeviceRGB 3 {lookup}]",
        index.tobytes(),
    )
    expected["indexed"] = palette[index]

    deep = np.random.default_rng(7).integers(0, 65536, (34, 38, 3), np.uint16)
    add_raw_image(
        doc,
        p2,
        pymupdf.Rect(300, 50, 376, 118),
        38,
        34,
        "/DeviceRGB",
        deep.astype(">u2").tobytes(),
        bpc=16,
    )
    expected["deep"] = (deep >> 8).astype(np.uint8)  # PyMuPDF keeps the high byte

    p2.insert_image(pymupdf.Rect(50, 300, 210, 428), stream=png_bytes(rgb))  # new xref, same px

    p3 = doc.new_page(width=595, height=842)
    p3.insert_image(pymupdf.Rect(50, 50, 210, 178), xref=rgb_xref)
    doc.save(path)
    doc.close()
    return expected


def build_image_pdf(path: Path, images: list[np.ndarray], caption: str | None = None) -> Path:
    """One page per image (RGB arrays), optionally with a caption under each."""
    doc = pymupdf.open()
    for arr in images:
        page = doc.new_page(width=400, height=400)
        page.insert_image(pymupdf.Rect(40, 40, 232, 232), stream=png_bytes(arr))
        if caption:
            page.insert_text((40, 250), caption, fontsize=9)
    doc.save(path)
    doc.close()
    return path


def encrypted_pdf(user_pw: str = "user") -> bytes:
    """A one-page PDF with one H&E-like image, AES-256 encrypted (owner password "owner");
    ``user_pw=""`` makes one that any reader opens without a password."""
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(40, 40, 136, 136), stream=png_bytes(he_like()))
    data = doc.tobytes(
        encryption=pymupdf.mupdf.PDF_ENCRYPT_AES_256, user_pw=user_pw, owner_pw="owner"
    )
    doc.close()
    return data


def write_encrypted(path: Path) -> Path:
    path.write_bytes(encrypted_pdf())
    return path


def write_truncated(source: Path, path: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_corrupt(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ngarbage\n%%EOF\n")
    return path


def write_bad_page_tree(path: Path, kind: str, *, xref: bool = False) -> Path:
    """A PDF that opens but whose page tree MuPDF refuses: ``kind="count"`` claims
    999999999 pages for one kid (``page_count`` raises), ``kind="loop"`` lists itself
    (loading the page raises). Without ``xref`` there is no xref table and MuPDF repairs
    the file on opening; with it, the file is read as is."""
    kids, count = {"count": (b"3 0 R", b"999999999"), "loop": (b"2 0 R", b"1")}[kind]
    objs = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[" + kids + b"]/Count " + count + b">>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 10 10]>>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, obj)
    if xref:
        start = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
        out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
        out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n" % (len(objs) + 1, start)
    else:
        out += b"trailer<</Root 1 0 R>>\n"
    path.write_bytes(out + b"%%EOF\n")
    return path


def write_broken_xref(source: Path, path: Path) -> Path:
    """Object streams + a ``startxref`` pointing at garbage: pdfminer finds no /Root (it
    cannot scan inside object streams), MuPDF repairs it."""
    with pymupdf.open(source) as doc:
        data = doc.tobytes(use_objstms=1, garbage=1)
    cut = data.rfind(b"startxref")
    path.write_bytes(data[:cut] + b"startxref\n12\n%%EOF\n")
    return path
