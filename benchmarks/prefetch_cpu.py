"""Does making the next batch in a background thread (``TrainConfig.prefetch``) speed up
training on this CPU? Measures the shipped recipe's student (scratch CNN, batch 128, with
and without ``jpeg_blur`` 0.5) for one epoch on SYNTHETIC patches, prefetch off and on in
alternation, and checks that both give the same weights bit for bit.

Writes ``results/prefetch_cpu.json`` (patches/s per setting and repeat, the load average
before and after, the thread count). Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/prefetch_cpu.py --patches 3072 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent


def weights_sha(run: Path) -> str:
    import torch

    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    for k, v in sorted(state["state_dict"].items()):
        h.update(k.encode() + v.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def one_run(data, val, *, jpeg_blur: float, prefetch: bool, threads: int, out: Path) -> dict:
    from histomodels.config import TrainConfig
    from histomodels.training import train

    cfg = TrainConfig(
        model="cnn", jpeg_blur=jpeg_blur, epochs=1, threads=threads, progress=False,
        prefetch=prefetch,
    )  # fmt: skip
    res = train(cfg, out, train_data=data, val_data=val)
    return {"patches_per_s": round(res.train_patches_per_s, 1), "sha": weights_sha(out)}


def main(argv: list[str] | None = None) -> int:
    import torch

    from histomodels.synthetic import make_patches

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--patches", type=int, default=3072)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--results", type=Path, default=HERE / "results" / "prefetch_cpu.json")
    args = p.parse_args(argv)
    data = make_patches(args.patches, seed=0)
    val = make_patches(256, seed=1)
    load_before = os.getloadavg()
    rows: dict[str, list[float]] = {}
    shas: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for jpeg_blur in (0.5, 0.0):
                for prefetch in (False, True) if r % 2 == 0 else (True, False):
                    key = f"jpeg_blur={jpeg_blur} prefetch={'on' if prefetch else 'off'}"
                    out = Path(tmp) / f"{r}_{jpeg_blur}_{prefetch}"
                    got = one_run(
                        data, val, jpeg_blur=jpeg_blur, prefetch=prefetch,
                        threads=args.threads, out=out,
                    )  # fmt: skip
                    rows.setdefault(key, []).append(got["patches_per_s"])
                    shas.setdefault(f"jpeg_blur={jpeg_blur}", set()).add(got["sha"])
                    print(f"repeat {r}: {key}: {got['patches_per_s']:.0f} patches/s", flush=True)
    res = {
        "what": "train patches/s, scratch CNN, batch 128, 1 epoch, SYNTHETIC patches",
        "patches": args.patches,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "patches_per_s": rows,
        "median_patches_per_s": {k: sorted(v)[len(v) // 2] for k, v in rows.items()},
        "same_weights_on_and_off": {k: len(v) == 1 for k, v in shas.items()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(res, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: res[k]
                for k in (
                    "median_patches_per_s",
                    "same_weights_on_and_off",
                    "loadavg_before",
                    "loadavg_after",
                )
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
