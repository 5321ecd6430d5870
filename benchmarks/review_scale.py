"""A large run's everyday commands: a generated run of N kept figures (100,000 by default).

A literature-mining run can hold 100,000 figures. This generates one (``--figures``
kept figures, 8 an article, a quarter as many rejected ones beside them, a third of the kept
ones answered on the review page, weak labels with caption evidence as ``histofetch filter``
writes them), then times what a user does with it, each in this one process:

* ``open``: :meth:`Manifest.load` of the run (every command's first step);
* ``status``: ``histofetch status --run RUN`` (the CLI, in-process);
* ``export``: ``histofetch export --run RUN`` (the JSONL export) and ``--format csv``;
* ``review_startup``: :func:`histofetch.review.server.build_server` (reads the run once) and
  :meth:`~histofetch.review.server.ReviewServer.before_serving`, as ``histofetch review``
  starts;
* ``first_page``: ``GET /`` (the page, its article filter and the progress counts);
* ``items``: ``GET /api/items`` (the default unreviewed view, 200 figures and the counts),
  the next page (``offset=200``), a filter (``weak=metastasis``), ``around=`` a figure and
  the page ``after=`` one (the page moving past its page of the list);
* ``item``: ``GET /api/item/<id>`` (one figure);
* ``answer``: ``POST /api/label`` (one answer saved, and the next ``/api/items``).

Usage::

    nice -n 10 python benchmarks/review_scale.py --figures 10000           # develop on 10k
    nice -n 10 python benchmarks/review_scale.py --label after \
        --out benchmarks/results/review_scale.json                   # 100,000 figures
    python benchmarks/review_scale.py --figures 10000 --profile review_startup  # cProfile it

Each page request is made ``--repeat`` times (the first is reported apart: a cache warms),
each whole-run step (open, status, export, start-up) ``--repeat-slow`` times (once by
default: at 100,000 figures each takes seconds on a shared machine); the run is generated
once into ``--root`` (kept, and reused, with ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from histocore.manifest import Image, Manifest, Record

WEAK = ("metastasis", "no_metastasis", "abstain", None)
CAPTIONS = (
    "Figure {n}. Metastatic carcinoma in an axillary lymph node (H&E, x100).",
    "Figure {n}. No evidence of metastatic carcinoma in the sentinel lymph node.",
    "Fig. {n}. (A) Primary breast carcinoma. (B) Isolated tumour cells in a node.",
    "Figure {n}. Reactive lymph node with sinus histiocytosis, haematoxylin and eosin.",
)
PER_ARTICLE = 8


def generate(run: Path, figures: int, *, rejected: float = 0.25, answered: float = 1 / 3) -> None:
    """A run folder of ``figures`` kept figures (``run.sqlite`` and ``manifest.jsonl``)."""
    m = Manifest.load(run, create=True)
    m.query = "lymph node metastasis breast cancer"
    m.header_extra["filter_sheets"] = False
    articles = -(-figures // PER_ARTICLE)
    extra = round(PER_ARTICLE * rejected)
    kept_n = 0
    for a in range(articles):
        rid = f"pmid:{30000000 + a}"
        m.add_record(
            Record(
                id=rid,
                pmid=str(30000000 + a),
                pmcid=f"PMC{900000 + a}",
                title=f"Sentinel lymph node metastasis in breast cancer: a series, part {a}",
                journal="J Synthetic Pathol",
                year=2000 + a % 25,
                license="CC BY",
                stage="filtered",
                pdf_path=f"pdfs/pmid_{30000000 + a}.pdf",
                n_images=PER_ARTICLE + extra,
            )
        )
        for n in range(PER_ARTICLE + extra):
            keep = n < PER_ARTICLE and kept_n < figures
            kept_n += keep
            text = CAPTIONS[(a + n) % len(CAPTIONS)].format(n=n + 1)
            weak = WEAK[(a * 3 + n) % len(WEAK)] if keep else None
            label = None
            if keep and (a * PER_ARTICLE + n) % round(1 / answered) == 0:
                label = weak if weak in ("metastasis", "no_metastasis") else "not_usable"
            m.add_image(
                Image(
                    id=f"{rid}/p{n // 4 + 1:03d}_{n % 4 + 1:03d}",
                    record_id=rid,
                    path=f"images/pmid_{30000000 + a}/p{n // 4 + 1:03d}_{n % 4 + 1:03d}.png",
                    sha256=f"{a:016x}{n:016x}" * 2,
                    source="pdf",
                    width=800 + n,
                    height=600 + n,
                    page=n // 4 + 1,
                    bbox=[10.0, 20.0, 410.0, 320.0],
                    caption=text,
                    figure_label=f"Figure {n + 1}",
                    purple_ratio=0.61,
                    he_score=0.72 if keep else 0.1,
                    tissue_fraction=0.33,
                    kept=keep,
                    filter_reason=None if keep else "not H&E",
                    weak_label=weak,
                    weak_label_evidence=[{"start": 10, "end": 20, "kind": "positive"}]
                    if weak
                    else None,
                    weak_label_rules="v3" if keep else None,
                    site="lymph_node" if keep else None,
                    label=label,
                    label_by="ann" if label else None,
                    label_at="2026-12-01T10:00:00.000000Z" if label else None,
                    extra={"xref": 10 + n, "colour": {"tissue_blocks": 12, "scorer": 3}},
                )
            )
    m.save()
    m.close()


def _timed(fn, repeat: int) -> dict[str, Any]:
    """Wall seconds of the first call and the median of the others, and the same of the
    process's CPU seconds (every thread: the test client serves in one of its own), which
    a shared machine's load changes far less."""
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out: dict[str, Any] = {"first_s": round(times[0], 3), "first_cpu_s": round(cpu[0], 3)}
    if repeat > 1:
        out["later_median_s"] = round(statistics.median(times[1:]), 3)
        out["later_median_cpu_s"] = round(statistics.median(cpu[1:]), 3)
    return out


def measure(
    run: Path, repeat: int, slow: int, profile: str | None, skip: set[str]
) -> dict[str, Any]:
    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from histofetch.cli import app as cli
    from histofetch.review.server import build_server

    results: dict[str, Any] = {}
    runner = CliRunner()

    def cmd(*args: str) -> None:
        got = runner.invoke(cli, list(args))
        if got.exit_code:
            raise SystemExit(f"histofetch {' '.join(args)} failed: {got.output}")

    state: dict[str, Any] = {}

    def startup() -> None:
        state.pop("server", None)  # an earlier repeat's: garbage, collected by settle()
        state.pop("client", None)
        server, sock = build_server(run, reviewer="bench", freeze_gc=True)  # as serve() does
        sock.close()
        state["server"], state["froze"] = server, server.before_serving()  # as run() does
        app: Any = server.config.app  # the Starlette app build_server made
        state["client"] = TestClient(app, base_url="http://127.0.0.1")

    def client() -> Any:
        return state["client"]

    def get(url: str) -> Any:
        def go() -> None:
            r = client().get(url)
            if r.status_code != 200:
                raise SystemExit(f"{url}: {r.status_code} {r.text[:200]}")
            state["last"] = r

        return go

    first = ordered_ids(run)
    target = first[len(first) // 2]
    answers = iter(["metastasis", None] * (repeat + 1))

    def answer() -> None:
        r = client().post(
            "/api/label", json={"id": target, "label": next(answers), "reviewer": "bench"}
        )
        if r.status_code != 200:
            raise SystemExit(f"answer: {r.status_code} {r.text[:200]}")
        get("/api/items?status=unreviewed")()  # the page reloads its list after an answer

    def load() -> None:
        Manifest.load(run).close()

    steps = {
        "open": load,
        "status": lambda: cmd("status", "--run", str(run)),
        "export_jsonl": lambda: cmd("export", "--run", str(run)),
        "export_csv": lambda: cmd("export", "--run", str(run), "--format", "csv"),
        "review_startup": startup,
        "first_page": get("/"),
        "items": get("/api/items?status=unreviewed"),
        "items_next_page": get("/api/items?status=unreviewed&offset=200"),
        "items_filtered": get("/api/items?status=all&weak=metastasis"),
        "items_around": get(f"/api/items?status=all&around={target}"),
        "items_after": get(f"/api/items?status=unreviewed&after={target}"),
        "item": get(f"/api/item/{target}"),
        "answer_and_items": answer,
    }
    for name, fn in steps.items():
        if name in skip:
            continue
        if name == profile:
            prof = cProfile.Profile()
            prof.enable()
            fn()
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(30)
            print(text.getvalue())
        whole_run = name in ("open", "status", "export_jsonl", "export_csv", "review_startup")
        results[name] = _timed(fn, slow if whole_run else repeat)
        print(f"{name}: {results[name]}", flush=True)
    if "server" in state:  # stops as ReviewServer.run does: the store closed, unfrozen
        state["server"].after_serving(state["froze"])
    return results


def ordered_ids(run: Path) -> list[str]:
    with Manifest.load(run) as m:
        return [i.id for i in m.kept_images()]


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(x, 2) for x in load] if load else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--figures", type=int, default=100_000, help="kept figures in the run")
    ap.add_argument("--repeat", type=int, default=3, help="times each page request is made")
    ap.add_argument("--repeat-slow", type=int, default=1, help="times each whole-run step runs")
    ap.add_argument("--root", type=Path, default=None, help="where the run is generated")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated run")
    ap.add_argument("--profile", default=None, help="cProfile this step (e.g. review_startup)")
    ap.add_argument("--skip", nargs="*", default=[], help="steps not to run (e.g. export_csv)")
    ap.add_argument("--generate-only", action="store_true", help="make the run, time nothing")
    ap.add_argument("--label", default=None, help="a name for this measurement in --out")
    ap.add_argument("--out", type=Path, default=None, help="add the results to this JSON")
    args = ap.parse_args()

    root = args.root or Path(tempfile.mkdtemp(prefix="review_scale_"))
    run = root / f"run_{args.figures}"
    try:
        if not (run / "run.sqlite").is_file():
            t0 = time.perf_counter()
            generate(run, args.figures)
            print(f"generated {run} in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.generate_only:
            return
        before = machine()
        results = measure(run, args.repeat, args.repeat_slow, args.profile, set(args.skip))
        entry = {
            "label": args.label,
            "figures": args.figures,
            "rows": {"articles": -(-args.figures // PER_ARTICLE)},
            "repeat": args.repeat,
            "repeat_slow": args.repeat_slow,
            "skipped": args.skip,
            "machine": before,
            "load_after": machine()["load_average_1_5_15"],
            "store_mb": round((run / "run.sqlite").stat().st_size / 1e6, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "results": results,
        }
        print(json.dumps(entry, indent=2))
        if args.out:  # benchmarks/results/review_scale.json: {..., "runs": [...]}
            old = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
            old["runs"].append(entry)  # a list was written over it ([*old] was its keys)
            args.out.write_text(json.dumps(old, indent=2) + "\n")
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(root if args.root is None else run)


if __name__ == "__main__":
    main()
