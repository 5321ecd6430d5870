"""Per-record work time of extract and filter on the real PDFs in /work/shared: what the
pool's per-record time limit (``--record-timeout``) must leave room for.

Each PDF of ``fixtures/pdfs`` and ``data/pdfs`` (their PROVENANCE.md: real articles with
H&E, charts and photos, reports, and malformed/encrypted PDFs) is ingested into a fresh run
and each record's work is timed as a worker runs it: ``extract_record`` (PyMuPDF,
pdfplumber's cross-check), then ``filter_record`` (decode, split panels, score by colour and
the classifier, decide), one record at a time in this process, on whatever load the machine
has (the load average is recorded). Worker start-up is not timed, like the limit.

Usage::

    nice -n 10 python benchmarks/record_times.py      # prints a table, writes the JSON

Results go to ``benchmarks/results/record_times.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from histocore.manifest import Manifest
from histofetch.extract import extract_record, ingest_local
from histofetch.filter import Thresholds, filter_record

SHARED = Path(os.environ.get("HISTO_SHARED", "/work/shared"))
FOLDERS = [SHARED / "fixtures" / "pdfs", SHARED / "data" / "pdfs"]


def _timed(work, manifest: Manifest, rec) -> tuple[float, str | None]:
    start = time.perf_counter()
    try:
        work(manifest, rec)
    except Exception as exc:  # a bad PDF fails its record: still a time
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"[:80]
    return time.perf_counter() - start, None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/record_times.json"))
    args = parser.parse_args()
    pdfs = sorted(p for folder in FOLDERS if folder.is_dir() for p in folder.glob("*.pdf"))
    if not pdfs:
        raise SystemExit(f"no PDFs under {', '.join(map(str, FOLDERS))}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Manifest.load(Path(tmp), create=True) as m:
        records = ingest_local(m, pdfs)
        limits = Thresholds.from_kwargs(0.3)
        for rec in records:
            t_extract, failed = _timed(extract_record, m, rec)
            t_filter = None
            if failed is None:
                t_filter, failed = _timed(
                    lambda mm, r: filter_record(mm, r, limits=limits, panels=True), m, rec
                )
            name = Path(rec.pdf_path or rec.id).name
            rows.append(
                {"pdf": name, "mb": round(Path(m.resolve(rec.pdf_path or "") or "").stat().st_size
                 / 1e6, 2), "images": len(m.images_of(rec.id)), "extract_s": round(t_extract, 2),
                 "filter_s": None if t_filter is None else round(t_filter, 2), "failed": failed}
            )  # fmt: skip
            print(
                f"{name[:60]:60s} {rows[-1]['mb']:5.1f} MB {rows[-1]['images']:4d} img "
                f"extract {t_extract:6.2f} s  filter {t_filter or 0:6.2f} s  {failed or ''}",
                flush=True,
            )
    slowest = max(r["extract_s"] + (r["filter_s"] or 0) for r in rows)
    load = os.getloadavg()
    result = {
        "rows": rows,
        "slowest_record_s": round(slowest, 2),
        "load_average": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"slowest record (extract + filter): {slowest:.1f} s; load average {load[0]:.1f} "
          f"on {os.cpu_count()} cores")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
