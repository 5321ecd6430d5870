"""Inference throughput (patches/s) per model and execution path on a fixed number of CPU
threads (default 2, the project's reference machine).

Paths:
- ``eager_fp32``: PyTorch eager, contiguous NCHW, float32 (the baseline);
- ``eager_cl_bf16``: channels_last + bf16 autocast (what ``histomodels predict`` uses for
  the ``cnn`` on CPUs with AVX512-BF16/AMX);
- ``eager_cl_fp32``: channels_last, float32;
- ``compile_fp32`` / ``compile_cl_bf16``: ``torch.compile`` (inductor) of the above;
- ``onnxruntime``: the model exported by ``histomodels export`` (dynamo exporter), run by
  ONNX Runtime's CPU provider with the same thread count.

Timing covers the network only (input already normalised, batch 256 by default), after
warm-up, best of ``--repeats``; untrained weights (throughput does not depend on them).
The target is >= 1,000 patches/s for the default model's best path on 2 cores.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/inference_throughput.py            # full
    python benchmarks/inference_throughput.py --models cnn --patches 64 \\
        --batch-size 32 --repeats 1 --paths eager_fp32,onnxruntime \\
        --out /tmp/throughput_smoke.json                                      # smoke test

Results go to ``benchmarks/results/inference_throughput.json`` (``--out``) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

PATHS = (
    "eager_fp32",
    "eager_cl_fp32",
    "eager_cl_bf16",
    "compile_fp32",
    "compile_cl_bf16",
    "onnxruntime",
)
MODELS = ("cnn", "mobilenet_v3_small", "efficientnet_b0")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument(
        "--model-config",
        type=json.loads,
        default={},
        help='architecture kwargs (JSON) for every model, e.g. \'{"centre": "branch"}\'',
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patches", type=int, default=2048, help="patches per timed repeat")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "inference_throughput.json"
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    torch.set_num_threads(args.threads)
    from histomodels.checkpoint import make_checkpoint, save_checkpoint
    from histomodels.export import _Logit, export_checkpoint
    from histomodels.inference import cpu_has_fast_bf16
    from histomodels.models import create_model

    results: list[dict] = []
    x = torch.randn(args.batch_size, 3, 96, 96)
    n_batches = max(1, args.patches // args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="histo-bench-"))

    def timed(fn) -> float:
        fn()  # warm-up (and compilation)
        fn()
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(n_batches):
                fn()
            best = min(best, time.perf_counter() - t)
        return n_batches * args.batch_size / best

    for name in args.models.split(","):
        model = create_model(name, pretrained=False, **args.model_config).eval()
        net = _Logit(model).eval()
        for path in args.paths.split(","):
            row = {"model": name, "path": path}
            try:
                if path == "onnxruntime":
                    import onnxruntime as ort

                    ck = save_checkpoint(
                        tmp / f"{name}.pt", make_checkpoint(model, name, args.model_config)
                    )
                    export_checkpoint(ck, "onnx", tmp / f"{name}.onnx")
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = args.threads
                    opts.inter_op_num_threads = 1
                    sess = ort.InferenceSession(
                        str(tmp / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"]
                    )
                    xn = x.numpy()
                    row["patches_per_s"] = timed(lambda s=sess, a=xn: s.run(None, {"input": a}))
                else:
                    cl = "_cl_" in path
                    bf16 = path.endswith("bf16")
                    m = net.to(memory_format=torch.channels_last) if cl else net
                    xi = x.contiguous(memory_format=torch.channels_last) if cl else x
                    if path.startswith("compile"):
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            m = torch.compile(m, dynamic=False)

                    def run(m=m, xi=xi, bf16=bf16) -> None:
                        with (
                            torch.inference_mode(),
                            torch.autocast("cpu", torch.bfloat16, enabled=bf16),
                        ):
                            m(xi)

                    row["patches_per_s"] = timed(run)
            except Exception as exc:  # report, keep going with the other paths
                row["error"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            results.append(row)
            rate = row.get("patches_per_s")
            print(
                f"{name:20s} {path:16s} "
                + (f"{rate:9.0f} patches/s" if rate else f"failed: {row['error']}"),
                flush=True,
            )
        del model, net

    best = {}
    for r in results:
        if r.get("patches_per_s") and r["patches_per_s"] > best.get(r["model"], {}).get(
            "patches_per_s", 0
        ):
            best[r["model"]] = r
    summary = {
        "threads": args.threads,
        "model_config": args.model_config,
        "batch_size": args.batch_size,
        "patches_per_repeat": n_batches * args.batch_size,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "results": results,
        "best_per_model": {
            k: {"path": v["path"], "patches_per_s": v["patches_per_s"]} for k, v in best.items()
        },
    }
    if "cnn" in best:
        summary["target_met"] = best["cnn"]["patches_per_s"] >= 1000
        print(
            f"default model best path: {best['cnn']['path']} "
            f"{best['cnn']['patches_per_s']:.0f} patches/s (target 1000)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
