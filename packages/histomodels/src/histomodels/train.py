"""Training loop: in-memory data, AdamW, cosine/plateau LR, early stopping on val AUC.

Datasets are decoded once into uint8 arrays (random reads of gzip-chunked HDF5 starve the
trainer), batches are augmented as uint8 and normalised on the fly. Each epoch writes
``last.pt`` (everything needed to resume: weights, optimizer, scheduler, history, RNG,
elapsed time) and, when validation AUC improves, ``best.pt``. A ``time_budget`` (minutes)
stops training cleanly, reserving time for the final validation. Under ``torchrun`` the
same code runs DistributedDataParallel (see :mod:`histomodels.distributed`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histomodels import distributed as D
from histomodels.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint
from histomodels.config import TrainConfig, validate
from histomodels.data.base import ArrayDataset, DatasetError, PatchDataset, open_dataset
from histomodels.data.blocks import BlockImages
from histomodels.data.cache import decoded_bytes, default_budget
from histomodels.data.stain import stain_normalizer
from histomodels.device import autocast, pick_device, set_threads, use_bf16
from histomodels.models import create_model
from histomodels.models.weights import split_parameters
from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "lr",
    "epoch_seconds",
    "elapsed_seconds",
    "train_patches_per_s",
    "val_patches_per_s",
    "frozen_backbone",
)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    stop_reason: str  # early | budget | epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    train_patches_per_s: float = 0.0
    val_patches_per_s: float = 0.0
    train_seconds: float = 0.0


# ----------------------------------------------------------------------------- data


DataSpec = PatchDataset | str | Path | tuple


def load_split(
    spec: DataSpec, role: str, *, stream: bool = True
) -> tuple[torch.Tensor | BlockImages, torch.Tensor]:
    """Decode a dataset once: ``(uint8 [N, H, W, 3] tensor, float labels [N])``.

    A dataset whose decoded size exceeds the in-memory cache budget
    (:func:`histomodels.data.cache.default_budget`: ``HISTOMODELS_CACHE_BYTES`` or half the
    free memory) is not decoded: with ``stream`` its images come back as a
    :class:`~histomodels.data.blocks.BlockImages` read in contiguous blocks during training.
    Labels must all be 0 or 1 (a patch without a label cannot be trained or validated on).
    """
    if isinstance(spec, tuple):
        spec = ArrayDataset(spec[0], spec[1], source=f"{role} arrays")
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.exists():
            raise DatasetError(f"{path}: {role} data not found")
        spec = open_dataset(path)
    name = getattr(spec, "source", "") or role
    if stream and not isinstance(spec, ArrayDataset) and decoded_bytes(spec) > default_budget():
        images: Any = BlockImages(spec)
        labels = np.asarray(spec.labels())
    else:
        images, labels, _ = spec.load_all()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DatasetError(
                f"{name}: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        images = torch.from_numpy(np.ascontiguousarray(images))
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        i = int(bad[0])
        ids = spec.ids()
        raise DatasetError(
            f"{name}: {len(bad)} {role} patches have labels other than 0/1, e.g. "
            f"{ids[i] if i < len(ids) else i!r} has {labels[i]}"
        )
    return images, torch.from_numpy(labels.astype(np.float32))


# ------------------------------------------------------------------------ augmentation


def dihedral(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-patch random flip/rotation (the 8 symmetries of the square) on uint8 NHWC."""
    out = batch.clone()
    ops = torch.randint(0, 8, (len(batch),), generator=gen)
    for op in range(1, 8):
        idx = (ops == op).nonzero().flatten()
        if len(idx) == 0:
            continue
        x = batch[idx]
        if op & 4:
            x = x.flip(2)
        out[idx] = torch.rot90(x, op & 3, dims=(1, 2))
    return out


def make_augment(cfg: TrainConfig, seed: int):
    """The data engineer's histology Augment when available, else dihedral flips only."""
    if cfg.aug_strength <= 0:
        return lambda b: b
    try:
        from histomodels.data.transforms import Augment
    except ImportError:
        gen = torch.Generator().manual_seed(seed)
        return lambda b: dihedral(b, gen)
    return Augment(strength=cfg.aug_strength, hed_jitter=cfg.hed_jitter, seed=seed)


# ------------------------------------------------------------------------ optimisation


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone/head x decay/no-decay (norms and biases are not decayed)."""
    try:
        backbone, head = split_parameters(model)
    except ValueError:
        backbone, head = list(model.parameters()), []
    groups = []
    for part, mult in ((backbone, cfg.backbone_lr_mult), (head, 1.0)):
        decay = [p for p in part if p.ndim > 1]
        no_decay = [p for p in part if p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": mult})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_mult": mult})
    return groups


class LRSchedule:
    """Linear warm-up, then cosine decay (or constant / reduce-on-plateau); resumable.

    Progress for the cosine is the larger of steps done / total steps and time used /
    time budget, so a budgeted run still anneals the learning rate before it stops.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = int(cfg.warmup_epochs * steps_per_epoch)
        self.step_count = 0
        self.plateau_scale = 1.0
        self.plateau_best = -math.inf
        self.plateau_bad = 0

    def factor(self, time_fraction: float = 0.0) -> float:
        s = self.step_count
        if self.warmup and s < self.warmup:
            return (s + 1) / self.warmup
        if self.cfg.schedule == "cosine":
            p = (s - self.warmup) / max(1, self.total - self.warmup)
            p = min(1.0, max(p, time_fraction))
            lo = self.cfg.min_lr_ratio
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))
        return self.plateau_scale

    def epoch_end(self, val_auc: float) -> None:
        if self.cfg.schedule != "plateau":
            return
        if val_auc > self.plateau_best + 1e-4:
            self.plateau_best, self.plateau_bad = val_auc, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > max(1, self.cfg.patience // 3):
                self.plateau_scale = max(self.plateau_scale * 0.3, self.cfg.min_lr_ratio)
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    backbone, _ = split_parameters(model)
    for p in backbone:
        p.requires_grad_(not frozen)


# ----------------------------------------------------------------------------- eval


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int = 256,
    bf16: bool = False,
    channels_last: bool = True,
) -> torch.Tensor:
    """Logits for uint8 NHWC ``images`` (eval mode, float32 result on CPU)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size], channels_last=channels_last, device=device)
        with autocast(device, bf16):
            out.append(model(x).float().flatten().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def val_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    y = labels.numpy()
    loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    prob = torch.sigmoid(logits).numpy()
    return {
        "val_loss": float(loss),
        "val_auc": float(roc_auc_score(y, prob)),
        "val_accuracy": float(((prob >= 0.5) == (y == 1)).mean()),
    }


# ---------------------------------------------------------------------------- outputs


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """history.csv, history.json and learning_curve.png (each written atomically)."""
    from histocore.io import atomic_write_text

    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
    lines = [",".join(HISTORY_FIELDS)]
    for row in history:
        lines.append(",".join(str(row.get(k, "")) for k in HISTORY_FIELDS))
    atomic_write_text(run_dir / "history.csv", "\n".join(lines) + "\n")
    plot_learning_curve(run_dir / "learning_curve.png", history)


def plot_learning_curve(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    a.set_xlabel("epoch")
    a.set_ylabel("BCE loss")
    a.legend()
    b.plot(ep, [h["val_auc"] for h in history], "o-", color="C2", label="val AUC")
    b.plot(ep, [h["val_accuracy"] for h in history], "o-", color="C3", label="val accuracy")
    b.set_xlabel("epoch")
    b.set_ylim(min(0.5, *[h["val_accuracy"] for h in history]) - 0.02, 1.0)
    b.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------- training


def _log(console, info: D.DistInfo, msg: str) -> None:
    if info.is_main and console is not None:
        console.print(msg)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    train_data: DataSpec | None = None,
    val_data: DataSpec | None = None,
    console: Any = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``train_data`` (or ``cfg.data``) and write the run to ``out``.

    ``resume=True`` continues from ``out/last.pt`` (its saved config wins over ``cfg``
    except for epochs, patience, time_budget, progress and threads).
    """
    run_dir = Path(out)
    cfg = validate(cfg)
    state = None
    if resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            raise TrainingError(f"{last}: nothing to resume (no last.pt in the run folder)")
        state = read_checkpoint(last)
        saved = TrainConfig(**state["train_config"])
        keep = ("epochs", "patience", "time_budget", "progress", "threads", "device")
        cfg = validate(saved.replace(**{k: getattr(cfg, k) for k in keep}))
    if console is None and cfg.progress:
        from rich.console import Console

        console = Console(stderr=True)

    device = pick_device(cfg.device)
    info = D.init_distributed(device)
    set_threads(cfg.threads)
    bf16 = use_bf16(cfg.model, device, cfg.bf16)
    seed = int(cfg.seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    x_train, y_train = load_split(
        train_data if train_data is not None else _need(cfg.data, "train"), "train"
    )
    x_val, y_val = load_split(
        val_data if val_data is not None else _need(cfg.val, "validation"), "validation"
    )
    stain = stain_normalizer(cfg.stain_norm) if cfg.stain_norm else None
    if stain is not None:
        _log(console, info, f"stain normalisation ({cfg.stain_norm}) of train and validation")

        def normalise(x: torch.Tensor | BlockImages) -> torch.Tensor | BlockImages:
            if isinstance(x, BlockImages):
                x.transform = stain.transform  # applied to each block as it is read
                return x
            return torch.from_numpy(stain.transform(x.numpy()))

        x_train, x_val = normalise(x_train), normalise(x_val)
    for role, x in (("train", x_train), ("validation", x_val)):
        if isinstance(x, BlockImages):
            _log(
                console,
                info,
                f"{role} data ({x.ds.source}) is larger than the in-memory cache budget: "
                f"streaming it in blocks of {x.block} patches (HISTOMODELS_CACHE_BYTES to change)",
            )
    if len(torch.unique(y_val)) < 2:
        raise DatasetError("validation data holds one class only; AUC is undefined")
    if len(x_train) < cfg.batch_size * info.world_size:
        cfg = cfg.replace(batch_size=max(1, len(x_train) // info.world_size))

    # model: from the weights source on a fresh run, from last.pt on resume
    if state is None:
        model = create_model(cfg.model, weights=cfg.weights, **cfg.model_config)
    else:
        model = create_model(cfg.model, pretrained=False, **cfg.model_config)
        model.load_state_dict(state["state_dict"])
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    groups = param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(D.shard(torch.arange(len(x_train)), info)) // cfg.batch_size)
    schedule = LRSchedule(cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if bf16 and device.type == "cuda" else None
    if scaler is not None and not scaler.is_enabled():
        scaler = None
    if scaler is not None and torch.cuda.is_bf16_supported():
        scaler = None  # bf16 needs no loss scaling

    history: list[dict[str, Any]] = []
    start_epoch, best_auc, best_epoch, elapsed_before = 0, -1.0, 0, 0.0
    best_metrics: dict[str, float] = {}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
        best_auc = float(state.get("best_auc", -1.0))
        best_epoch = int(state.get("best_epoch", 0))
        best_metrics = dict(state.get("best_metrics", {}))
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        _log(console, info, f"resuming {run_dir} after epoch {start_epoch}")

    model_config = dict(cfg.model_config)
    budget_s = cfg.time_budget * 60.0 if cfg.time_budget else math.inf
    loss_fn = nn.BCEWithLogitsLoss()
    n_train = len(x_train)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from histocore.io import atomic_write_text

        atomic_write_text(run_dir / "config.json", json.dumps(_json_safe(cfg.to_dict()), indent=2))

    def wrapped(frozen: bool) -> nn.Module:
        if cfg.freeze_epochs > 0:
            set_backbone_frozen(model, frozen)
        net: nn.Module = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
        return net

    frozen = start_epoch < cfg.freeze_epochs
    net = wrapped(frozen)
    t_start = time.perf_counter()
    val_reserve = len(x_val) / 500.0  # a first guess of validation seconds; measured later
    stop_reason = "epochs"
    last_train_rate = last_val_rate = 0.0
    total_train_patches, total_train_seconds = 0, 0.0
    epoch = start_epoch
    progress = _progress(console, cfg, info)
    last_epoch = cfg.epochs
    if state is not None:  # a resumed run that had already stopped stays stopped
        if start_epoch - best_epoch >= cfg.patience:
            stop_reason, last_epoch = "early", start_epoch
        elif elapsed_before >= budget_s:
            stop_reason, last_epoch = "budget", start_epoch
        if start_epoch >= last_epoch:
            _log(console, info, f"{run_dir}: already finished ({stop_reason}); nothing to do")

    with progress:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            now_frozen = epoch <= cfg.freeze_epochs
            if now_frozen != frozen:
                frozen = now_frozen
                net = wrapped(frozen)
                _log(console, info, "unfreezing the backbone")
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perm = (
                x_train.order(gen)
                if isinstance(x_train, BlockImages)
                else torch.randperm(n_train, generator=gen)
            )
            order = D.shard(perm, info)
            augment = make_augment(cfg, seed * 100_003 + epoch * 31 + info.rank)
            net.train()
            n_batches = max(1, len(order) // cfg.batch_size)
            task = (
                progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=n_batches)
                if progress
                else None
            )
            t_epoch = time.perf_counter()
            loss_sum, seen = 0.0, 0
            budget_hit = False
            for b in range(n_batches):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                xb = augment(x_train[idx])
                x = to_input(xb, channels_last=cfg.channels_last, device=device)
                y = y_train[idx].to(device)
                if cfg.label_smoothing:
                    y = y * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
                elapsed = elapsed_before + time.perf_counter() - t_start
                lr_factor = schedule.factor(elapsed / budget_s if budget_s < math.inf else 0.0)
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * g.get("lr_mult", 1.0) * lr_factor
                with autocast(device, bf16):
                    logits = net(x).float().flatten()
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.grad is not None], cfg.grad_clip
                    )
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                schedule.step_count += 1
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
                if task is not None:
                    progress.update(
                        task,
                        advance=1,
                        description=f"epoch {epoch}/{cfg.epochs} loss {loss_sum / seen:.3f}",
                    )
                elapsed = elapsed_before + time.perf_counter() - t_start
                budget_hit = D.any_flag(elapsed + val_reserve >= budget_s, info)
                if budget_hit:
                    break
            train_s = time.perf_counter() - t_epoch
            if task is not None:
                progress.remove_task(task)
            last_train_rate = seen * info.world_size / max(train_s, 1e-9)
            total_train_patches += seen * info.world_size
            total_train_seconds += train_s

            # validation: each rank predicts its shard, rank 0 scores the gathered whole
            t_val = time.perf_counter()
            vidx = D.shard(torch.arange(len(x_val)), info, drop_tail=False)
            logits = predict_logits(
                model,
                x_val[vidx] if info.enabled else x_val,
                device,
                batch_size=cfg.eval_batch_size,
                bf16=bf16,
                channels_last=cfg.channels_last,
            )
            logits = D.gather_cat(logits, info)
            order_all = D.gather_cat(vidx, info)
            val_s = time.perf_counter() - t_val
            val_reserve = val_s * 1.2 + 1.0
            last_val_rate = len(x_val) / max(val_s, 1e-9)

            stop = None
            if info.is_main:
                m = val_metrics(logits, y_val[order_all])
                schedule.epoch_end(m["val_auc"])
                elapsed = elapsed_before + time.perf_counter() - t_start
                row = {
                    "epoch": epoch,
                    "train_loss": round(loss_sum / max(seen, 1), 5),
                    "val_loss": round(m["val_loss"], 5),
                    "val_auc": round(m["val_auc"], 5),
                    "val_accuracy": round(m["val_accuracy"], 5),
                    "lr": float(f"{cfg.lr * lr_factor:.3g}"),
                    "epoch_seconds": round(train_s + val_s, 2),
                    "elapsed_seconds": round(elapsed, 2),
                    "train_patches_per_s": round(last_train_rate, 1),
                    "val_patches_per_s": round(last_val_rate, 1),
                    "frozen_backbone": frozen,
                }
                history.append(row)
                improved = m["val_auc"] > best_auc
                if improved:
                    best_auc, best_epoch, best_metrics = m["val_auc"], epoch, m
                if budget_hit or elapsed + val_reserve >= budget_s:
                    stop = "budget"
                elif epoch - best_epoch >= cfg.patience:
                    stop = "early"
                elif epoch >= cfg.epochs:
                    stop = "epochs"
                common = dict(
                    input_size=int(x_train.shape[1]),
                    normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                    train_config=_json_safe(cfg.to_dict()),
                    world_size=info.world_size,
                    stain=stain.to_dict() if stain is not None else None,
                )
                if improved:
                    save_checkpoint(
                        run_dir / "best.pt",
                        make_checkpoint(
                            model, cfg.model, model_config, metrics=m, epoch=epoch, **common
                        ),
                    )
                save_checkpoint(
                    run_dir / "last.pt",
                    make_checkpoint(
                        model,
                        cfg.model,
                        model_config,
                        metrics=m,
                        epoch=epoch,
                        optimizer=optimizer.state_dict(),
                        scheduler=schedule.state_dict(),
                        history=history,
                        best_auc=best_auc,
                        best_epoch=best_epoch,
                        best_metrics=best_metrics,
                        elapsed_seconds=elapsed,
                        rng=torch.get_rng_state(),
                        finished=stop or "",
                        **common,
                    ),
                )
                write_history(run_dir, history)
                _log(
                    console,
                    info,
                    f"epoch {epoch:3d}  loss {row['train_loss']:.4f}"
                    f"  val_loss {row['val_loss']:.4f}"
                    f"  val_auc {row['val_auc']:.4f}  acc {row['val_accuracy']:.4f}"
                    f"  lr {row['lr']:.2g}  {row['train_patches_per_s']:.0f} p/s"
                    f"{'  *' if improved else ''}",
                )
            stop = D.broadcast(stop, info)
            if stop:
                stop_reason = stop
                break

    result = TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        best_metrics=best_metrics,
        epochs_run=len(history) if info.is_main else epoch,
        stop_reason=stop_reason,
        history=history,
        train_patches_per_s=total_train_patches / max(total_train_seconds, 1e-9),
        val_patches_per_s=last_val_rate,
        train_seconds=total_train_seconds,
    )
    if info.is_main:
        _log(
            console,
            info,
            f"stopped ({stop_reason}); best val AUC {best_auc:.4f} at epoch {best_epoch} → "
            f"{run_dir / 'best.pt'}",
        )
    D.barrier(info)
    return result


def _need(path: str | None, role: str) -> str:
    if not path:
        raise TrainingError(f"no {role} data given")
    return path


def _progress(console, cfg: TrainConfig, info: D.DistInfo):
    """A rich progress bar on rank 0 (an inert stand-in elsewhere)."""
    if console is None or not cfg.progress or not info.is_main:
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # batch logs: per-epoch lines only
    )


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __bool__(self) -> bool:
        return False
