"""Bayesian optimisation of the scratch CNN with Ax (BoTorch behind it).

Search space (:data:`SPACE`): learning rate and weight decay (log scale), width, depth,
dropout, batch size, augmentation strength, the centre variant (``none``/``pool``/``branch``)
and the recipe levers (cut-out, mixup, RandStain, JPEG/blur, label smoothing, EMA; each can
be 0 = off). An experiment saved by an older tune keeps its own, smaller space: a parameter
it lacks takes the value that tune used (centre ``none``, levers as in the base config).
Every trial is a short training run, of a fixed number of epochs (``trial_epochs``: trials
stay comparable on cores shared with other work) or else of a time budget
(``trial_minutes``), whose objective is the best validation AUC; each trial record says
which (``limit``). ``fixed`` pins dimensions to one value (:func:`parse_fixed`; e.g. width 16
to keep the CNN's ONNX throughput); they leave the Ax search space, and an experiment
resumes only with the pins and base config it started with (``DIR/tune.json``). With a
``teacher`` in the base config, the teacher's soft targets are scored once per tune: the
first trial's ``teacher_logits.npz`` (:mod:`histomodels.training.distill`, keyed by data,
teacher, precision and device) is kept in ``DIR`` and linked into every later trial's
folder, where the trainer reuses it when its key matches.

After each trial the Ax experiment is saved to ``DIR/ax_experiment.json`` (atomically),
the trial table to ``DIR/trials.json``/``.csv`` and the best configuration so far to
``DIR/best_config.json``, so a killed tune resumes where it stopped and
``histomodels train --config DIR/best_config.json`` reproduces the winner.
A trial that runs out of memory or raises a domain error (an unusable config) is recorded
as failed (:func:`trial_failure`); :data:`MAX_FAILED_IN_A_ROW` of them in a row stop the
tune; any other exception is a bug and propagates with its traceback.

Note: trials are short, so the optimiser favours settings that learn fast; the winning
config is a good starting point for a longer run, not a guarantee for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from histocore.errors import DomainError, UsageError
from histocore.io import RefusedFile, loads_json, make_parents, open_regular, read_capped, size_text
from histomodels.config import TrainConfig
from histomodels.device import out_of_memory
from histomodels.training import TrainingError, TrainingOutOfMemory, load_split, train
from histomodels.training.data import check_two_classes, warn_shared_patches
from histomodels.training.distill import CACHE_NAME
from histomodels.training.network import BuildRefused
from histomodels.tune_space import (
    _RUN_ONLY,
    DEFAULT_TRIAL_MINUTES,
    SPACE,
    TuneError,
    check_base,
    check_weights,
    parse_fixed,
    search_space,
    trial_config,
    trial_limit,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TRIAL_MINUTES",
    "SPACE",
    "TuneError",
    "parse_fixed",
    "search_space",
    "trial_config",
    "trial_limit",
    "tune",
]


OBJECTIVE = "val_auc"
#: Consecutive failed trials after which a tune stops (the same error every time is most
#: likely the base config or the data, not the sampled point; a later call resumes).
MAX_FAILED_IN_A_ROW = 5
EXPERIMENT_FILE = "ax_experiment.json"
#: Caps on what a resume reads back (a few KB and about 2 KB a trial when tune writes them):
#: a 10 GB file, a FIFO or a link to ``/dev/zero`` put in the folder is one line, not a
#: hang or a ``MemoryError``.
MAX_SETTINGS_BYTES = 4 << 20
MAX_RECORDS_BYTES = 64 << 20
#: Ax's snapshot of the experiment grows by about 24 KB a trial (with the generation
#: strategy's state): 256 MB holds some 10,000 trials.
MAX_EXPERIMENT_BYTES = 256 << 20
#: What an experiment was started with (pins, base config): a resume must match it.
SETTINGS_FILE = "tune.json"


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
    trial_minutes: float | None = None,
    trial_epochs: int | None = None,
    sobol_trials: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    quiet: bool = False,
    base: TrainConfig | None = None,
    fixed: dict[str, Any] | list[str] | None = None,
    base_name: str = "the base config",
) -> dict[str, Any]:
    """Run (or resume) the optimisation; returns the best trial record. ``base_name``: what a
    failed trial calls the base config (the CLI: its file) when its keys are at fault."""
    from ax.api.client import Client

    _quiet_ax()
    out = Path(out)
    limit = trial_limit(trial_minutes, trial_epochs)
    pins = parse_fixed(fixed or {})
    base = base or TrainConfig()
    check_base(base)
    check_weights(base, pins, base_name)  # a search of the shape weights fix: all trials fail
    if base.compile:  # the machine's, not a trial's: each trial would fail on it
        from histomodels.device import pick_device
        from histomodels.training.network import check_cpu_compiler

        if pick_device(base.device).type == "cpu":
            check_cpu_compiler()
    if base.swa and pins.get("ema", 1) != 0:
        raise TuneError(
            "base config: swa is set and the search tries ema, which cannot go with it; "
            "pin it off with --fix ema=0"
        )
    seed = base.seed if seed is None else seed
    run = dict(progress=False, seed=seed, threads=base.threads if threads is None else threads)
    if "epochs" in limit:  # a fixed length: no early stop, no clock
        run.update(epochs=limit["epochs"], patience=limit["epochs"] + 1, time_budget=None)
    else:
        run.update(epochs=100, patience=100, time_budget=limit["minutes"])
    base = base.replace(**run)
    settings = {"fixed": pins, "base": _reusable(base), "limit": limit}
    exp_path = out / EXPERIMENT_FILE
    records_path = out / "trials.json"
    if not exp_path.exists():  # no earlier tune to resume (a dangling link to one neither):
        _refuse_to_replace(out)  # nothing here is ours
    if exp_path.exists():  # refuse a mixed resume, or a FIFO or /dev/zero, before decoding
        _check_experiment_file(exp_path)
        _check_settings(out, settings)
    # decode once for all trials, before anything is written: bad data leaves no folder
    x_train, y_train = load_split(data, "train", stream=False, origin_split=base.origin_split)
    x_val, y_val = load_split(val, "validation", stream=False)
    check_two_classes(y_train, data, "train")  # else every trial fails the same way
    check_two_classes(y_val, val, "validation")
    train_arrays = (x_train[:].numpy(), y_train.numpy().astype("int64"))  # [:]: as a tensor
    val_arrays = (x_val[:].numpy(), y_val.numpy().astype("int64"))
    # once per tune, not once per trial (every trial trains on the same patches)
    warn_shared_patches(torch.from_numpy(train_arrays[0]), torch.from_numpy(val_arrays[0]))
    settings["data"] = {"train": _digest(x_train, y_train), "val": _digest(x_val, y_val)}
    saved_client = None
    if exp_path.exists():  # a FIFO or a link to /dev/zero: refused below, not a new search
        _check_data(out, settings["data"])
        saved_client = _load_experiment(exp_path)  # a damaged one: before anything is written
    records: list[dict[str, Any]] = []
    if saved_client is not None and records_path.exists():  # a FIFO: refused, not no trials
        records = _saved_records(records_path)  # a damaged one too (tune.json was rewritten)
    make_parents(out / SETTINGS_FILE)  # a file in the way: a: is a file, not a folder
    _atomic_json(out / SETTINGS_FILE, settings)  # before the experiment: a new one needs it

    if saved_client is not None:
        client = saved_client
        # trials that were running when the previous tune was killed
        done = {r["trial"] for r in records}
        for idx, trial in client._experiment.trials.items():
            if idx not in done and not trial.status.is_terminal:
                client.mark_trial_failed(idx, failed_reason="interrupted (tune was killed)")
        _save_client(client, exp_path)
    else:
        client = Client(random_seed=seed)
        client.configure_experiment(parameters=search_space(pins), name="histomodels_cnn_tune")
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
                f"{out}: {failed_in_a_row} trials in a row failed (last, trial "
                f"{records[-1]['trial']}: {records[-1]['error']}); see {records_path}"
            )
        ((idx, params),) = client.get_next_trials(max_trials=1).items()
        _save_client(client, exp_path)  # the trial is recorded as running
        t0 = time.perf_counter()
        cfg = trial_config(dict(params), base, pins)
        sources = {**{k: base_name for k in base.model_config}, **dict.fromkeys(pins, "--fix"),
                   **dict.fromkeys(params, "the search")}  # fmt: skip
        record = _run_trial(client, idx, dict(params), cfg, out, (train_arrays, val_arrays),
                            sources, base_name)  # fmt: skip
        record.update(fixed=pins, limit=limit)
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
            log.info(
                "trial %d: val AUC %.4f (%d epoch%s, %.0f s) %s",
                idx,
                record["val_auc"],
                record["epochs"],
                "" if record["epochs"] == 1 else "s",
                record["seconds"],
                json.dumps(record["params"], default=str),
            )
    best = _best(records)
    if best is None:
        raise TuneError(f"{out}: no trial completed")
    return best


def _reusable(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as JSON, less the keys that only say how one run runs."""
    return json.loads(
        json.dumps({k: v for k, v in cfg.to_dict().items() if k not in _RUN_ONLY}, default=str)
    )


#: What tune writes into its folder beside the experiment (the trials' run folders apart)
TUNE_FILES = (SETTINGS_FILE, "trials.json", "trials.csv", "best_config.json")


def _refuse_to_replace(out: Path) -> None:
    """A :class:`TuneError` naming the file, before the data is decoded, where a new search
    (``out`` holds no experiment) would replace a file tune did not write: a pipe or device
    at one of :data:`TUNE_FILES`, or a file there, but for a ``tune.json`` of tune's own
    (a tune stopped in its first trial): ``--out`` a folder of the user's own lost its
    ``best_config.json``, ``trials.csv``."""
    from histocore.io import holds_a_file

    would = "tune would replace it: choose another --out"
    for name in TUNE_FILES:
        path = out / name
        if not holds_a_file(path, lambda problem, p=path: TuneError(f"{p}: {problem}; {would}")):
            continue
        if name == SETTINGS_FILE and _own_settings(path):
            continue
        raise TuneError(
            f"{path}: exists and is not from an earlier tune (no {EXPERIMENT_FILE} beside "
            f"it); {would}, or remove it first"
        )


def _own_settings(path: Path) -> bool:
    """Whether ``path`` reads as the ``tune.json`` tune writes (its keys); not otherwise."""
    try:
        obj = loads_json(read_capped(path, MAX_SETTINGS_BYTES))
    except (OSError, RefusedFile, ValueError):
        return False
    return isinstance(obj, dict) and {"fixed", "base", "limit"} <= obj.keys()


def _saved_settings(out: Path) -> dict[str, Any] | None:
    """The experiment's ``tune.json`` (None when it has none); a damaged one is a
    :class:`TuneError` naming it."""
    path = out / SETTINGS_FILE
    if not path.exists():  # a FIFO or a link to /dev/zero is there: refused below, not None
        return None
    try:
        saved = loads_json(read_capped(path, MAX_SETTINGS_BYTES))
    except RefusedFile as exc:
        raise TuneError(f"{path}: {exc}, not the settings tune writes") from None
    except (OSError, ValueError) as exc:  # NotJSON
        raise TuneError(f"{path}: cannot read this experiment's settings ({exc})") from None
    fields = {"fixed": dict, "base": dict, "data": dict}
    if not isinstance(saved, dict) or any(
        k in saved and not isinstance(saved[k], t) for k, t in fields.items()
    ):
        raise TuneError(f"{path}: not this experiment's settings (expected a JSON object)")
    return saved


def _check_experiment_file(path: Path) -> None:
    """What :func:`_load_experiment` refuses without reading (:func:`open_regular`'s rule:
    a FIFO, socket, device or folder; and a size over :data:`MAX_EXPERIMENT_BYTES`), as its
    :class:`TuneError`, before the data is decoded (minutes): the early check took only a
    regular file for an experiment, so anything else was refused only after that."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
    except RefusedFile as exc:
        raise TuneError(f"{path}: {exc}, not the Ax experiment tune writes") from None
    except OSError as exc:
        raise TuneError(f"{path}: cannot read this experiment ({exc})") from None
    if size > MAX_EXPERIMENT_BYTES:
        problem = f"over {size_text(MAX_EXPERIMENT_BYTES)}"
        raise TuneError(f"{path}: {problem}, not the Ax experiment tune writes")


def _load_experiment(path: Path) -> Any:
    """The Ax client saved in ``path`` (``ax_experiment.json``); one Ax cannot load (cut
    short, hand-edited, another program's JSON) is a :class:`TuneError` naming it: Ax's
    decoder raised whatever the JSON led it to (JSONDecodeError, TypeError, KeyError), a
    traceback. The file is data, so any ``Exception`` of the load is that line. It is read
    under :data:`MAX_EXPERIMENT_BYTES` like ``tune.json`` and ``trials.json`` (Ax's
    ``load_from_json_file`` read it whole: a ``MemoryError`` on ``/dev/zero``, a hang on a
    FIFO)."""
    from ax.api.client import Client

    try:
        data = read_capped(path, MAX_EXPERIMENT_BYTES)
    except RefusedFile as exc:
        raise TuneError(f"{path}: {exc}, not the Ax experiment tune writes") from None
    except OSError as exc:
        raise TuneError(f"{path}: cannot read this experiment ({exc})") from None
    # what load_from_json_file does with the text it reads (Ax 1.x has no public loader
    # from text or a mapping); an Ax without that private method gets the public loader,
    # which reads the file again (it was just checked to be a regular file under the cap)
    from_snapshot = getattr(Client, "_from_json_snapshot", None)
    try:
        if from_snapshot is None:
            return Client.load_from_json_file(filepath=str(path))
        return from_snapshot(snapshot=json.loads(data))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise TuneError(
            f"{path}: cannot load this experiment ({why}); use another --out folder, or remove "
            "the file to start the search anew"
        ) from None


def _saved_records(path: Path) -> list[dict[str, Any]]:
    """The experiment's trial records (``trials.json``); a damaged one is a
    :class:`TuneError` naming it (it was a traceback when a tune resumed)."""
    try:
        records = loads_json(read_capped(path, MAX_RECORDS_BYTES))
    except RefusedFile as exc:
        raise TuneError(f"{path}: {exc}, not the trial records tune writes") from None
    except (OSError, ValueError) as exc:  # NotJSON
        raise TuneError(f"{path}: cannot read this experiment's trials ({exc})") from None
    if not isinstance(records, list) or not all(map(_is_record, records)):
        raise TuneError(f"{path}: not this experiment's trials (a list of trial records)")
    return records


def _is_record(r: object) -> bool:
    """A trial record as :func:`tune` writes it: what the table and the best-trial choice
    read (a completed trial's AUC a number and its config a mapping)."""
    if not isinstance(r, dict) or not isinstance(r.get("trial"), int):
        return False
    if not all(isinstance(r.get(k, {}), dict) for k in ("params", "fixed", "limit")):
        return False
    if "params" not in r:
        return False
    if r.get("status") != "completed":
        return True
    auc = r.get("val_auc")
    number = isinstance(auc, (int, float)) and not isinstance(auc, bool)
    return number and isinstance(r.get("config"), dict)


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume an experiment with other pins or another base config (its trials
    would mix two searches). An experiment saved before pins existed had none."""
    before = _saved_settings(out) or {"fixed": {}}
    if before.get("fixed", {}) != settings["fixed"]:
        raise TuneError(
            f"{out}: this experiment pins {before.get('fixed') or 'nothing'}, not "
            f"{settings['fixed'] or 'nothing'}; resuming would mix two searches "
            "(use another folder)"
        )
    # a key added to TrainConfig after the experiment began had its default there
    old = _same_splits({**_reusable(TrainConfig()), **before.get("base", {})})
    new = _same_splits(settings["base"])
    if "base" in before and old != new:
        changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        raise TuneError(
            f"{out}: this experiment's base config differs in {', '.join(changed)}; "
            "resuming would mix two searches (use another folder)"
        )
    if "limit" in before and before["limit"] != settings["limit"]:
        raise TuneError(
            f"{out}: this experiment's trials ran for {before['limit']}, not "
            f"{settings['limit']}; resuming would mix two searches (use another folder)"
        )


def _same_splits(base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with its ``origin_split`` in one order: the same splits in another order are
    the same filter (as ``train --resume`` judges it)."""
    from histomodels.choices import origin_splits

    value = base.get("origin_split")
    try:
        return {**base, "origin_split": ",".join(sorted(origin_splits(value)))} if value else base
    except UsageError:  # no split named: compared as saved
        return base


def _digest(images: Any, labels: Any) -> str:
    """What identifies a split: the sha256 of its patches and of its labels."""
    import hashlib

    from histomodels.training.distill import data_digest

    tail = hashlib.sha256(labels.numpy().astype("int64").tobytes()).hexdigest()
    return f"{data_digest(images)}:{tail}"


def _check_data(out: Path, data: dict[str, str]) -> None:
    """Refuse to resume an experiment on other training or validation patches (its trials'
    AUCs would compare runs on different data). One saved before this was recorded passes."""
    before = (_saved_settings(out) or {}).get("data")
    if not before:
        return
    changed = [
        what for key, what in (("train", "training"), ("val", "validation"))
        if before.get(key) != data[key]
    ]  # fmt: skip
    if changed:
        raise TuneError(
            f"{out}: this experiment's trials ran on other {' and '.join(changed)} patches "
            "(or labels); resuming would mix two searches (use another folder)"
        )


def _run_trial(
    client,
    idx: int,
    params: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    data: tuple,
    sources: dict[str, str],
    base_name: str = "the base config",
) -> dict[str, Any]:
    """Train trial ``idx`` and report it to Ax; returns its record (completed or failed).
    Only :func:`trial_failure` errors fail a trial; anything else propagates. ``sources``:
    where each model_config key came from, named when the trial build refuses them;
    ``base_name``: the base config, named when running out of memory is its doing."""
    record: dict[str, Any] = {"trial": idx, "params": params}
    run_dir = out / "trials" / f"{idx:03d}"
    if cfg.teacher:
        _share(out / CACHE_NAME, run_dir / CACHE_NAME)
    try:
        result = train(cfg, run_dir, train_data=data[0], val_data=data[1], warn_shared=False)
    except Exception as exc:
        reason = trial_failure(exc)
        if not reason:
            raise  # a programmer bug: keep its traceback
        if isinstance(exc, BuildRefused):
            reason = f"{_named_sources(exc.given, sources)}: {reason}"
        elif isinstance(exc, TrainingOutOfMemory):
            reason = _out_of_memory_reason(exc, cfg, base_name)
        client.mark_trial_failed(idx, failed_reason=reason[:200])
        record.update(status="failed", error=reason)
        return record
    finally:
        if cfg.teacher:  # the first scoring serves all; one that replaced a damaged file too
            _keep_scoring(run_dir / CACHE_NAME, out / CACHE_NAME, idx)
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


def _out_of_memory_reason(exc: TrainingOutOfMemory, cfg: TrainConfig, base_name: str) -> str:
    """A trial that ran out of memory, with what a tune can change: ``tune`` has no
    ``--batch-size`` (training's hint); the search samples ``batch_size`` (``--fix``
    pins it), and ``eval_batch_size`` comes from the base config."""
    if exc.key == "batch_size":
        smallest = min(_choices("batch_size"))
        if cfg.batch_size > smallest:
            return f"{exc.what}; try --fix batch_size={smallest}"
        hint = f"batch_size {smallest} is the smallest the search tries"
        narrowest, width = min(_choices("width")), cfg.model_config.get("width")
        if isinstance(width, int) and width > narrowest:
            hint += f"; try --fix width={narrowest}"
        return f"{exc.what}; {hint}"
    where = base_name + (" (--config)" if base_name == "the base config" else "")
    return f"{exc.what}; try a smaller {exc.key} in {where}"


def _choices(name: str) -> tuple[Any, ...]:
    return next(values for key, _, values in SPACE if key == name)


def _named_sources(given: dict[str, Any], sources: dict[str, str]) -> str:
    """Where the ``given`` model_config keys of a refused trial came from, e.g. ``the search
    (width, depth) and c.json (blocks)``."""
    by: dict[str, list[str]] = {}
    for key in given:
        by.setdefault(sources.get(key, "the base config"), []).append(key)
    named = [f"{where} ({', '.join(keys)})" for where, keys in by.items()]
    return ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]


def _share(src: Path, dst: Path) -> None:
    """Hard-link (else copy) ``src`` to ``dst`` when ``src`` exists, atomically: ``dst`` is
    the old file or the new one, never half of one."""
    import os
    import shutil

    from histocore.io import temp_beside

    if not src.is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(dst)  # named as atomic writes name theirs
    tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _keep_scoring(trial_cache: Path, shared: Path, idx: int) -> None:
    """Make the trial's teacher cache the tune's shared one when the trial wrote its own:
    the first scoring, or a new one after the shared file was damaged (the trainer warned
    and scored again) or scored for another key."""
    import os

    if not trial_cache.is_file():
        return
    if shared.is_file() and os.path.samefile(trial_cache, shared):
        return  # the trial reused the shared scoring
    if shared.is_file():
        log.warning("%s: replaced by trial %d's teacher scoring", shared, idx)
    _share(trial_cache, shared)


def _quiet_ax() -> None:
    """Ax logs every trial at INFO on its own handlers; we print our own one-line summary."""
    for name in list(logging.root.manager.loggerDict):
        if name == "ax" or name.startswith("ax."):
            logging.getLogger(name).setLevel(logging.WARNING)


def _best(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in records if r.get("status") == "completed"]
    return max(done, key=lambda r: r["val_auc"]) if done else None


def _write_table(path: Path, records: list[dict[str, Any]]) -> None:
    """``trials.csv``: one row per trial, a column per parameter (quoted as CSV needs, no
    cell a spreadsheet would run)."""
    import csv
    import io

    from histocore.csvcells import safe_row
    from histocore.io import atomic_write_text

    keys = ["trial", "status", "val_auc", "val_accuracy", "epochs", "seconds"]
    pkeys = sorted({k for r in records for k in (*r["params"], *r.get("fixed", {}))})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*keys, "limit", *pkeys])
    for r in records:
        params = {**r.get("fixed", {}), **r["params"]}
        limit = ";".join(f"{k}={v}" for k, v in r.get("limit", {}).items())
        cells = [*(r.get(k, "") for k in keys), limit, *(params.get(k, "") for k in pkeys)]
        w.writerow(safe_row(map(str, cells)))
    atomic_write_text(path, buf.getvalue())
