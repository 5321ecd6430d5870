"""One epoch of a :class:`~histomodels.training.trainer.Trainer`: the training pass (this
rank's shard of a fresh permutation, augmented batches, optimizer steps) and the validation
pass. The :class:`Trainer` owns the run (setup, resume, checkpoints, history, stop rules)
and calls these through its :meth:`~Trainer.fit_epoch`, :meth:`~Trainer.train_step` and
:meth:`~Trainer.validate`.

Everything that decides the weights is here, in a fixed order: the epoch's permutation
and augmentation seeds, the LR factor of each step, the step itself; a run is bit for bit
repeatable on the same machine (``tests/histomodels/test_train.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from histomodels import distributed as D
from histomodels.data.blocks import BlockImages
from histomodels.device import amp_dtype, autocast, memory_reason, out_of_memory
from histomodels.inference import MAX_BATCH_PIXELS, batch_limit, predict_logits
from histomodels.metrics import binary_metrics
from histomodels.preprocess import to_input
from histomodels.training.data import epoch_order, make_augment
from histomodels.training.prefetch import Prefetcher, pin
from histomodels.training.result import EpochStats, TrainingError, TrainingOutOfMemory

if TYPE_CHECKING:
    from histomodels.training.trainer import Trainer


def fit_epoch(t: Trainer, epoch: int) -> EpochStats:
    """One pass over this rank's shard of a fresh permutation of the training data."""
    cfg, info, seed = t.cfg, t.info, int(t.cfg.seed)
    t.current_epoch = epoch
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = D.shard(epoch_order(t.x_train, gen), info)
    augment = make_augment(cfg, seed * 100_003 + epoch * 31 + info.rank, t.stain_stats)
    t.net.train()
    t.batches_per_epoch = max(1, len(order) // t.batch_size)
    t.loss_sum, t.bce_sum, t.seen = 0.0, 0.0, 0
    for cb in t.callbacks:
        cb.on_epoch_start(t, epoch)
    pinned = t.prefetch and t.device.type == "cuda"

    def make(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[b * t.batch_size : (b + 1) * t.batch_size]
        return pin(augment(t.x_train[idx]), t.y_train[idx], pinned)

    t0, factor, cut = time.perf_counter(), 1.0, False
    n, on = t.batches_per_epoch, t.prefetch
    # A streamed batch one rank cannot read stops every rank (one small all-reduce a step);
    # patches in memory cannot fail to read, so they skip it (and its host-device sync).
    # Ranks agree first: each chose to stream by its own free memory, and a check on some
    # ranks only would pair with DDP's gradient all-reduce on the others and hang them.
    streamed = D.any_flag(isinstance(t.x_train, BlockImages), info) and info.enabled
    size = f"batches of {t.batch_size} patches"
    with (
        out_of_memory_is(f"{cfg.model}: out of memory training on {size}", "batch_size"),
        Prefetcher(make, n, enabled=on, device=t.device) as batches,  # b+1 while b trains
    ):
        it = iter(batches)
        for _ in range(n):
            with D.together(info) if streamed else contextlib.nullcontext():
                images, labels = next(it)
            factor = t.train_step(images, labels)
            if any([cb.on_step_end(t) for cb in t.callbacks]):  # every hook runs
                cut = True
                break
    seconds = time.perf_counter() - t0
    t.train_patches += t.seen * info.world_size
    t.train_seconds += seconds
    loss = t.loss_sum / max(t.seen, 1)
    bce = t.bce_sum / max(t.seen, 1) if t.distilled else None
    return EpochStats(loss, t.seen, seconds, cfg.lr * factor, budget_hit=cut, bce=bce)


@contextlib.contextmanager
def out_of_memory_is(what: str, key: str) -> Iterator[None]:
    """Memory running out inside (torch's allocators, ``MemoryError``) is one
    :class:`TrainingOutOfMemory` saying ``what`` ran out and to lower ``key``; the
    :class:`~histomodels.training.trainer.Trainer` keeps only the checkpoints of epochs
    that completed."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, TrainingError) or not out_of_memory(exc):
            raise
        raise TrainingOutOfMemory(f"{what} ({memory_reason(exc)})", key) from exc


def train_step(t: Trainer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimizer step on uint8 NHWC ``images``; returns the LR factor it used."""
    cfg = t.cfg
    x = to_input(images, channels_last=cfg.channels_last, device=t.device)
    y = labels.to(t.device, non_blocking=True)
    for cb in t.callbacks:
        x, y = cb.on_batch(t, x, y)
    factor = t.schedule.factor(t.time_fraction())
    for g in t.optimizer.param_groups:
        g["lr"] = cfg.lr * g.get("lr_mult", 1.0) * factor
    with autocast(t.device, t.bf16):
        logits = t.net(x).float().flatten()
    loss = t.loss_fn(logits, y)
    backward_and_step(t, loss)
    t.schedule.step_count += 1
    t.loss_sum += float(loss.detach()) * len(labels)
    hard = getattr(t.loss_fn, "hard", None)  # DistillLoss's BCE against the labels alone
    if t.distilled and hard is not None:
        t.bce_sum += float(hard) * len(labels)
    t.seen += len(labels)
    return factor


def backward_and_step(t: Trainer, loss: torch.Tensor) -> None:
    """Backward pass (through the grad scaler on fp16 CUDA), optional clipping, step."""
    opt, scaler = t.optimizer, t.scaler
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if t.cfg.grad_clip:
        params = [p for p in t.model.parameters() if p.grad is not None]
        nn.utils.clip_grad_norm_(params, t.cfg.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def validate(t: Trainer) -> dict[str, float] | None:
    """Score ``eval_model`` on the validation split through :mod:`histomodels.inference`:
    each rank predicts its shard, rank 0 scores the gathered whole (others get None)."""
    t0 = time.perf_counter()
    vidx = D.shard(torch.arange(len(t.x_val)), t.info, drop_tail=False)
    precision = "bf16" if t.bf16 and amp_dtype(t.device) == torch.bfloat16 else "fp32"
    with D.together(t.info):  # a rank that fails on its shard stops all before the gather
        for cb in t.callbacks:
            cb.on_validate_start(t)
        with out_of_memory_is(f"{t.cfg.model}: out of memory validating {_val_size(t, vidx)}",
                              "eval_batch_size"):  # fmt: skip
            logits = predict_logits(
                t.eval_model,
                _val_batches(t, vidx),
                precision=precision,
                device=t.device,
                channels_last=t.cfg.channels_last,
            )
    all_logits = D.gather_cat(torch.from_numpy(logits), t.info)
    order = D.gather_cat(vidx, t.info)
    t.val_seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(all_logits).all()):  # every rank holds all of them: all raise
        raise TrainingError(
            f"{t.run_dir}: training diverged in epoch {t.current_epoch}: the validation "
            "scores are not finite; lower the learning rate (lr) or clip gradients (grad_clip)"
        )
    for cb in t.callbacks:
        cb.on_validate_end(t)
    return val_metrics(all_logits, t.y_val[order]) if t.info.is_main else None


def _val_size(t: Trainer, vidx: torch.Tensor) -> str:
    """The validation batches as they run: eval_batch_size, or fewer (this rank's share
    of the split when smaller; the inference pixel cap), which then says why (a smaller
    eval_batch_size changes nothing until it is under the size that ran)."""
    asked = max(1, min(t.cfg.eval_batch_size, len(vidx)))
    h, w = (int(v) for v in t.x_val.shape[1:3])
    ran = batch_limit(t.eval_model, h, w, asked)
    if ran == t.cfg.eval_batch_size:
        return f"batches of {ran} patches"
    why = (
        f"capped at {MAX_BATCH_PIXELS} pixels per batch as the network sees them"
        if ran < asked
        else f"all {ran} validation patches" + (" of this rank" if t.info.enabled else "")
    )
    return (
        f"batches of {ran} patches (eval_batch_size {t.cfg.eval_batch_size}, {why}; "
        f"an eval_batch_size under {ran} makes them smaller)"
    )


def _val_batches(t: Trainer, vidx: torch.Tensor) -> Iterator[torch.Tensor]:
    bs = t.cfg.eval_batch_size
    for i in range(0, len(vidx), bs):
        yield t.x_val[vidx[i : i + bs]] if t.info.enabled else t.x_val[i : i + bs]


def val_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Validation BCE loss, ROC AUC and accuracy at 0.5 (:mod:`histomodels.metrics`)."""
    m = binary_metrics(labels.numpy(), torch.sigmoid(logits).numpy(), threshold=0.5)
    loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    return {"val_loss": float(loss), "val_auc": m["roc_auc"], "val_accuracy": m["accuracy"]}
