"""The shipped ``pcam-cnn`` recipe on a GPU: real dev data, and one epoch at full PCam size.

Issue 11 asks, when a GPU is lent, to train there to show the recipe scales. The device
machine reaches nothing outside itself and takes at most 64 MiB a call, so the real
training patches (``train.h5``, 102 MB of lossless WebP/JPEG bytes) travel in two parts, one
per call, byte for byte; the machine keeps the first part while it stays warm. Three steps:

``pack`` (here)
    Writes ``train.h5``'s training rows (origin ``kaggle_train``/``pcam_train``, in file
    order) into ``OUT/a/train_a.h5`` and ``OUT/b/train_b.h5`` (the encoded bytes copied,
    not re-encoded), split so that part a is at most ``--part-mb``. Carry each part under
    its own top-level folder (a second call replaced ``.gpudata/a`` when it carried
    ``.gpudata/b``) and copy both into one ``--parts`` folder there (docs/benchmarks.md,
    "GPU check", has the calls that worked).
``device`` (on the GPU machine)
    ``full-size``: one epoch of the recipe's student (scratch CNN, ``jpeg_blur`` 0.5,
    batch 128, no teacher) over 262,144 patches (the size of PCam's training split: the
    available real patches repeated), capped by a time budget; patches/s, GPU memory, and
    inference at that size. ``recipe``: with both parts there, the same splits as the CPU
    build (``pcam_real.dev_splits``: fit / stratified 15 % select), the Lite0 teacher for 6
    epochs and the distilled student for 60 (``build_pcam_cnn.train_recipe``) on CUDA;
    brings back both checkpoints (0.4 and 14 MB). ``--synthetic [N]``: the full-size step
    on N SYNTHETIC patches (default 8,192) instead of the parts, so a throughput check
    carries no data; ``--prefetch on|off`` pins ``TrainConfig.prefetch`` (default auto).
``score`` (here)
    Scores what came back exactly as the CPU build is scored
    (``build_pcam_cnn.score_checkpoint``: temperature and threshold on select, all of PCam
    valid reported with bootstrap CIs) and writes ``results/gpu_recipe.json`` beside the
    CPU build's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL_SIZE = 262_144  # PCam's training split
PARTS = ("a", "b")


def pack(data_dir: Path, out: Path, part_mb: float) -> dict:
    """Copy the training rows' encoded bytes into two HDF5 parts (same layout as the dev
    files, no manifest needed: the rows are already the training origins)."""
    import h5py
    import numpy as np
    from pcam_real import TRAIN_ORIGINS

    from histomodels.data.encoded import rows_of_origin
    from histomodels.data.h5safe import dataset

    src = data_dir / "train.h5"
    rows = rows_of_origin(src, TRAIN_ORIGINS)
    with h5py.File(src, "r") as f:
        encoded = dataset(f, "encoded", src)
        enc = [np.asarray(encoded[int(r)], dtype=np.uint8) for r in rows]
        y = np.asarray(dataset(f, "y", src)[:])[rows]
        ids = np.asarray(dataset(f, "patch_id", src)[:])[rows]
        codec = np.asarray(dataset(f, "stored_codec", src)[:])[rows]
    sizes = np.cumsum([len(e) for e in enc])
    cut = int(np.searchsorted(sizes, part_mb * 1e6))
    info: dict[str, object] = {"rows": len(rows), "bytes": int(sizes[-1]), "cut": cut}
    for name, part in zip(PARTS, (slice(0, cut), slice(cut, None)), strict=True):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / f"train_{name}.h5", "w") as g:
            ds = g.create_dataset(
                "encoded", (len(enc[part]),), dtype=h5py.vlen_dtype(np.dtype("uint8"))
            )
            for i, e in enumerate(enc[part]):
                ds[i] = e
            g["y"] = y[part]
            g["patch_id"] = ids[part]
            g["stored_codec"] = codec[part]
        info[name] = {
            "rows": len(enc[part]),
            "mb": round((folder / f"train_{name}.h5").stat().st_size / 1e6, 2),
        }
    return info


def load_parts(
    parts: Path, only: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode the parts that are here (of ``only``, if given), in order: (uint8 images,
    float labels, names)."""
    import torch

    from histomodels.data import open_dataset
    from histomodels.training import load_split

    xs, ys, names = [], [], []
    for name in only or PARTS:
        f = parts / name / f"train_{name}.h5"
        if f.is_file():
            x, y = load_split(open_dataset(f), "train")
            xs.append(x)
            ys.append(y)
            names.append(name)
    if not xs:
        raise FileNotFoundError(f"{parts}: no train_a.h5 / train_b.h5 parts")
    return torch.cat(xs), torch.cat(ys), names


def full_size(
    x, y, out: Path, *, size: int, minutes: float, threads: int, prefetch: bool | None = None
) -> dict:
    """One epoch of the student recipe over ``size`` patches (``x`` repeated), cut at
    ``minutes``; then inference over the same patches. ``prefetch``: ``TrainConfig.prefetch``
    (None = auto: on for CUDA)."""
    import numpy as np
    import torch

    from histomodels.config import TrainConfig
    from histomodels.inference import Predictor
    from histomodels.training import train

    reps = -(-size // len(x))
    idx = torch.arange(len(x)).repeat(reps)[:size]
    t0 = time.perf_counter()
    big = (x[idx].numpy(), y[idx].numpy().astype("int64"))
    sel = (x[:1024].numpy(), y[:1024].numpy().astype("int64"))
    build_s = time.perf_counter() - t0
    cfg = TrainConfig(
        model="cnn",
        jpeg_blur=0.5,
        epochs=1,
        patience=2,
        time_budget=minutes,
        threads=threads,
        progress=False,
        prefetch=prefetch,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = train(cfg, out / "full_size_run", train_data=big, val_data=sel)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    pred = Predictor.load(out / "full_size_run" / "best.pt", precision="auto")  # bf16 on CUDA
    t1 = time.perf_counter()
    logits = pred.logits(big[0], batch_size=1024)
    infer_s = time.perf_counter() - t1
    return {
        "patches": size,
        "distinct_real_patches": len(x),
        "host_array_gb": round(big[0].nbytes / 1e9, 2),
        "array_build_seconds": round(build_s, 1),
        "train_seconds": round(res.train_seconds, 1),
        "train_patches_per_s": round(res.train_patches_per_s, 1),
        "patches_trained": round(res.train_seconds * res.train_patches_per_s),
        "stop_reason": res.stop_reason,
        "gpu_peak_gib": round(gpu_peak, 2),
        "inference_patches_per_s": round(size / infer_s, 1),
        "inference": f"{pred.precision} on {pred.device.type}, batch 1024",
        "logits_finite": bool(np.isfinite(logits).all()),
        "config": {"model": "cnn", "jpeg_blur": 0.5, "batch_size": cfg.batch_size},
        "prefetch": "auto" if prefetch is None else prefetch,
    }


def device(
    parts: Path,
    out: Path,
    work: Path,
    *,
    steps: list[str],
    minutes: float,
    threads: int,
    size: int = FULL_SIZE,
    epochs: int | None = None,
    teacher_epochs: int | None = None,
    limit: int | None = None,
    synthetic: int = 0,
    prefetch: bool | None = None,
) -> int:
    """Run ``steps`` on this (GPU) machine; run folders go to ``work``, what comes back
    (JSON, the two checkpoints) to ``out``. ``synthetic``: that many SYNTHETIC patches
    (:func:`histomodels.synthetic.make_patches`) instead of the parts, for the full-size
    step only (a throughput check that carries no data)."""
    import numpy as np
    import torch
    from build_pcam_cnn import (
        EPOCHS,
        JPEG_BLUR,
        TEACHER_EPOCHS,
        TEACHER_INPUT_SIZE,
        train_recipe,
    )
    from pcam_real import SELECT_FRACTION, stratified_split

    from histocore.cli import setup_logging

    setup_logging()
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": threads,
    }
    t0 = time.perf_counter()
    if synthetic:
        if "recipe" in steps:
            raise SystemExit("--synthetic measures the full-size step only (--steps full-size)")
        from histomodels.synthetic import make_patches

        xs, ys = make_patches(synthetic, seed=0)
        x, y, names = torch.from_numpy(xs), torch.from_numpy(ys).float(), ["synthetic"]
    else:
        x, y, names = load_parts(parts)
    if limit:  # dry runs
        x, y = x[:limit], y[:limit]
    print(f"parts {names}: {len(x)} patches decoded in {time.perf_counter() - t0:.0f} s")
    if "full-size" in steps:
        res = {
            "environment": env,
            "parts": names,
            **full_size(x, y, work, size=size, minutes=minutes, threads=threads, prefetch=prefetch),
        }
        if synthetic:  # the patches are not real: say so in the figures that come back
            res["distinct_synthetic_patches"] = res.pop("distinct_real_patches")
        (out / "full_size.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
    if "recipe" in steps:
        if names != list(PARTS):
            print(
                f"recipe: only parts {names} are here (the machine was not kept warm); "
                "training on them anyway, NOT the full dev data"
            )
        fit_i, sel_i = stratified_split(y, SELECT_FRACTION)
        fit = (x[fit_i].numpy(), y[fit_i].numpy().astype("int64"))
        sel = (x[sel_i].numpy(), y[sel_i].numpy().astype("int64"))
        t1 = time.perf_counter()
        teacher, res, train_s = train_recipe(
            fit,
            sel,
            work / "recipe",
            epochs=epochs or EPOCHS,
            teacher_epochs=TEACHER_EPOCHS if teacher_epochs is None else teacher_epochs,
            teacher_input_size=TEACHER_INPUT_SIZE,
            jpeg_blur=JPEG_BLUR,
            threads=threads,
        )
        info = {
            "environment": env,
            "parts": names,
            "fit": len(fit[1]),
            "select": len(sel[1]),
            "wall_seconds": round(time.perf_counter() - t1, 1),
            "teacher_seconds": teacher["train_seconds"] if teacher else 0.0,
            "teacher_best_epoch": teacher["best_epoch"] if teacher else None,
            "student_seconds": round(train_s, 1),
            "student_patches_per_s": round(res.train_patches_per_s, 1),
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "history": res.history,
            "fit_labels_sum": int(np.asarray(fit[1]).sum()),
        }
        (out / "recipe.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        shutil.copy(work / "recipe" / "best.pt", out / "student.pt")
        if teacher:
            shutil.copy(teacher["checkpoint"], out / "teacher.pt")
        print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1))
    return 0


def score(
    run: Path,
    data_dir: Path,
    parts: Path,
    results: Path,
    *,
    reference: Path | None = None,
    full_size_json: Path | None = None,
) -> dict:
    """Score the student and teacher of ``run`` (and of a ``reference`` run of the same
    script elsewhere, e.g. on CPU) as the CPU build is scored: temperature and threshold on
    the select split each run used (rebuilt from the same parts), all of PCam valid as the
    report. Writes ``results``."""
    from pcam_real import VAL_ORIGINS

    from histomodels.data import open_dataset
    from histomodels.training import load_split

    report = load_split(open_dataset(data_dir / "valid.h5", origin_split=VAL_ORIGINS), "report")
    out: dict = {"device": _score_run(run, parts, report)}
    if reference is not None:
        out["reference"] = _score_run(reference, parts, report)
    out["full_size"] = json.loads(full_size_json.read_text()) if full_size_json else None
    cpu = json.loads(
        (HERE.parent / "packages/histomodels/src/histomodels/pretrained/pcam-cnn.json").read_text()
    )
    out["shipped_cpu_build"] = cpu["metrics_pcam_valid"]
    used = out["device"]["recipe"]
    out["note"] = (
        f"trained on parts {used['parts']} of {list(PARTS)} ({used['fit']} fit, "
        f"{used['select']} select); scored on CPU in fp32; temperature and threshold on each "
        f"run's own select; report: all {len(report[1])} PCam valid patches"
    )
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return out


def _score_run(run: Path, parts: Path, report) -> dict:
    import numpy as np
    from build_pcam_cnn import score_checkpoint
    from pcam_real import SELECT_FRACTION, stratified_split

    recipe = json.loads((run / "recipe.json").read_text())
    x, y, names = load_parts(parts, only=recipe["parts"])
    fit_i, sel_i = stratified_split(y, SELECT_FRACTION)
    if len(fit_i) != recipe["fit"] or int(np.asarray(y[fit_i]).sum()) != recipe["fit_labels_sum"]:
        raise SystemExit(f"{parts}: parts {names} do not rebuild the fit split of {run}")
    splits = {"select": (x[sel_i], y[sel_i]), "report": report}
    out: dict = {"run": str(run), "recipe": recipe}
    for name in ("student", "teacher"):
        ckpt = run / f"{name}.pt"
        if ckpt.is_file():
            _, metrics, chosen = score_checkpoint(ckpt, splits)
            out[name] = {"metrics_pcam_valid": metrics, **{k: chosen[k] for k in chosen}}
    return out


def main(argv: list[str] | None = None) -> int:
    from pcam_real import DEFAULT_DATA

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    a.add_argument("--out", type=Path, default=HERE.parent / ".gpudata")
    a.add_argument("--part-mb", type=float, required=True)
    d = sub.add_parser("device")
    d.add_argument("--parts", type=Path, default=HERE.parent / ".gpudata")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--work", type=Path, default=Path("/tmp/gpu_recipe_work"))
    d.add_argument("--steps", default="full-size,recipe")
    d.add_argument("--minutes", type=float, default=1.5, help="full-size epoch time cap")
    d.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    d.add_argument("--size", type=int, default=FULL_SIZE, help="full-size patches")
    d.add_argument("--epochs", type=int, help="student epochs (dry runs; default: the build's)")
    d.add_argument("--teacher-epochs", type=int, help="(dry runs; default: the build's)")
    d.add_argument("--limit", type=int, help="first N decoded patches only (dry runs)")
    d.add_argument(
        "--synthetic",
        type=int,
        nargs="?",
        const=8192,
        default=0,
        help="full-size step on N SYNTHETIC patches (default 8192) instead of the parts",
    )
    d.add_argument("--prefetch", choices=("auto", "on", "off"), default="auto")
    s = sub.add_parser("score")
    s.add_argument("run", type=Path)
    s.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    s.add_argument("--parts", type=Path, default=HERE.parent / ".gpudata")
    s.add_argument("--results", type=Path, default=HERE / "results" / "gpu_recipe.json")
    s.add_argument("--reference", type=Path, help="a run of the same script elsewhere (CPU)")
    s.add_argument("--full-size", type=Path, help="the device's full_size.json to include")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        print(json.dumps(pack(args.data_dir, args.out, args.part_mb), indent=1))
        return 0
    if args.cmd == "device":
        return device(
            args.parts,
            args.out,
            args.work,
            steps=args.steps.split(","),
            minutes=args.minutes,
            threads=args.threads,
            size=args.size,
            epochs=args.epochs,
            teacher_epochs=args.teacher_epochs,
            limit=args.limit,
            synthetic=args.synthetic,
            prefetch={"auto": None, "on": True, "off": False}[args.prefetch],
        )
    res = score(
        args.run,
        args.data_dir,
        args.parts,
        args.results,
        reference=args.reference,
        full_size_json=args.full_size,
    )
    rows = [("shipped_cpu_build", res["shipped_cpu_build"])]
    for run in ("device", "reference"):
        for name in ("student", "teacher"):
            if name in res.get(run, {}):
                rows.append((f"{run} {name}", res[run][name]["metrics_pcam_valid"]))
    for label, m in rows:
        t = m["at_threshold"]
        print(
            f"{label}: PCam valid AUC {t['roc_auc']:.4f} acc {t['accuracy']:.3f} "
            f"recall {t['recall']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
