"""The one H&E decision: each rule, in order, with the reason it gives."""

from __future__ import annotations

import json
from pathlib import Path

from histocore.manifest import Image
from histofetch.decide.rules import Thresholds, apply, decide

GOOD_COLOUR = {"tissue_blocks": 30, "dark_fraction": 0.0, "detail": 0.08}


def row(p_he: float | None = 0.9, verdict: str | None = None, said: str = "", **colour) -> Image:
    img = Image(id="r/p001_001", record_id="r", path="x.png", sha256="", width=300, height=300)
    img.purple_ratio, img.he_score, img.tissue_fraction = 0.9, 0.9, 0.5
    img.extra["colour"] = GOOD_COLOUR | colour
    img.p_he = p_he
    img.extra["classifier"] = {"probs": {"he": p_he or 0.0, "ihc": 0.7, "pas": 0.1}}
    img.extra["stains"] = {"verdict": verdict, "said": said}
    return img


#: Fixed thresholds, so these tests check the rule, not the shipped numbers (which the
#: training script sets; test_defaults_are_the_ones_the_training_script_chose checks them).
T = Thresholds(p_keep=0.25, p_caption=0.1, p_override=0.85, p_override_caption=0.5)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "he_classifier.json"


def test_defaults_are_the_ones_the_training_script_chose() -> None:
    """The classifier thresholds are set on its validation tiles by the training script,
    not by hand and not on the evaluation papers."""
    chosen = json.loads(RESULTS.read_text())["thresholds"]
    defaults = Thresholds()
    assert set(chosen) == {"p_keep", "p_caption", "p_override", "p_override_caption"}
    for name, value in chosen.items():
        assert getattr(defaults, name) == value, name
    assert defaults.p_caption <= defaults.p_keep <= defaults.p_override


def test_confident_he_with_good_colour_is_kept() -> None:
    d = decide(row(0.9), T)
    assert d.kept and d.reason is None and d.note == "classifier p(H&E) 0.90, colour rule passes"
    assert abs(d.margin - 0.65) < 1e-9


def test_hard_colour_failures_reject_whatever_the_classifier_says() -> None:
    d = decide(row(0.99, tissue_blocks=0), T)
    assert not d.kept and d.reason == "no H&E-like tissue blocks"
    small = row(0.99)
    small.width = 50
    assert decide(small, T).reason == "too small to judge (300x50 px < 64)".replace(
        "300x50", "50x300"
    )


def test_classifier_rejects_with_what_it_looks_like() -> None:
    d = decide(row(0.2), T)
    assert not d.kept
    assert d.reason == "not H&E by the classifier: p(H&E) 0.20 < 0.25, looks like ihc (0.70)"


def test_caption_naming_he_lowers_the_bar() -> None:
    said = "caption panel A names H&E"
    d = decide(row(0.15, "for", said), T)
    assert d.kept and d.note.endswith(said)
    assert not decide(row(0.05, "for", said), T).kept


def test_caption_against_rejects_unless_the_classifier_is_nearly_certain() -> None:
    said = "caption panel B names IHC (Ki-67)"
    d = decide(row(0.9, "against", said), T)
    assert not d.kept
    assert d.reason == f"caption says not H&E: {said}; p(H&E) 0.90, looks like ihc (0.70)"
    assert decide(row(0.99, "against", said), T).kept
    assert not decide(row(0.99, "against", said, dark_fraction=0.5), T).kept


def test_soft_colour_failure_is_overridden_only_by_a_confident_classifier() -> None:
    dark = 0.3  # dark_fraction: black padding around a patch
    d = decide(row(0.95, dark_fraction=dark), T)
    assert d.kept and d.note.startswith("classifier p(H&E) 0.95 overrides the colour test (dark")
    d = decide(row(0.7, dark_fraction=dark), T)
    assert d.reason is not None
    assert not d.kept and d.reason.endswith("classifier p(H&E) 0.70 < 0.85 to override")
    assert decide(row(0.7, "for", "caption names H&E", dark_fraction=dark), T).kept


def test_signals_can_be_switched_off_to_measure_them() -> None:
    # colour only: the earlier rule (classifier and caption ignored)
    assert decide(row(0.1, "against", "x"), T, use_classifier=False, use_text=False).kept
    assert not decide(row(0.95, dark_fraction=0.3), T, use_classifier=False).kept
    # colour + text: the caption can veto
    assert not decide(row(0.9, "against", "x"), T, use_classifier=False).kept
    # no classifier score stored: colour decides
    assert decide(row(None), T).kept


def test_apply_stores_the_decision_on_the_row() -> None:
    img = row(0.15)
    apply(img, T)
    assert img.filter_reason is not None
    assert img.kept is False and img.filter_reason.startswith("not H&E by the classifier")
    assert img.extra["decision"]["margin"] == -0.1


def test_colour_reasons_name_each_threshold_as_given() -> None:
    """`:g` wrote --max-dark 0.2000001 as '0.2' and --min-he 0.5000001 as '0.5' (an H&E
    score '0.50' then read as passing); the reason now shows what the user gave."""
    limits = Thresholds(purple=0.3, max_dark=0.2000001, min_detail=0.0450001, min_he=0.5000001)
    dark = decide(row(None, dark_fraction=0.25), limits).reason
    assert dark == "dark image, fluorescence or colour map (0.25 > 0.2000001)"
    grain = decide(row(None, detail=0.045), limits).reason
    assert grain == "smooth colour gradient, not tissue grain (0.045 < 0.0450001)"
    img = row(None)
    img.he_score = 0.5
    assert decide(img, limits).reason == "H&E score too low (0.50 < 0.5000001)"
    img.purple_ratio = 0.2999  # 2 decimals would read '0.30 < 0.3'
    assert decide(img, limits).reason == "purple ratio too low (0.2999 < 0.3)"


def test_classifier_and_tissue_reasons_never_round_onto_their_threshold() -> None:
    """`:.2f` wrote 'p(H&E) 0.04 < 0.04' for p_he 0.036 under the shipped p_keep 0.04,
    'classifier p(H&E) 0.78 < 0.78 to override' for 0.7751, and 'tissue region too small
    (30 blocks, 0.02)' for a tissue share of 0.0199 against min_tissue 0.02 (no threshold
    shown); each now reads as the comparison that failed."""
    shipped = Thresholds()
    assert (shipped.p_keep, shipped.p_override, shipped.min_tissue) == (0.04, 0.78, 0.02)
    veto = decide(row(0.036), shipped).reason
    assert veto == "not H&E by the classifier: p(H&E) 0.036 < 0.04, looks like ihc (0.70)"
    caption = decide(row(0.0199, "for", "H&E"), shipped).reason
    assert caption is not None
    assert caption.startswith("not H&E by the classifier: p(H&E) 0.0199 (caption names H&E")
    assert "needs 0.02)" in caption
    override = decide(row(0.7751, dark_fraction=0.3), shipped).reason
    assert override is not None
    assert override.endswith("; classifier p(H&E) 0.7751 < 0.78 to override"), override
    small = row(None)
    small.tissue_fraction = 0.0199
    reason = decide(small, shipped).reason
    assert reason == "tissue region too small (30 blocks, tissue 0.0199 < 0.02)", reason
    few = decide(row(None, tissue_blocks=1), shipped).reason
    assert few == "tissue region too small (1 block < 2, tissue 0.50)", few  # it said '1 blocks'
    assert decide(row(0.15), T).reason == (
        "not H&E by the classifier: p(H&E) 0.15 < 0.25, looks like ihc (0.70)"
    )
