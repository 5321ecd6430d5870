"""Bayesian optimisation of the scratch CNN with Ax (BoTorch behind it).

Search space (:data:`SPACE`): learning rate and weight decay (log scale), width, depth,
dropout, batch size, augmentation strength, the centre variant (``none``/``pool``/``branch``)
and the recipe levers (cut-out, mixup, RandStain, JPEG/blur, label smoothing, EMA; each can
be 0 = off). An experiment saved by an older tune keeps its own, smaller space: a parameter
it lacks takes the value that tune used (centre ``none``, levers as in the base config).
Every trial is a short training run with a time budget whose
objective is the best validation AUC. After each trial the Ax experiment is saved to
``DIR/ax_experiment.json`` (atomically), the trial table to ``DIR/trials.json``/``.csv`` and
the best configuration so far to ``DIR/best_config.json``, so a killed tune resumes where
it stopped and ``histomodels train --config DIR/best_config.json`` reproduces the winner.
A trial that runs out of memory or raises a domain error (an unusable config) is recorded
as failed (:func:`trial_failure`); :data:`MAX_FAILED_IN_A_ROW` of them in a row stop the
tune; any other exception is a bug and propagates with its traceback.

Note: trials are short, so the optimiser favours settings that learn fast; the winning
config is a good starting point for a longer run, not a guarantee for it.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from histocore.errors import DomainError
from histomodels.config import TrainConfig
from histomodels.training import TrainingError, load_split, train

log = logging.getLogger(__name__)


class TuneError(DomainError, RuntimeError):
    """A search that could not finish one trial."""


OBJECTIVE = "val_auc"
#: Consecutive failed trials after which a tune stops (the same error every time is most
#: likely the base config or the data, not the sampled point; a later call resumes).
MAX_FAILED_IN_A_ROW = 5
EXPERIMENT_FILE = "ax_experiment.json"
#: Keys of the trial that are not part of a reusable training config.
_RUN_ONLY = ("data", "val", "time_budget", "progress", "threads", "device", "epochs", "patience")


#: The searched dimensions: ``(name, kind, bounds or values, extra)``; ``kind`` is
#: ``log``/``float``/``int`` ranges or a ``choice`` (ordered when its values are numbers).
SPACE: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
    ("lr", "log", (3e-4, 1e-2)),
    ("weight_decay", "log", (1e-4, 0.2)),
    ("width", "choice", (16, 24, 32, 48, 64)),
    ("depth", "int", (3, 5)),
    ("dropout", "float", (0.0, 0.5)),
    ("batch_size", "choice", (64, 128, 256)),
    ("aug_strength", "float", (0.0, 1.5)),
    ("centre", "choice", ("none", "pool", "branch")),  # model_config["centre"]
    ("cutout", "float", (0.0, 0.5)),  # probability per patch
    ("mixup", "float", (0.0, 0.4)),  # Beta alpha
    ("randstain", "float", (0.0, 0.5)),  # probability per patch
    ("jpeg_blur", "float", (0.0, 0.5)),  # probability per patch
    ("label_smoothing", "float", (0.0, 0.2)),
    ("ema", "choice", (0.0, 0.99, 0.999)),  # decay; 0 = off
)
#: Architecture keys among them (the rest are TrainConfig keys).
_ARCH = ("width", "depth", "dropout", "centre")
#: What a parameter missing from an older experiment's space means (else the base config).
_BEFORE = {"centre": "none"}


def search_space():
    """The Ax parameters of :data:`SPACE`."""
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    params = []
    for name, kind, values in SPACE:
        if kind == "choice":
            numeric = not isinstance(values[0], str)
            ptype = "str" if not numeric else "int" if isinstance(values[0], int) else "float"
            params.append(
                ChoiceParameterConfig(
                    name=name, values=list(values), parameter_type=ptype, is_ordered=numeric
                )
            )
        else:
            ptype = "int" if kind == "int" else "float"
            scaling = "log" if kind == "log" else "linear"
            params.append(
                RangeParameterConfig(
                    name=name, bounds=values, parameter_type=ptype, scaling=scaling
                )
            )
    return params


def trial_config(params: dict[str, Any], base: TrainConfig) -> TrainConfig:
    """A training config for one Ax parameterisation (of :data:`SPACE` or an older one)."""
    from histomodels.config import merge

    params = {**_BEFORE, **params}
    kinds = {name: (kind, values) for name, kind, values in SPACE}

    def value(name: str) -> Any:
        kind, values = kinds[name]
        raw = params[name]
        if kind == "choice":
            return type(values[0])(raw)
        return int(raw) if kind == "int" else float(raw)

    arch = {k: value(k) for k in _ARCH if k in params}
    changes: dict[str, Any] = {k: value(k) for k in kinds if k in params and k not in _ARCH}
    if "ema" in changes:
        changes["ema"] = changes["ema"] or None  # 0 = off
    changes.update(model="cnn", model_config={**base.model_config, **arch})
    return merge(base, changes, "tune", skip_none=False)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``torch.OutOfMemoryError`` (CUDA, MPS) or
    the plain ``RuntimeError`` the CPU allocator raises."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in _OOM_MESSAGES)


#: What PyTorch's allocators say when memory runs out (CPU: ``DefaultCPUAllocator: can't
#: allocate memory``; backends without their own error class: ``out of memory``).
_OOM_MESSAGES = ("DefaultCPUAllocator", "can't allocate memory", "out of memory")


def trial_failure(exc: BaseException) -> str:
    """The one-line reason a trial failed with ``exc`` when it counts as a failed trial (a
    domain error such as an unusable sampled config, or running out of memory); ``""`` for
    anything else, a programmer bug the tune must not hide."""
    if not (isinstance(exc, DomainError | TrainingError) or out_of_memory(exc)):
        return ""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _atomic_json(path: Path, obj: Any) -> None:
    from histocore.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def _save_client(client, path: Path) -> None:
    import tempfile

    from histocore.io import atomic_write_bytes

    # Ax writes the file itself (public API only): into a private temp folder, then the
    # bytes go to ``path`` atomically (unique temp name, fsync), never half a snapshot.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ax-") as folder:
        tmp = Path(folder) / path.name
        client.save_to_json_file(str(tmp))
        atomic_write_bytes(path, tmp.read_bytes())


def tune(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run (or resume) the optimisation; returns the best trial record (see ``_tune``)."""
    with warnings.catch_warnings():
        # Ax 1.3 on pandas 3 emits deprecation warnings on every call; nothing a user can act on
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"(ax|pandas|botorch|gpytorch|linear_operator)\b")
        return _tune(*args, **kwargs)


def _tune(
    data: Any,
    val: Any,
    out: str | Path,
    *,
    trials: int = 20,
    trial_minutes: float = 2.0,
    sobol_trials: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    quiet: bool = False,
    base: TrainConfig | None = None,
) -> dict[str, Any]:
    """Run (or resume) the optimisation; returns the best trial record."""
    from ax.api.client import Client

    _quiet_ax()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp_path = out / EXPERIMENT_FILE
    records_path = out / "trials.json"
    base = (base or TrainConfig()).replace(
        epochs=100,
        patience=100,
        time_budget=float(trial_minutes),
        progress=False,
        seed=seed,
        threads=threads,
    )
    # decode once for all trials
    x_train, y_train = load_split(data, "train", stream=False)
    x_val, y_val = load_split(val, "validation", stream=False)
    train_arrays = (x_train[:].numpy(), y_train.numpy().astype("int64"))  # [:]: as a tensor
    val_arrays = (x_val[:].numpy(), y_val.numpy().astype("int64"))

    records: list[dict[str, Any]] = []
    if exp_path.is_file():
        client = Client.load_from_json_file(str(exp_path))
        if records_path.is_file():
            records = json.loads(records_path.read_text())
        # trials that were running when the previous tune was killed
        done = {r["trial"] for r in records}
        for idx, trial in client._experiment.trials.items():
            if idx not in done and not trial.status.is_terminal:
                client.mark_trial_failed(idx, failed_reason="interrupted (tune was killed)")
        _save_client(client, exp_path)
    else:
        client = Client(random_seed=seed)
        client.configure_experiment(parameters=search_space(), name="histomodels_cnn_tune")
        client.configure_optimization(objective=OBJECTIVE)
        n_init = sobol_trials if sobol_trials is not None else max(2, min(5, trials // 3))
        client.configure_generation_strategy(
            method="fast", initialization_budget=n_init, initialization_random_seed=seed
        )
        _save_client(client, exp_path)
    _quiet_ax()

    failed_in_a_row = 0
    while len([r for r in records if r.get("status") == "completed"]) < trials:
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise TuneError(
                f"{out}: {failed_in_a_row} trials in a row failed (last: "
                f"{records[-1]['error']}); see {records_path}"
            )
        ((idx, params),) = client.get_next_trials(max_trials=1).items()
        _save_client(client, exp_path)  # the trial is recorded as running
        t0 = time.perf_counter()
        record = _run_trial(client, idx, dict(params), base, out, (train_arrays, val_arrays))
        failed_in_a_row = failed_in_a_row + 1 if record["status"] == "failed" else 0
        record["seconds"] = round(time.perf_counter() - t0, 1)
        records.append(record)
        _save_client(client, exp_path)
        _atomic_json(records_path, records)
        _write_table(out / "trials.csv", records)
        best = _best(records)
        if best:
            _atomic_json(
                out / "best_config.json",
                {"val_auc": best["val_auc"], "trial": best["trial"], "config": best["config"]},
            )
        if not quiet and record["status"] == "failed":
            log.warning("trial %d failed: %s", idx, record["error"])
        elif not quiet:
            auc_s = f"{record['val_auc']:.4f}"
            log.info(
                "trial %d: val AUC %s (%.0f s) %s",
                idx,
                auc_s,
                record["seconds"],
                json.dumps(record["params"], default=str),
            )
    best = _best(records)
    if best is None:
        raise TuneError(f"{out}: no trial completed")
    return best


def _run_trial(
    client, idx: int, params: dict[str, Any], base: TrainConfig, out: Path, data: tuple
) -> dict[str, Any]:
    """Train trial ``idx`` and report it to Ax; returns its record (completed or failed).
    Only :func:`trial_failure` errors fail a trial; anything else propagates."""
    cfg = trial_config(params, base)
    record: dict[str, Any] = {"trial": idx, "params": params}
    try:
        result = train(cfg, out / "trials" / f"{idx:03d}", train_data=data[0], val_data=data[1])
    except Exception as exc:
        reason = trial_failure(exc)
        if not reason:
            raise  # a programmer bug: keep its traceback
        client.mark_trial_failed(idx, failed_reason=str(exc)[:200])
        record.update(status="failed", error=reason)
        return record
    auc = float(result.best_metrics["val_auc"])
    client.complete_trial(idx, raw_data={OBJECTIVE: auc})
    record.update(
        status="completed",
        val_auc=auc,
        val_accuracy=float(result.best_metrics["val_accuracy"]),
        epochs=result.epochs_run,
        best_epoch=result.best_epoch,
        train_patches_per_s=round(result.train_patches_per_s, 1),
        config={k: v for k, v in cfg.to_dict().items() if k not in _RUN_ONLY},
    )
    return record


def _quiet_ax() -> None:
    """Ax logs every trial at INFO on its own handlers; we print our own one-line summary."""
    for name in list(logging.root.manager.loggerDict):
        if name == "ax" or name.startswith("ax."):
            logging.getLogger(name).setLevel(logging.WARNING)


def _best(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in records if r.get("status") == "completed"]
    return max(done, key=lambda r: r["val_auc"]) if done else None


def _write_table(path: Path, records: list[dict[str, Any]]) -> None:
    from histocore.io import atomic_write_text

    keys = ["trial", "status", "val_auc", "val_accuracy", "epochs", "seconds"]
    pkeys = sorted({k for r in records for k in r["params"]})
    lines = [",".join(keys + pkeys)]
    for r in records:
        lines.append(
            ",".join(
                [str(r.get(k, "")) for k in keys] + [str(r["params"].get(k, "")) for k in pkeys]
            )
        )
    atomic_write_text(path, "\n".join(lines) + "\n")
