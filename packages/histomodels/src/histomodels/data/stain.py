"""Macenko stain normalisation (Macenko et al., ISBI 2009), numpy only.

Optional pre-processing: estimate each image's haematoxylin and eosin optical-density
vectors from the extreme angles of its tissue pixels in the plane of the two main
OD directions, unmix the concentrations, rescale them to the target's 99th percentiles
and remix with the target's stain vectors. Fit on one well-stained reference image
(``fit``), then ``transform`` patches; an image with too little tissue to estimate its
stains (e.g. a blank 96 px patch) is returned unchanged and counted in ``n_skipped``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histocore.errors import DomainError
from histocore.io import NotJSON, RefusedFile, loads_json, read_capped, text_shown

#: Reference H&E vectors (columns) and max concentrations used by common Macenko code.
REF_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
REF_MAX_C = np.array([1.9705, 1.0308])


class StainError(DomainError, ValueError):
    """Too little stained tissue to estimate stain vectors, or unusable stain settings."""


def _od(rgb: np.ndarray, io: float) -> np.ndarray:
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / io)


def stain_vectors(
    rgb: np.ndarray,
    *,
    io: float = 240.0,
    beta: float = 0.15,
    alpha: float = 1.0,
    min_pixels: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """``(stains [3, 2] with H then E as unit columns, max concentrations [2])``."""
    od = _od(rgb, io)
    tissue = od[np.all(od > beta, axis=1)]
    if len(tissue) < min_pixels:
        raise StainError(f"only {len(tissue)} stained pixels (need {min_pixels})")
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    if plane[0, 0] < 0:  # fix signs so both point into positive OD
        plane[:, 0] *= -1
    if plane[0, 1] < 0:
        plane[:, 1] *= -1
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # Haematoxylin absorbs more red than eosin: its OD vector has the larger R component.
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)
    stains = stains * np.sign(stains.sum(0, keepdims=True))
    stains /= np.linalg.norm(stains, axis=0, keepdims=True)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    return stains, np.percentile(conc, 99, axis=1)


#: the least angle between a target's haematoxylin and eosin vectors (degrees); on 399 real
#: PCam patches the 1st percentile is 12.6, the common reference's 22.3; a grey image's 0
MIN_STAIN_ANGLE = 5.0


def _two_stains(stains: np.ndarray, source: str = "") -> None:
    """A target whose two stain vectors are (nearly) one colour, as a grey, black or
    one-stain image gives, would map every patch to shades of that colour."""
    norms = np.linalg.norm(stains, axis=0)
    cos = float(stains[:, 0] @ stains[:, 1] / max(float(norms.prod()), 1e-12))
    angle = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    if not angle >= MIN_STAIN_ANGLE:
        raise StainError(
            f"{source}{': ' if source else ''}the haematoxylin and eosin vectors are "
            f"{angle:.1f} degrees apart (at "
            f"least {MIN_STAIN_ANGLE:g} needed): not two stains (a grey or one-colour image?)"
        )


#: How far a stain vector's length may be from 1 (hand-copied published vectors, rounded to
#: 2 or 4 decimals, are within 0.5%; ``fit`` writes unit columns).
UNIT_TOLERANCE = 0.02
#: The least target concentration scale, fitted or read from settings: below it every patch
#: is remixed to within a grey level of the background (fitted values on real H&E, IHC, IF
#: and special stains, PCam's 96 px patches included, are 0.2 to 9.5).
MIN_MAX_C = 0.01
#: The most target concentration scale: a concentration is the optical density along a
#: unit stain vector, and the densest a uint8 pixel records is ``ln(io)`` in each channel
#: (a 0 pixel), an OD vector of length ``sqrt(3)·ln(io)``: 9.5 at the usual io of 240 (the
#: top of the fitted range), 12 at the largest io taken (1000). 30 leaves room for the
#: unmixing of two close stains and still refuses a scale that remixes every stained pixel
#: to black (``1e6``: it was taken, exit 0).
MAX_MAX_C = 30.0
#: The ``method`` values a stain file may name (``fit`` writes ``macenko``; none = macenko).
METHODS = ("macenko",)


def _unit_od_vectors(stains: np.ndarray, source: str = "") -> None:
    """Stain vectors read from settings are what ``fit`` writes: unit optical-density
    columns, no component negative (a stain absorbs light, it never adds it). A zero
    column remixed every patch to blank background, a long one (``1e308``) to black and a
    negative one to white, each silently."""
    where = f"{source}: " if source else ""
    for col, name in enumerate(("haematoxylin", "eosin")):
        vec = stains[:, col]
        # hypot scales as it sums: a component of 1e308 is that length, not numpy's
        # "overflow encountered in dot" warning on the way to inf
        length = math.hypot(*vec.tolist())
        if (vec < 0).any():
            raise StainError(
                f"{where}the {name} vector {vec.tolist()} has a negative component "
                "(an optical-density vector is never negative)"
            )
        if not abs(length - 1) <= UNIT_TOLERANCE:
            raise StainError(
                f"{where}the {name} vector {vec.tolist()} has length {length:.3g}, "
                "expected a unit optical-density vector (as `histomodels data stain` writes)"
            )


def _check_settings(stains: np.ndarray, max_c: np.ndarray, io: float, source: str = "") -> None:
    """The one rule for stain settings, applied where ``fit`` makes them and where
    ``from_dict`` (``load``, a checkpoint's ``stain``) reads them back, so ``fit`` never
    gives settings its own reader refuses. ``stains`` is ``[3, 2]``, ``max_c`` ``[2]``."""
    where = f"{source}: " if source else ""
    _unit_od_vectors(stains, source)
    _two_stains(stains, source)
    # max_c is the 99th percentile concentration over all pixels, background included: a
    # reference that is mostly blank background (about 1 % tissue) fits one at or below 0
    if not np.isfinite(max_c).all():
        raise StainError(f"{where}max_c must be 2 finite numbers, got {max_c.tolist()}")
    if not (max_c >= MIN_MAX_C).all():
        raise StainError(
            f"{where}max_c {max_c.tolist()} is below {MIN_MAX_C:g}: every patch would be "
            "normalised to blank background (a fitted max_c is about 0.2 to 9.5; a reference "
            "image with too little tissue, mostly blank background, fits one this low)"
        )
    if not (max_c <= MAX_MAX_C).all():
        raise StainError(
            f"{where}max_c {max_c.tolist()} is above {MAX_MAX_C:g}: every stained pixel "
            "would be remixed to black (a fitted max_c is about 0.2 to 9.5; a uint8 image "
            "records an optical density of at most sqrt(3)·ln(io), 9.5 at io 240)"
        )
    if not (np.isfinite(io) and 0 < io <= 1000):  # background light; 240 typical
        raise StainError(f"{where}io must be a positive intensity, got {io}")


@dataclass
class MacenkoNormalizer:
    """Map images onto a target's stain appearance. Default target: the common reference."""

    stains: np.ndarray = field(default_factory=lambda: REF_STAINS.copy())
    max_c: np.ndarray = field(default_factory=lambda: REF_MAX_C.copy())
    io: float = 240.0
    n_skipped: int = 0

    def fit(self, target: np.ndarray) -> MacenkoNormalizer:
        """Estimate the target's stain vectors and concentration scale (uint8 [H, W, 3]).
        StainError when the settings would be refused on ``load`` (the same check): two
        stains that are one colour, or a ``max_c`` below ``MIN_MAX_C`` (a target that is
        nearly all blank background, about 1 % tissue or less)."""
        stains, max_c = stain_vectors(_check(target), io=self.io)
        _check_settings(stains, max_c, self.io)  # what load() takes back, by the same rules
        self.stains, self.max_c = stains, max_c
        return self

    def transform_one(self, rgb: np.ndarray) -> np.ndarray:
        rgb = _check(rgb)
        try:
            src, src_max = stain_vectors(rgb, io=self.io)
        except StainError:
            self.n_skipped += 1
            return rgb.copy()
        od = _od(rgb, self.io)
        conc = np.linalg.lstsq(src, od.T, rcond=None)[0]
        conc *= (self.max_c / np.maximum(src_max, 1e-6))[:, None]
        out = self.io * np.exp(-(self.stains @ conc))
        return np.clip(out.T.reshape(rgb.shape), 0, 255).round().astype(np.uint8)

    def transform(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` or ``[N, H, W, 3]`` → the same, normalised."""
        images = np.asarray(images)
        if images.ndim == 3:
            return self.transform_one(images)
        return np.stack([self.transform_one(im) for im in images])

    def to_dict(self) -> dict:
        """Plain lists and floats (JSON, and safe inside a ``weights_only`` checkpoint)."""
        return {
            "method": "macenko",
            "stains": self.stains.tolist(),
            "max_c": self.max_c.tolist(),
            "io": float(self.io),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "stain settings") -> MacenkoNormalizer:
        method = data.get("method", "macenko")  # a hand-written file may leave it out
        if method not in METHODS:  # another method's vectors read as Macenko's silently
            allowed = ", ".join(map(repr, METHODS))
            shown = text_shown(repr(method))  # a 1 MB method was a 1 MB line
            raise StainError(f"{source}: method {shown} is not one of {allowed}")
        try:
            stains, max_c = np.array(data["stains"], float), np.array(data["max_c"], float)
            io = float(data.get("io", 240.0))
        except (KeyError, TypeError, ValueError) as exc:
            shown = text_shown(repr(exc))  # numpy quotes the value it could not read
            raise StainError(f"{source}: not Macenko stain settings ({shown})") from None
        if stains.shape != (3, 2) or max_c.shape != (2,) or not np.isfinite(stains).all():
            raise StainError(f"{source}: expected stains 3x2 and max_c of 2 finite numbers")
        _check_settings(stains, max_c, io, source)
        return cls(stains, max_c, io)

    def save(self, path: str | Path) -> None:
        """Write the settings as JSON (atomically: a temp file, then a rename)."""
        from histocore.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> MacenkoNormalizer:
        try:  # data stain writes a few hundred bytes: at most 1 MB is read
            data = loads_json(read_capped(path, 1 << 20).decode("utf-8-sig"))  # BOM allowed
        except (OSError, UnicodeDecodeError, NotJSON, RefusedFile) as exc:
            raise StainError(f"{path}: cannot read stain settings ({exc})") from None
        if not isinstance(data, dict):
            raise StainError(f"{path}: expected a JSON object of stain settings")
        return cls.from_dict(data, str(path))


def stain_normalizer(spec: str) -> MacenkoNormalizer:
    """``"macenko"`` (the common reference target) or a JSON file written by
    :meth:`MacenkoNormalizer.save` (a target fitted on your own reference image)."""
    if spec == "macenko":
        return MacenkoNormalizer()
    if not Path(spec).is_file():
        raise StainError(f"{spec}: stain normalisation is 'macenko' or a stain JSON file")
    return MacenkoNormalizer.load(spec)


def _check(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
    return rgb
