"""CLI commands ``train``, ``finetune`` and ``tune`` (thin wrappers over histomodels.training
and histomodels.tune).

Options left out fall back to ``--config FILE`` and then to the defaults in
:class:`histomodels.config.TrainConfig`; the resolved config lands in ``RUN/config.json``.
Known bad input (missing files, bad labels, bad config) → one ``error:`` line, exit 1; a
malformed option value (``--model``, ``--model-config``, ``--fix``...) → click's usage
error, exit 2, before anything is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from histocore.cli import home_path
from histocore.io import RefusedFile, loads_json, path_line, read_capped
from histomodels.choices import MAX_INPUT_SIZE, MAX_SEED, MIN_INPUT_SIZE
from histomodels.choices import Schedule as ScheduleName
from histomodels.cli._common import (
    Device,
    OriginSplit,
    Threads,
    at_least,
    checked_by,
    errors,
    fail,
    in_range,
    launched_distributed,
    log_level,
    progress,
    reader_options,
    require_folder,
    require_paths,
    setup_logging,
    usage_error,
    with_options,
)

#: callback of the options that must be > 0
POSITIVE = in_range(0, low_open=True)

#: ``--model`` of train and finetune: a model the registry trains (histomodels.choices)
CHECK_MODEL = checked_by("histomodels.choices:check_model", "--model")
Model = Annotated[
    str | None, typer.Option(callback=CHECK_MODEL, help="Registry name, e.g. cnn, timm/<name>.")
]
Data = Annotated[str | None, typer.Option(help="Training data: .h5, Kaggle folder, class tree.")]
Val = Annotated[str | None, typer.Option(help="Validation data (early stopping on its AUC).")]
Out = Annotated[
    Path,
    typer.Option(
        help="Run folder: best.pt, last.pt, history, config.json (in a folder holding no "
        "trained run, no file of those names is replaced).",
        parser=home_path,
    ),
]
Epochs = Annotated[int | None, typer.Option(min=1, help="Maximum epochs [50].")]
Patience = Annotated[
    int | None,
    typer.Option(min=0, help="Epochs without val-AUC gain before stop [10; finetune: 6]."),
]
Budget = Annotated[
    float | None,
    typer.Option(callback=POSITIVE, help="Stop after this many minutes, keep best."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="JSON/YAML config file.", parser=home_path)
]
BatchSize = Annotated[int | None, typer.Option(min=1, help="Batch size per process [128].")]
Lr = Annotated[
    float | None,
    typer.Option(callback=POSITIVE, help="Peak learning rate (AdamW) [2e-3]."),
]
Wd = Annotated[float | None, at_least(0.0, help="AdamW weight decay [0.05; finetune: 0.01].")]
Schedule = Annotated[ScheduleName | None, typer.Option(help="Learning-rate schedule \\[cosine].")]
Aug = Annotated[
    float | None,
    at_least(0.0, help="Augmentation strength [1.0] (0 = off)."),
]
StainNorm = Annotated[
    str | None,
    typer.Option(
        help="Macenko stain normalisation: 'macenko' or a stain JSON file (default none)."
    ),
]
Seed = Annotated[int | None, typer.Option(min=0, max=MAX_SEED, help="Random seed [0].")]
Compile = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile.")]
Bf16 = Annotated[
    bool | None, typer.Option("--bf16/--no-bf16", help="Autocast \\[auto: CNN on CPU, AMP on GPU].")
]
ChannelsLast = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help="channels_last memory layout for the convolutions (on unless --no-channels-last).",
    ),
]
Prefetch = Annotated[
    bool | None,
    typer.Option(
        "--prefetch/--no-prefetch",
        help="Make the next batch in a background thread (same weights) \\[auto: on for CUDA].",
    ),
]
Deterministic = Annotated[
    bool | None,
    typer.Option(
        "--deterministic/--no-deterministic",
        help="Deterministic GPU kernels: the same seed gives the same weights on CUDA too "
        "(slower) \\[off; CPU runs are deterministic anyway].",
    ),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from RUN/last.pt.")]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Train anew into a folder that holds a run.")
]
ModelConfig = Annotated[
    str | None,
    typer.Option(
        callback=checked_by("histomodels.config:parse_model_config", "--model-config"),
        help='Model kwargs as a JSON object, e.g. \'{"width": 48, "depth": 4}\'.',
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar or per-epoch lines.")]
Ema = Annotated[
    float | None,
    typer.Option(
        metavar="DECAY",
        callback=in_range(0, 1, low_open=True, high_open=True),
        help="Validate and save an exponential moving average of the weights (e.g. 0.999).",
    ),
]
PreciseBn = Annotated[
    int | None,
    typer.Option(
        "--precise-bn",
        metavar="N",
        min=0,
        help="Before each validation, recompute BatchNorm statistics over N un-augmented "
        "training patches (0 = off).",
    ),
]
Swa = Annotated[
    float | None,
    typer.Option(
        "--swa",
        metavar="SHARE",
        callback=in_range(0, 1, high_open=True),
        help="Stochastic weight averaging over the last 1 - SHARE of training, e.g. 0.75 "
        "(constant LR swa_lr from then; 0 = off).",
    ),
]
LabelSmoothing = Annotated[
    float | None,
    typer.Option(
        callback=in_range(0, 1, high_open=True),
        help="Pull targets toward 0.5 by this much, in [0, 1) (0 = off).",
    ),
]


def _per_patch(what: str) -> Any:
    """An augmentation's option: the probability ``P`` (0 to 1) per patch of ``what``."""
    return typer.Option(metavar="P", min=0.0, max=1.0, help=f"Probability per patch of {what}")


Cutout = Annotated[
    float | None, _per_patch("1-3 mean-filled rectangles outside the central 32x32.")
]

Mixup = Annotated[
    float | None,
    at_least(0.0, metavar="ALPHA", help="mixup within a batch, Beta(ALPHA, ALPHA) (0 = off)."),
]

RandStain = Annotated[float | None, _per_patch("a random LAB stain template (RandStainNA style).")]
JpegBlur = Annotated[float | None, _per_patch("a JPEG re-encode (q 30-90) or a blur.")]

Teacher = Annotated[
    str | None,
    typer.Option(
        metavar="CKPT",
        help="Distil from this checkpoint / run folder / shipped model (pcam-cnn; a file of "
        "that name: ./pcam-cnn), offline 8-view TTA soft targets.",
    ),
]
DistillWeight = Annotated[
    float | None,
    typer.Option(metavar="W", min=0.0, max=1.0, help="Weight of the teacher's term [0.5]."),
]
DistillTemperature = Annotated[
    float | None,
    typer.Option(metavar="T", callback=POSITIVE, help="Distillation temperature [2]."),
]


def _run(
    out: Path,
    options: dict[str, Any],
    *,
    config: Path | None,
    resume: bool,
    quiet: bool,
    overwrite: bool = False,
    base: dict[str, Any] | None = None,
    given_by: dict[str, str] | None = None,
) -> None:
    """Resolve defaults < ``base`` preset < config file < ``options`` (None = not given),
    then train into ``out``. ``given_by``: ``model_config`` keys an option other than
    ``--model-config`` set (finetune's ``input_size``: ``--input-size``)."""
    try:
        _train(out, options, config=config, resume=resume, quiet=quiet, overwrite=overwrite,
               base=base, given_by=given_by)  # fmt: skip
    except BaseException as exc:
        if launched_distributed():
            from histomodels.distributed import report_early_failure

            report_early_failure(exc)  # one that fails before joining tells the others
        raise


def _train(
    out: Path,
    options: dict[str, Any],
    *,
    config: Path | None,
    resume: bool,
    quiet: bool,
    overwrite: bool,
    base: dict[str, Any] | None,
    given_by: dict[str, str] | None = None,
) -> None:
    from histomodels.config import TrainConfig, parse_model_config, resolve_config

    require_folder(out)
    held = [name for name in ("last.pt", "best.pt") if (out / name).is_file()]
    if held and not resume and not overwrite:  # a trained run is not replaced unasked
        resumable = "--resume continues it, " if "last.pt" in held else ""
        fail(
            f"{out}: holds a trained run ({held[0]}); {resumable}--overwrite trains anew "
            "over it, or choose another --out"
        )
    if quiet:
        setup_logging(logging.WARNING)
    with errors():
        options = dict(options, progress=False if quiet else None)
        mc = options.get("model_config")
        if isinstance(mc, str):
            options["model_config"] = parse_model_config(mc)
        if resume and "last.pt" in held:
            _refuse_ignored_settings(out, options, config)
        cfg = resolve_config(config, base=TrainConfig(**base) if base else None, **options)
    if not resume:  # a missing data path fails before PyTorch is imported
        for path, option, key, role in ((cfg.data, "--data", "data", "training"),
                                        (cfg.val, "--val", "val", "validation")):  # fmt: skip
            if not path:
                fail(f"no {role} data: give {option} (or '{key}' in a --config file)")
        require_paths(cfg.data, role="train")
        require_paths(cfg.val, role="validation")
        if base is not None:
            _refuse_default_weights(cfg, options, config, base)
        _refuse_shipped_weights_of_another_model(cfg)
        if options.get("model_config") is not None:
            _check_given_model_config(cfg, given_by or {})
    from histomodels.training import TrainingError, train
    from histomodels.training.callbacks import RESULT_LOG
    from histomodels.training.network import BuildRefused
    from histomodels.training.run_folder import KEPT, WRITTEN

    # each failed only when written: after the data, an epoch, or the teacher's scoring; a
    # link to a folder is not refused (the atomic write replaces the link itself)
    for name in sorted(WRITTEN | (KEPT if cfg.teacher else frozenset())):
        if (out / name).is_dir() and not (out / name).is_symlink():
            fail(f"{out / name}: is a folder, not a file")
    _refuse_to_replace(out, cfg, config)

    # the result on stdout below; the trainer's own last line is not said again on stderr
    with (
        errors(TrainingError),
        progress(enabled=not quiet),
        log_level(RESULT_LOG.name, logging.WARNING),
    ):
        try:
            given = {"origin_split": "--origin-split"} if options.get("origin_split") else {}
            with reader_options(given):  # --origin-split on a format without origins
                result = train(cfg, out, resume=resume)
        except BuildRefused as exc:  # name where the keys came from, as check_model does
            where = _model_config_sources(exc.given, options, config, given_by or {})
            fail(f"{where}: {exc}" if where else str(exc))
    m = result.best_metrics
    if m:
        best = path_line(out / "best.pt")
        typer.echo(
            f"best val AUC {m['val_auc']:.4f} (accuracy {m['val_accuracy']:.4f}) at epoch "
            f"{result.best_epoch}; stopped: {result.stop_reason}; {best}"
        )


def _refuse_to_replace(out: Path, cfg: Any, config: Path | None) -> None:
    """One line, before the data is read, where the run would replace in ``out`` a file it
    did not write: the library's rule
    (:func:`histomodels.training.run_folder.refuse_to_replace`: in a folder holding no
    trained run, any file at one of its names but a ``config.json`` byte for byte the one
    this run writes; a pipe or device at one of them; a ``teacher_logits.npz`` that is not
    a run's cache), worded for the command line (``choose another --out``), and what only
    the command line knows: the checkpoint the run starts from (``--weights``,
    ``--teacher``: the run's own best.pt or last.pt, with ``--overwrite``), and the
    ``--config`` file being read, which is not replaced even in a trained run's folder
    (its edits were lost to the resolved config). A trained run's own files are its to
    replace (``--resume``, ``--overwrite``)."""
    from histocore.io import holds_a_file, same_file
    from histomodels.checkpoint import resolve_checkpoint
    from histomodels.training import TrainingError
    from histomodels.training.run_folder import (
        CHECKPOINTS,
        CONFIG_NAME,
        config_text,
        holds_text,
        refuse_to_replace,
    )

    would = "training would replace it: choose another --out"
    for name in sorted(CHECKPOINTS):
        target = out / name
        for option, given in (("--weights", cfg.weights), ("--teacher", cfg.teacher)):
            if given and same_file(target, resolve_checkpoint(given)):
                fail(f"{target}: is the checkpoint given as {option}; {would}")
    text, target = config_text(cfg), out / CONFIG_NAME
    if config is not None and same_file(target, config):
        try:
            edited = holds_a_file(target) and not holds_text(target, text)
        except (OSError, RefusedFile):  # unreadable, a pipe: the library's rule says it
            edited = False
        if edited:
            fail(f"{target}: is the config given as --config; {would}")
    try:
        refuse_to_replace(out, text, bool(cfg.teacher), would=would)
    except TrainingError as exc:
        fail(str(exc))


def _model_config_sources(
    given: dict[str, Any], options: dict[str, Any], config: Path | None, given_by: dict[str, str]
) -> str:
    """Where the ``given`` model_config keys came from: ``--model-config`` (or the option
    ``given_by`` names), the config file, or both (``c.json and --model-config``)."""
    from histomodels.config import read_config_file

    own = options.get("model_config") or {}
    data = read_config_file(config) if config else {}
    theirs = data.get("model_config") if isinstance(data.get("model_config"), dict) else {}
    where: list[str] = []
    for key in given:
        source = (given_by.get(key, "--model-config") if key in own
                  else str(config) if key in theirs else None)  # fmt: skip
        if source and source not in where:
            where.append(source)
    return " and ".join(sorted(where, key=lambda s: s.startswith("-")))


def _check_given_model_config(cfg: Any, given_by: dict[str, str]) -> None:
    """``cfg.model_config`` (options gave some of it) as the model registry judges it
    (:func:`~histomodels.config.check_model`), one line naming the option: ``error:
    --model-config: model_config 'width' is 0; cnn takes int in [1, 4096]`` (it named no
    option). ``given_by``: keys another option set (finetune's ``input_size``), judged
    after the rest and named as that option."""
    from histomodels.config import check_model

    own = {k: v for k, v in cfg.model_config.items() if k not in given_by}
    with errors():
        check_model(dataclasses.replace(cfg, model_config=own), "--model-config")
        for option in dict.fromkeys(given_by.values()):
            check_model(cfg, option)


def _refuse_default_weights(
    cfg: Any, options: dict[str, Any], config: Path | None, base: dict[str, Any]
) -> None:
    """A weight source ``base`` (finetune's ``imagenet``) gave, not the user, that
    ``cfg.model`` does not take (the cnn has no ImageNet weights): one line saying what to
    give instead. It was ``error: imagenet: no such weights file, and not a weight source of
    cnn ...``, about a value the user never typed."""
    from histomodels.config import read_config_file

    if options.get("weights") is not None or cfg.weights != base.get("weights"):
        return
    if config and "weights" in read_config_file(config):
        return
    import histomodels.models  # noqa: F401 (the zoo registers its builders)
    from histomodels.models.registry import weight_sources, weights_problem

    if weights_problem(cfg.model, cfg.weights) is None:
        return
    own = weight_sources(cfg.model)
    scratch = "" if own else f", or train it from scratch: histomodels train --model {cfg.model}"
    fail(
        f"--model {cfg.model}: it has no {cfg.weights!r} weights, finetune's default --weights; "
        f"give --weights {' | '.join([*own, 'PATH'])} (a checkpoint or state dict of "
        f"{cfg.model}){scratch}"
    )


def _refuse_shipped_weights_of_another_model(cfg: Any) -> None:
    """``--weights pcam-cnn`` (a shipped model's weights) for another model: one line naming
    the command that trains from them, before PyTorch is imported. The library's own error
    (``create_model``) names the Python call, which means nothing on a command line. The
    name means the shipped model also where a file of that name is here (``./pcam-cnn``
    reads that one), as in the library."""
    from histomodels import pretrained

    if pretrained.shipped_name(cfg.weights) is None:
        return
    trained_as = pretrained.sidecar(cfg.weights).get("model")
    if trained_as == cfg.model:
        return
    fail(
        f"{cfg.weights}: shipped weights of model {trained_as!r}, not of {cfg.model!r}; "
        f"train from them with: histomodels train --model {trained_as} --weights {cfg.weights}"
    )


def _refuse_ignored_settings(out: Path, options: dict[str, Any], config: Path | None) -> None:
    """``--resume`` with settings the run would not take (it keeps its saved ones, all but
    :data:`~histomodels.config.RESUME_OVERRIDES`) is one error line naming them, not a run
    that silently trains on other data or at another LR than the user asked for."""
    from histomodels.config import RESUME_OVERRIDES, read_config_file, resume_conflicts
    from histomodels.training.run_folder import MAX_RUN_CONFIG_BYTES

    path = out / "config.json"
    if path.is_dir():  # the resumed run would fail to write it, once the data is read
        fail(f"{path}: is a folder, not a file")
    if path.exists() and not path.is_file():  # a FIFO was read forever (a hang)
        fail(f"{path}: not a regular file (a pipe, socket or device)")
    try:  # a few KB as a run writes it: not read whole if huge
        raw = read_capped(path, MAX_RUN_CONFIG_BYTES)
    except OSError:
        return  # resuming reads last.pt, and says what is wrong with the run
    except RefusedFile as exc:
        fail(f"{path}: {exc}, not the config.json a run writes (a few KB)")
    try:
        saved = loads_json(raw.decode("utf-8"))
    except ValueError:  # NotJSON, UnicodeDecodeError
        return  # resuming reads last.pt, and says what is wrong with the run
    if not isinstance(saved, dict):
        return
    given = dict(read_config_file(config)) if config else {}
    given.update({k: v for k, v in options.items() if v is not None})
    conflicts = resume_conflicts(saved, given)
    if conflicts:  # what it takes, as the options are spelt (progress is --quiet's: always)
        taken = ["--" + k.replace("_", "-") for k in RESUME_OVERRIDES if k != "progress"]
        fail(
            f"{out}: --resume continues the run with its own settings, and these differ: "
            f"{', '.join(conflicts)}; a resumed run takes only new "
            f"{', '.join(taken)} (--overwrite trains anew)"
        )


def _resume_or_overwrite(ctx: typer.Context, resume: bool, overwrite: bool) -> None:
    """``--resume`` continues the run in ``--out``, ``--overwrite`` trains anew over it:
    both together is a usage error (``--overwrite`` was ignored: the run was resumed)."""
    if resume and overwrite:
        usage_error(
            ctx, "--resume continues the run, --overwrite trains anew over it; not both",
            "--resume", "--overwrite",
        )  # fmt: skip


def _options(ctx: typer.Context) -> dict[str, Any]:
    """The command's options named like :class:`~histomodels.config.TrainConfig` keys, by
    name (a ``None`` was not given: the config file or the defaults decide)."""
    from histomodels.config import FIELDS

    return {name: value for name, value in ctx.params.items() if name in FIELDS}


@dataclass(frozen=True, kw_only=True)
class RunData:
    """Options train and finetune share: the data, how long, the config file."""

    data: Data = None
    origin_split: OriginSplit = None
    val: Val = None
    epochs: Epochs = None
    patience: Patience = None
    time_budget: Budget = None
    config: ConfigFile = None
    batch_size: BatchSize = None


@dataclass(frozen=True, kw_only=True)
class RunRecipe:
    """Options train and finetune share: the training recipe."""

    weight_decay: Wd = None
    schedule: Schedule = None
    aug_strength: Aug = None
    label_smoothing: LabelSmoothing = None
    ema: Ema = None
    precise_bn: PreciseBn = None
    swa: Swa = None
    cutout: Cutout = None
    mixup: Mixup = None
    randstain: RandStain = None
    jpeg_blur: JpegBlur = None
    teacher: Teacher = None
    distill_weight: DistillWeight = None
    distill_temperature: DistillTemperature = None
    stain_norm: StainNorm = None
    model_config: ModelConfig = None


@dataclass(frozen=True, kw_only=True)
class RunRuntime:
    """Options train and finetune share: how the run is computed and what it writes."""

    seed: Seed = None
    compile: Compile = None
    bf16: Bf16 = None
    channels_last: ChannelsLast = None
    threads: Threads = None
    prefetch: Prefetch = None
    deterministic: Deterministic = None
    device: Device = None
    resume: Resume = False
    overwrite: Overwrite = False
    quiet: Quiet = False


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """``histomodels train``'s options, in their --help order."""

    out: Out
    model: Model = None
    run: RunData
    lr: Lr = None
    recipe: RunRecipe
    weights: Annotated[
        str | None,
        typer.Option(
            help="Initial weights: PATH, a source, or a shipped model (pcam-cnn; a file of that "
            "name: ./pcam-cnn)."
        ),
    ] = None
    runtime: RunRuntime


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """``histomodels finetune``'s options, in their --help order (its ``lr`` has its own
    help, so it sits between the shared groups)."""

    out: Out
    model: Annotated[
        str | None, typer.Option(callback=CHECK_MODEL, help="Backbone \\[efficientnet_lite0].")
    ] = None
    weights: Annotated[
        str | None,
        typer.Option(
            help="imagenet | lite0-imagenet | PATH (state dict / checkpoint; ./NAME for a "
            "file named like a source or shipped model) \\[imagenet]."
        ),
    ] = None
    freeze_epochs: Annotated[
        int | None,
        typer.Option("--warmup-epochs", min=0, help="Epochs training the head only [1]."),
    ] = None
    backbone_lr_mult: Annotated[
        float | None, at_least(0.0, help="Backbone LR = lr x this [0.3].")
    ] = None
    input_size: Annotated[
        int | None,
        typer.Option(
            min=MIN_INPUT_SIZE,
            max=MAX_INPUT_SIZE,
            help="Resize patches inside the model (96 = native).",
        ),
    ] = None
    run: RunData
    lr: Annotated[
        float | None, typer.Option(callback=POSITIVE, help="Head learning rate (AdamW) [1e-3].")
    ] = None
    recipe: RunRecipe
    runtime: RunRuntime


@with_options(TrainOptions)
def train_cmd(ctx: typer.Context, opts: TrainOptions) -> None:
    """Train a model (default: the scratch CNN) with early stopping on validation AUC."""
    runtime = opts.runtime
    _resume_or_overwrite(ctx, runtime.resume, runtime.overwrite)
    _run(opts.out, _options(ctx), config=opts.run.config, resume=runtime.resume,
         quiet=runtime.quiet, overwrite=runtime.overwrite)  # fmt: skip


@with_options(FinetuneOptions)
def finetune_cmd(ctx: typer.Context, opts: FinetuneOptions) -> None:
    """Fine-tune a pretrained backbone: head-only warm-up, then all layers at a lower LR."""
    from histomodels.config import FINETUNE_DEFAULTS, parse_model_config

    runtime = opts.runtime
    _resume_or_overwrite(ctx, runtime.resume, runtime.overwrite)
    given = _options(ctx)
    input_size, model_config = opts.input_size, opts.recipe.model_config
    given_by = None
    if input_size and input_size != 96:
        mc = parse_model_config(model_config) if model_config else {}  # checked: an object
        given["model_config"] = json.dumps({**mc, "input_size": input_size})
        given_by = {"input_size": "--input-size"}
    _run(opts.out, given, config=opts.run.config, resume=runtime.resume, quiet=runtime.quiet,
         overwrite=runtime.overwrite, base=FINETUNE_DEFAULTS, given_by=given_by)  # fmt: skip


def tune_cmd(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Training data.")],
    val: Annotated[str, typer.Option(help="Validation data (the objective is its AUC).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder (experiment JSON, trials, best_config.json); replaces only "
            "what an earlier tune wrote there.",
            parser=home_path,
        ),
    ],
    trials: Annotated[int, typer.Option(min=1, help="Total trials (including earlier ones).")] = 20,
    trial_minutes: Annotated[
        float | None,
        typer.Option(
            callback=POSITIVE,
            help="Time budget per trial [2; not with --trial-epochs].",
        ),
    ] = None,
    trial_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Fixed epochs per trial instead of a time budget (comparable trials on "
            "shared cores; not with --trial-minutes).",
        ),
    ] = None,
    fix: Annotated[
        list[str] | None,
        typer.Option(
            "--fix",
            metavar="NAME=VALUE",
            callback=checked_by("histomodels.tune_space:parse_fixed", "--fix"),
            help="Pin a dimension of the search, e.g. --fix width=16 --fix centre=pool.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Base config of every trial (as for train --config), e.g. a teacher.",
            parser=home_path,
        ),
    ] = None,
    sobol_trials: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Quasi-random (Sobol) trials first (default: a third of --trials, from 2 to 5).",
        ),
    ] = None,
    origin_split: OriginSplit = None,
    seed: Seed = None,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Bayesian optimisation (Ax/BoTorch) of the scratch CNN: lr, weight decay, width, depth,
    dropout, batch size, augmentation, centre variant and the recipe levers (cut-out, mixup,
    RandStain, JPEG/blur, label smoothing, EMA); the space is histomodels.tune.SPACE."""
    from histomodels.config import resolve_config
    from histomodels.tune_space import TuneError, check_base, parse_fixed, trial_limit

    try:  # each is in range (its callback): only "not both" is left to say
        trial_limit(trial_minutes, trial_epochs)
    except TuneError as exc:
        usage_error(ctx, str(exc), "--trial-minutes", "--trial-epochs")
    with errors():  # a bad config file: one line, before any data is read
        base = resolve_config(config, origin_split=origin_split)  # the option over the file
        check_base(base, str(config))
        fixed = parse_fixed(fix or [])
    require_paths(data, role="train")
    require_paths(val, role="validation")
    require_folder(out)
    from histomodels.training import TrainingError
    from histomodels.tune import tune

    # one line per trial (histomodels.tune), not the trials' per-epoch lines
    given = {"origin_split": "--origin-split"} if origin_split else {}
    with (
        errors(TrainingError),
        log_level("histomodels.training", logging.WARNING),
        reader_options(given, ctx),  # --origin-split on a format without origins
    ):
        best = tune(
            data,
            val,
            out,
            trials=trials,
            trial_minutes=trial_minutes,
            trial_epochs=trial_epochs,
            sobol_trials=sobol_trials,
            seed=seed,
            threads=threads,
            quiet=quiet,
            base=base,
            fixed=fixed,
            base_name=str(config) if config else "the base config",
        )
    typer.echo(
        f"best val AUC {best['val_auc']:.4f} (trial {best['trial']}); "
        f"config → {path_line(Path(out) / 'best_config.json')}"
    )
