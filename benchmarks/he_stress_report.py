"""Per-kind keep rates of the H&E decision on the stress set (he_decision_stress.py).

The measured scores of each stress image (colour, classifier, panels) are decided here as
``histofetch filter`` decides a figure, without a caption, with the shipped thresholds or a
candidate's; no pixel is read.
"""

from __future__ import annotations

from collections import defaultdict

from histocore.manifest import Image
from histofetch.decide import rules


def as_image(m: dict) -> Image:
    img = Image(id="stress", record_id="s", path="x.png", sha256="", width=m["width"],
                height=m["height"])  # fmt: skip
    c = m["colour"]
    img.purple_ratio, img.he_score = c["purple_ratio"], c["he_score"]
    img.tissue_fraction = c["tissue_fraction"]
    img.extra["colour"] = c
    img.p_he = m["p_he"]
    img.extra["classifier"] = {"probs": m["probs"]}
    return img


def decide(m: dict, limits: rules.Thresholds) -> tuple[bool, str | None]:
    """The figure is kept when it is (unsplit) or when one of its panels is."""
    units = m["panels"] or [m]
    out = [rules.decide(as_image(u), limits) for u in units]
    kept = [d for d in out if d.kept]
    return (True, None) if kept else (False, out[0].reason)


def reason_kind(reason: str | None) -> str:
    if reason is None:
        return "kept"
    for key in ("too small to judge", "no H&E-like", "tissue region", "dark image", "smooth colour",
                "purple ratio", "H&E score", "not H&E by the classifier", "caption"):  # fmt: skip
        if key in reason:
            return key
    return reason[:30]


def report(measured: list[dict], limits: rules.Thresholds) -> dict:
    table: dict[str, dict] = {}
    for m in measured:
        kept, reason = decide(m, limits)
        for held in ("all", "held_out" if m["held_out"] else "train_side"):
            row = table.setdefault(m["kind"], {}).setdefault(
                held, {"n": 0, "kept": 0, "reasons": defaultdict(int)}
            )
            row["n"] += 1
            row["kept"] += kept
            row["reasons"][reason_kind(reason)] += 0 if kept else 1
    for rows in table.values():
        for row in rows.values():
            row["keep_rate"] = round(row["kept"] / row["n"], 3)
            row["reasons"] = dict(sorted(row["reasons"].items(), key=lambda kv: -kv[1]))
    he = [m for m in measured if m["he"]]
    neg = [m for m in measured if not m["he"]]
    tp = sum(decide(m, limits)[0] for m in he)
    fp = sum(decide(m, limits)[0] for m in neg)
    return {
        "kinds": table,
        "he_kept": tp,
        "he": len(he),
        "negatives_kept": fp,
        "negatives": len(neg),
        "recall": round(tp / len(he), 4),
        "false_keep_rate": round(fp / len(neg), 4),
    }


def print_report(name: str, rep: dict) -> None:
    print(f"\n== {name}: H&E kept {rep['he_kept']}/{rep['he']} (recall {rep['recall']:.3f}); "
          f"negatives kept {rep['negatives_kept']}/{rep['negatives']} "
          f"({rep['false_keep_rate']:.3f})")  # fmt: skip
    print(f"{'kind':28s} {'n':>4s} {'keep':>6s} {'held-out':>9s} {'train':>7s}  rejections")
    for kind, rows in sorted(
        rep["kinds"].items(), key=lambda kv: (not kv[0].startswith("he"), kv[0])
    ):
        a = rows["all"]
        h = rows.get("held_out", {}).get("keep_rate")
        t = rows.get("train_side", {}).get("keep_rate")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        top = ", ".join(f"{k} {v}" for k, v in list(a["reasons"].items())[:3] if v)
        print(f"{kind:28s} {a['n']:4d} {a['keep_rate']:6.2f} {fmt(h):>9s} {fmt(t):>7s}  {top}")


def parse_set(pairs: list[str]) -> dict[str, float]:
    """``["p_override=0.6", …]`` → {"p_override": 0.6, …}."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name] = float(value)
    return out


def grid(measured: list[dict], limits: rules.Thresholds, name: str, values: list[float]) -> dict:
    """H&E and negatives kept with threshold ``name`` at each of ``values`` (the others as
    ``limits``), on these measured images: a re-decision, nothing is read again."""
    he = sum(m["he"] for m in measured)
    points = []
    for value in values:
        at = rules.Thresholds.from_kwargs(**(vars(limits) | {name: value}))
        kept = [decide(m, at)[0] for m in measured]
        points.append({
            name: value,
            "he_kept": sum(k for k, m in zip(kept, measured, strict=True) if m["he"]),
            "negatives_kept": sum(k for k, m in zip(kept, measured, strict=True) if not m["he"]),
        })  # fmt: skip
    return {"name": name, "he": he, "negatives": len(measured) - he, "points": points}


def parse_grid(text: str) -> tuple[str, list[float]]:
    """``"p_keep=0.04,0.1"`` → ("p_keep", [0.04, 0.1])."""
    name, _, values = text.partition("=")
    return name, [float(v) for v in values.split(",") if v]
