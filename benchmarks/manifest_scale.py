"""Run-store overhead at scale: synthetic runs of 1k and 10k articles x 30 images.

What it measures is the cost of the *bookkeeping* of histofetch's per-record stages, not
of their work: every stage runs through ``histofetch.stage.run_per_record`` with work
functions that only change rows in memory (extract: add 30 image rows per record; filter:
set the scores and the decision of those 30 rows), so the times are what the run store
adds to a stage: load, claim + commit of each record (one transaction with its 30 image
rows), and the final commit + ``manifest.jsonl`` export. For comparison, the code before
the store rewrote the whole ``manifest.jsonl`` after every record, i.e. one full export per
record (quadratic in the run's size).

Targets (issue 13, 2 cores): per-record commit <= 10 ms at 10k articles (300k images),
store overhead per stage < 2 minutes.

Usage::

    nice -n 10 python benchmarks/manifest_scale.py                 # 1k and 10k articles
    python benchmarks/manifest_scale.py --articles 200 --images 5  # smoke test

Results go to ``benchmarks/results/manifest_scale.json`` (``--out``) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from histocore.manifest import Image, Manifest, Record
from histofetch.stage import run_per_record


def _timed_commits(manifest: Manifest, times: list[float], cpu: list[float]) -> None:
    """Record the wall and CPU time of every ``commit_record`` (claim excluded)."""
    commit = manifest.commit_record

    def timed(record_id: str, **kw: Any) -> None:
        start_cpu = time.thread_time()
        start = time.perf_counter()
        commit(record_id, **kw)
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)

    manifest.commit_record = timed  # type: ignore[method-assign]


def _stats(times: list[float]) -> dict[str, float | None]:
    ordered = sorted(times)
    return {
        "mean_ms": round(1000 * statistics.fmean(ordered), 3),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
        "p95_ms": round(1000 * ordered[int(len(ordered) * 0.95)], 3),
        "max_ms": round(1000 * ordered[-1], 3),
        # the run's last 1000 records, when the store is fullest
        "last_1000_mean_ms": round(1000 * statistics.fmean(times[-1000:]), 3)
        if len(times) >= 1000
        else None,
    }


def _image(rec_id: str, n: int) -> Image:
    return Image(
        id=f"{rec_id}/p{n // 4 + 1:03d}_{n % 4 + 1:03d}",
        record_id=rec_id,
        path=f"images/{rec_id.replace(':', '_')}/p{n // 4 + 1:03d}_{n % 4 + 1:03d}.png",
        sha256=f"{hash((rec_id, n)) & (2**64 - 1):016x}" * 4,
        width=800 + n,
        height=600 + n,
        page=n // 4 + 1,
        bbox=[10.0, 20.0, 410.0, 320.0],
        caption=f"Figure {n // 4 + 1}: haematoxylin and eosin staining of a lymph node",
        extra={"xref": 10 + n, "pixel_sha256": "ab" * 32},
    )


def one_size(articles: int, images: int, root: Path) -> dict[str, Any]:
    run = root / f"run_{articles}"
    out: dict[str, Any] = {"articles": articles, "images_per_article": images}

    start = time.perf_counter()  # "search": every record added in one commit + export
    m = Manifest.load(run, create=True)
    m.query = "lymph node metastasis breast cancer"
    for i in range(articles):
        m.add_record(
            Record(
                id=f"pmid:{30000000 + i}",
                pmid=str(30000000 + i),
                pmcid=f"PMC{900000 + i}",
                title=f"Synthetic article {i} on sentinel lymph node metastasis",
                journal="J Synthetic Pathol",
                year=2000 + i % 25,
                stage="downloaded",
                pdf_path=f"pdfs/pmid_{30000000 + i}.pdf",
            )
        )
    m.save()
    out["search_commit_s"] = round(time.perf_counter() - start, 2)
    del m

    def extract_work(manifest: Manifest):
        def work(rec: Record) -> None:
            manifest.drop_images_of(rec.id)
            for n in range(images):
                manifest.add_image(_image(rec.id, n))
            rec.n_images = images

        return work

    def filter_work(manifest: Manifest):
        def work(rec: Record) -> None:
            for img in manifest.images_of(rec.id):
                img.purple_ratio, img.he_score, img.tissue_fraction = 0.61, 0.72, 0.33
                img.kept, img.filter_reason = True, None
                img.extra["colour"] = {"tissue_blocks": 12, "scorer": 3}

        return work

    for stage, make_work in (("extracted", extract_work), ("filtered", filter_work)):
        t0, cpu_load = time.perf_counter(), time.process_time()
        m = Manifest.load(run)
        load_s, load_cpu = time.perf_counter() - t0, time.process_time() - cpu_load
        commits: list[float] = []
        commits_cpu: list[float] = []
        _timed_commits(m, commits, commits_cpu)
        cpu0 = time.process_time()
        summary = run_per_record(m, stage, make_work(m))
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert summary.done == articles, summary.line()
        out[stage] = {
            "load_s": round(load_s, 2),
            "load_cpu_s": round(load_cpu, 2),
            "stage_total_s": round(total, 2),
            "stage_cpu_s": round(cpu, 2),
            "per_record_commit": _stats(commits),
            "per_record_commit_cpu": _stats(commits_cpu),
            "per_record_total_ms": round(1000 * (total - load_s) / articles, 3),
        }
        del m

    m = Manifest.load(run)
    t0, cpu0 = time.perf_counter(), time.process_time()
    m.export()
    out["export_s"] = round(time.perf_counter() - t0, 2)
    out["export_cpu_s"] = round(time.process_time() - cpu0, 2)
    out["manifest_mb"] = round((run / "manifest.jsonl").stat().st_size / 2**20, 1)
    out["store_mb"] = round((run / "run.sqlite").stat().st_size / 2**20, 1)
    out["old_code_per_record_s"] = out["export_s"]  # it rewrote the whole file per record
    out["old_code_stage_estimate_min"] = round(articles * out["export_s"] / 2 / 60, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--articles", default="1000,10000", help="Comma-separated sizes.")
    parser.add_argument("--images", type=int, default=30, help="Images per article.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/manifest_scale.json"))
    args = parser.parse_args()
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="manifest_scale_") as tmp:
        for articles in [int(a) for a in args.articles.split(",")]:
            res = one_size(articles, args.images, Path(tmp))
            results.append(res)
            ex, fi = res["extracted"], res["filtered"]
            print(
                f"{articles:>6} articles x {args.images} images: commit/record wall (CPU) "
                f"extract {ex['per_record_commit']['mean_ms']:.2f} "
                f"({ex['per_record_commit_cpu']['mean_ms']:.2f}) ms, "
                f"filter {fi['per_record_commit']['mean_ms']:.2f} "
                f"({fi['per_record_commit_cpu']['mean_ms']:.2f}) ms; stage overhead wall (CPU) "
                f"extract {ex['stage_total_s']:.1f} ({ex['stage_cpu_s']:.1f}) s, "
                f"filter {fi['stage_total_s']:.1f} ({fi['stage_cpu_s']:.1f}) s; "
                f"export {res['export_s']:.1f} s ({res['manifest_mb']} MB); "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    report = {
        "benchmark": "manifest_scale",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "sqlite": __import__("sqlite3").sqlite_version,
            # other processes competing for the cores: wall times grow with it, CPU times do not
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
