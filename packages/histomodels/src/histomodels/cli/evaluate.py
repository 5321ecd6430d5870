"""CLI commands after training: ``eval``, ``label``, ``report``, ``export``, ``predict``.

Thin wrappers: parse options, show progress, turn known input errors into one line on
stderr and exit status 1 (a malformed option value, or options that exclude each other, is
click's usage error, exit 2). The work lives in the library modules named in each command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from histocore.cli import StandardOutput, home_path, home_path_or_stdout
from histocore.errors import UsageError
from histocore.io import number_text, one_line, path_line, path_shown, source_shown
from histomodels.choices import (
    MAX_SEED,
    Exporter,
    ExportFormat,
    Precision,
    StoreTemperature,
    ThresholdRule,
    export_format,
)
from histomodels.cli._common import (
    Device,
    InferenceBatchSize,
    OriginSplit,
    Threads,
    checked_by,
    checkpoint_path,
    errors,
    fail,
    in_range,
    no_model_to_stdout,
    progress,
    reader_options,
    require_file_out,
    require_folder,
    require_paths,
    shipped_model,
    usage_error,
    use_cpu_cores,
)

#: ``--model``: a shipped model by name (histomodels.pretrained) instead of a checkpoint
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        callback=shipped_model,
        help="A model shipped with histomodels (e.g. pcam-cnn; no training, offline) "
        "instead of a checkpoint.",
    ),
]

#: eval's and export's model: a checkpoint file, a run folder or an ensemble (or ``--model``);
#: a shipped model's name stays a str (the shipped model), anything else is a Path
CheckpointArgument = Annotated[
    Path | None,
    typer.Argument(
        help="Checkpoint file, run folder (best.pt) or ensemble; or --model. A shipped "
        "model's name (pcam-cnn) is that model: ./pcam-cnn for a file of that name.",
        parser=checkpoint_path,
    ),
]

#: ``--precision``, one option and one default for eval and predict: the same checkpoint
#: gives the same probability for a patch in both (bf16 moved predict's by up to 0.0082 on
#: PCam valid)
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="fp32 (the default in eval and predict alike), bf16, or auto: bf16 where it is "
        "faster (GPUs with it; cnn on CPUs with native bf16: ~2x, probabilities up to ~0.01 off).",
    ),
]


def _model_source(
    ctx: typer.Context, checkpoint: str | Path | None, model: str | None
) -> str | Path:
    """The checkpoint argument or the ``--model`` name (exactly one of them, else a usage
    error, exit 2). A shipped model's name given as the argument is a ``str``
    (:func:`checkpoint_path`), the shipped model as with ``--model``; a path that reads
    like one (``./pcam-cnn``, parsed to ``Path("pcam-cnn")``) goes on as the ``str``
    ``./pcam-cnn``, a path as typed, so that messages name it so and say how the shipped
    model is given on a command line."""
    if checkpoint is not None and model is not None:
        usage_error(
            ctx, "give a checkpoint (file or run folder) or --model NAME, not both",
            "checkpoint", "--model",
        )  # fmt: skip
    if checkpoint is None and model is None:
        usage_error(
            ctx, "give a checkpoint (file or run folder) or --model NAME (e.g. --model pcam-cnn)",
            "checkpoint", "--model",
        )  # fmt: skip
    if isinstance(checkpoint, Path) and model is None:
        from histomodels.predict import IMAGE_SUFFIXES

        if checkpoint.suffix.lower() in IMAGE_SUFFIXES:  # `predict a.png b.png`, model forgotten
            usage_error(
                ctx, f"{checkpoint} is an image, not a checkpoint: give the checkpoint first, "
                "or --model NAME (e.g. --model pcam-cnn)", "checkpoint", "--model",
            )  # fmt: skip
        from histomodels import pretrained

        if checkpoint.is_dir() and not (checkpoint / "best.pt").exists():
            fail(f"{pretrained.shown(checkpoint)}: a folder without best.pt, so not a run "
                 "folder; give a checkpoint file, a run folder or --model NAME")  # fmt: skip
        if pretrained.is_pretrained(checkpoint):  # ./pcam-cnn, a path: on as typed, which
            return pretrained.shown(checkpoint)  # the library's messages then name
    return model if model is not None else checkpoint  # type: ignore[return-value]


def eval_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointArgument = None,
    model: ModelOption = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Test patches (any supported dataset path).")
    ] = None,
    origin_split: OriginSplit = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest", help="histofetch run folder: external literature set.", parser=home_path
        ),
    ] = None,
    val: Annotated[
        str | None,
        typer.Option(
            "--val",
            help="Validation patches: fit temperature and threshold here (with --manifest: "
            "for the figures' tiles and scores).",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output folder; replaces only what an earlier eval wrote there.",
            parser=home_path,
        ),
    ] = Path("eval"),
    tta: Annotated[bool, typer.Option("--tta", help="Average the 8 dihedral views.")] = False,
    threshold_rule: Annotated[
        ThresholdRule,
        typer.Option(
            "--threshold-rule",
            help="With --val: 'sensitivity' (screening default: highest threshold keeping "
            "--sensitivity on validation) or 'youden' (max sensitivity + specificity - 1).",
        ),
    ] = "sensitivity",
    sensitivity: Annotated[
        float | None,
        typer.Option(
            "--sensitivity",
            callback=in_range(0, 1, low_open=True),
            help="Target sensitivity for the rule 'sensitivity', in (0, 1] \\[default 0.9].",
        ),
    ] = None,
    batch_size: InferenceBatchSize = 256,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Resamples for CIs.")] = 1000,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the bootstrap resamples.")
    ] = 0,
    precision: PrecisionOption = "fp32",
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Manifest: mean of top-k.")] = 5,
    fig_scale: Annotated[
        float | None,
        typer.Option(
            "--scale",
            callback=in_range(0, 16, low_open=True),
            help="Resize factor to PCam's ~10x, in (0, 16]. --manifest: for every figure "
            "(default: estimated per figure from nucleus size). --data (and --val): tiles of "
            "any size at another magnification (0.25 for 40x), each resized, then its centre "
            "at the model's input size (96 px) scored (a smaller one whole); a folder's label "
            "is the whole tile's, not PCam's centre 32x32.",
        ),
    ] = None,
    val_scale: Annotated[
        float | None,
        typer.Option(
            "--val-scale",
            callback=in_range(0, 16, low_open=True),
            help="Resize the --val tiles by this, in (0, 16], as --scale does --data's: "
            "validation tiles from another scanner or magnification (1: PCam patches as "
            "they are). Default: --data: the --scale; --manifest: none.",
        ),
    ] = None,
    min_tissue: Annotated[
        float,
        typer.Option(
            "--min-tissue", min=0.0, max=1.0, help="Manifest: skip tiles with less tissue."
        ),
    ] = 0.5,
    store_temperature: Annotated[
        StoreTemperature,
        typer.Option(
            "--store-temperature",
            help="Where eval --val keeps the fitted T: beside (CKPT_STEM.calibration.json, "
            "used by predict/eval/export), checkpoint (rewrite it) or none.",
        ),
    ] = "beside",
    no_store: Annotated[
        bool, typer.Option("--no-store-temperature", help="Same as --store-temperature none.")
    ] = False,
    include_leaky: Annotated[
        bool,
        typer.Option(
            "--include-leaky",
            help="Manifest: also count figures flagged for leakage (CAMELYON/PCam papers, "
            "near-duplicates).",
        ),
    ] = False,
    train_data: Annotated[
        str | None,
        typer.Option(
            "--train-data",
            help="Manifest: the training patches; figures reprinting one are flagged "
            "training_duplicate (left out unless --include-leaky).",
        ),
    ] = None,
    device: Device = None,
    threads: Threads = None,
) -> None:
    """Metrics with 95% CIs, calibration, plots and an error gallery (or, with --manifest,
    image-level scores on mined literature figures)."""
    if (data is None) == (manifest is None):
        usage_error(ctx, "give exactly one of --data PATH or --manifest RUN_DIR", "--data",
                    "--manifest")  # fmt: skip
    if data is not None:
        _manifest_only(ctx)
    elif origin_split is not None:
        usage_error(ctx, "applies to --data patches, not to --manifest figures",
                    "--origin-split", "--manifest")  # fmt: skip
    if no_store and store_temperature != "none" and _given(ctx, "store_temperature"):
        usage_error(ctx, f"--store-temperature {store_temperature} keeps T, "
                    "--no-store-temperature keeps nothing: give one of them, not both",
                    "--store-temperature", "--no-store-temperature")  # fmt: skip
    if val is None:
        _val_only(ctx)
    if sensitivity is not None and threshold_rule == "youden":
        usage_error(ctx, "--sensitivity goes with --threshold-rule sensitivity, not youden",
                    "--sensitivity", "--threshold-rule")  # fmt: skip
    source = _model_source(ctx, checkpoint, model)
    require_paths(data, val, train_data)
    require_folder(manifest, what="histofetch run folder")
    require_folder(out)
    _refuse_to_replace(out, source, data, val, train_data, manifest=manifest is not None)
    # T is kept beside the checkpoint unless asked not to, or fitted on resized tiles
    resized = val_scale if val_scale is not None or manifest is not None else fig_scale
    if val is not None and not no_store:
        _refuse_to_replace_calibration(source, store_temperature, resized)
    use_cpu_cores(threads)
    with errors(), progress():
        if manifest is not None:
            from histomodels.external import evaluate_manifest

            result = evaluate_manifest(
                source,
                manifest,
                out,
                batch_size=batch_size,
                tta=tta,
                top_k=top_k,
                scale=fig_scale,
                min_tissue=min_tissue,
                precision=precision,
                device=device,
                n_bootstrap=bootstrap,
                seed=seed,
                include_leaky=include_leaky,
                train_data=train_data,
                val=val,
                threshold_rule=threshold_rule if val is not None else None,
                sensitivity=sensitivity,
                store_temperature="none" if no_store else store_temperature,
                val_scale=val_scale,
            )
        else:
            from histomodels.evaluate import evaluate_checkpoint

            with reader_options({"origin_split": "--origin-split"}, ctx):  # data without origins
                result = evaluate_checkpoint(
                    source,
                    data,
                    out,
                    val=val,
                    tta=tta,
                    batch_size=batch_size,
                    sensitivity=sensitivity,
                    threshold_rule=threshold_rule if val is not None else None,
                    n_bootstrap=bootstrap,
                    seed=seed,
                    precision=precision,
                    device=device,
                    store_temperature="none" if no_store else store_temperature,
                    scale=fig_scale,
                    val_scale=val_scale,
                    origin_split=origin_split,
                )
    if manifest is not None:
        _print_external(result, out)
    else:
        _print_metrics(result, out)


def _refuse_to_replace(
    out: Path, source: str | Path, data: str | None, val: str | None, train_data: str | None,
    *, manifest: bool
) -> None:  # fmt: skip
    """One error line, before anything is read, where eval would replace in ``out`` a file it
    did not write (:func:`histomodels.evaluate.refuse_to_replace_what_eval_did_not_write`)."""
    from histomodels.checkpoint import resolve_checkpoint
    from histomodels.evaluate import refuse_to_replace_what_eval_did_not_write

    reads = {
        "the checkpoint eval reads": resolve_checkpoint(source),
        "the --data eval reads": data,
        "the --val eval reads": val,
        "the --train-data eval reads": train_data,
    }
    with errors():
        refuse_to_replace_what_eval_did_not_write(out, reads, manifest=manifest)


def _refuse_to_replace_calibration(
    source: str | Path, store_temperature: str, val_scale: float | None
) -> None:
    """One error line, before anything is read, where ``eval --val`` would replace a file
    beside the checkpoint at its sidecar's name that eval did not write
    (:func:`histomodels.calibration.refuse_to_replace_calibration`), by the library's rule
    for where T is kept (:func:`histomodels.evaluate.sidecar_checkpoint`: not for a
    shipped model, another ``--store-temperature``, or T fitted on resized images)."""
    from histomodels.calibration import refuse_to_replace_calibration
    from histomodels.evaluate import sidecar_checkpoint

    path = sidecar_checkpoint(source, store_temperature, val_scale)
    if path is not None:
        with errors():
            refuse_to_replace_calibration(path)


#: eval options that only figures of a manifest use (``--data`` patches are not tiled;
#: ``--scale`` serves both: the figures' factor, or the one for tiles of another size)
MANIFEST_ONLY = {
    "top_k": "--top-k",
    "min_tissue": "--min-tissue",
    "include_leaky": "--include-leaky",
    "train_data": "--train-data",
}


def _given(ctx: typer.Context, name: str) -> bool:
    """The option ``name`` was given (on the command line or in the environment), not its
    default."""
    source = ctx.get_parameter_source(name)  # typer's own click: compared by name
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _manifest_only(ctx: typer.Context) -> None:
    """With ``--data``, an option given that only ``--manifest`` uses is a usage error (it
    was ignored)."""
    for name, option in MANIFEST_ONLY.items():
        if _given(ctx, name):
            usage_error(ctx, f"{option} applies to --manifest figures, not to --data patches",
                        option, "--data")  # fmt: skip


#: eval options that act only on a --val set: the operating point is chosen there, and
#: without it the model's own T and threshold are used (nothing fitted, nothing stored)
VAL_ONLY = {
    "sensitivity": "--sensitivity",
    "threshold_rule": "--threshold-rule",
    "store_temperature": "--store-temperature",
    "no_store": "--no-store-temperature",
    "val_scale": "--val-scale",
}


def _val_only(ctx: typer.Context) -> None:
    """Without ``--val``, an option given that only acts on it is a usage error (it was
    ignored: ``--threshold-rule youden`` gave the shipped threshold)."""
    for name, option in VAL_ONLY.items():
        if _given(ctx, name):
            usage_error(ctx, "needs --val: the operating point is chosen on validation",
                        option, "--val")  # fmt: skip


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _print_metrics(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False)  # paths and names are printed as they are ("runs/[a]")
    if result.get("training_data_warning"):  # eval of the training patches: said, not refused
        typer.echo(f"warning: {one_line(result['training_data_warning'])}", err=True)
    if "roc_auc" not in result:
        console.print(result.get("note", "no metrics"))
        console.print(f"predictions written to {path_line(out / 'predictions.csv')}")
        return
    name, model = result.get("checkpoint"), result.get("model")
    shown = f"{source_shown(name)} ({model})" if name and str(name) != model else model
    # a plain line, not the table's title: that is centred and wrapped to the table's width
    scaled = ""
    if result.get("scale") is not None:
        w, h = result["scored_px"]
        scaled = f", resized by {number_text(result['scale'])}, scored at {w}x{h} px"
    # the rows n counts: 7,601 of dev/train.h5's 7,602 read as all of it
    kept = f", origin_split {result['origin_split']}" if result.get("origin_split") else ""
    data = f"{source_shown(result.get('data'))}{kept}"
    console.print(one_line(f"{shown} on {data} (n={result.get('n')}{scaled})"), soft_wrap=True)
    # no "ci" at all: --bootstrap 0 asked for none (an empty column said nothing of why)
    reason = result.get("ci_reason") if "ci" in result else "--bootstrap 0"
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    if "ci" in result:
        table.add_column("95% CI", justify="right")
    ci = result.get("ci") or {}  # None: too few patches of a class (ci_reason says so)
    from histomodels.metrics import METRIC_KEYS

    for key in METRIC_KEYS:
        lo_hi = ci.get(key)
        interval = f"{lo_hi[0]:.4f}-{lo_hi[1]:.4f}" if lo_hi and None not in lo_hi else ""
        table.add_row(key, _fmt(result.get(key)), *([interval] if "ci" in result else []))
    console.print(table)
    if reason:
        console.print(f"no 95% CI: {reason}", soft_wrap=True)
    # the source has its own brackets ("default 0.5 (no validation set given)"): not nested
    from histomodels.report_tables import threshold_text

    how = result["threshold_source"]
    line = f"threshold {threshold_text(result['threshold'], how)}: {_source_shown(result)}"
    console.print(one_line(line), soft_wrap=True)  # whole lines, as the first one
    inside = " (the ensemble's own 8 views)" if result.get("tta_inside_model") else ""
    console.print(
        f"temperature {result['temperature']:.3f}; tta={result['tta']}{inside}", soft_wrap=True
    )
    sweep = [r for r in result.get("threshold_sweep", []) if round(r["threshold"] * 10, 6) % 1 == 0]
    if sweep:  # one data line, whole at any terminal width (the terminal may fold it)
        console.print(
            "recall / specificity by threshold: "
            + ", ".join(
                f"{r['threshold']:.1f}: {r['recall']:.2f}/{r['specificity']:.2f}" for r in sweep
            ),
            soft_wrap=True,
        )
    if result.get("warning"):  # one line on stderr, like every other warning
        typer.echo(f"warning: {one_line(result['warning'])}", err=True)
    console.print(
        one_line(f"wrote {path_shown(out)}/metrics.json, predictions.csv and plots"),
        soft_wrap=True,
    )


def _source_shown(result: dict) -> str:
    """``threshold_source`` as the threshold line prints it: the validation data it names
    as the other success lines name paths (:func:`histocore.io.source_shown`: a folder
    named ``~`` is ``./~/v.h5``, never ``~/v.h5``, $HOME's to a reader), made again from
    its parts in ``validation`` (:func:`histomodels.evaluate.chosen_on_validation`), not
    edited; metrics.json keeps the text as it is."""
    from histomodels.evaluate import chosen_on_validation

    v = result.get("validation") or {}
    how, data, n = v.get("threshold_chosen_by"), v.get("data"), v.get("n")
    if isinstance(how, str) and isinstance(data, str) and isinstance(n, int):
        return chosen_on_validation(how, source_shown(data), n)
    return str(result["threshold_source"])


def _print_external(result: dict, out: Path) -> None:
    bare = result.get("n_images_without_tissue") or 0
    unscored = f" ({bare} figure(s) without a tissue tile: no score)" if bare else ""
    typer.echo(
        f"{result['n_images']} figure(s), {result['n_tiles']} tissue tile(s) scored{unscored}; "
        f"left out for leakage: {result['n_excluded_leakage']}"
    )
    ext = result.get("external", {})
    for kind in ("reviewed", "weak"):
        block = ext.get(kind, {})
        typer.echo(f"{kind} labels: {block.get('n', 0)} figure(s)")
        for agg, m in (block.get("metrics") or {}).items():
            ci = (m.get("ci") or {}).get("roc_auc")
            ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""  # the point's precision
            # a None "ci": too few figures (2 figures: [1.000, 1.000] would mean nothing); no
            # "ci" at all: one class labelled (its note says so: it read "--bootstrap 0"
            # whatever --bootstrap was) or --bootstrap 0 asked for none
            reason = m.get("ci_reason") if "ci" in m else m.get("note") or "--bootstrap 0"
            if not ci and reason:
                ci_text = f" (no interval: {reason})"
            typer.echo(
                f"  {agg}: ROC AUC {_fmt(m.get('roc_auc'))}{ci_text}, "
                f"accuracy {_fmt(m.get('accuracy'))}"
            )
    agree = ext.get("agreement", {})
    if agree.get("n_both"):
        ci = agree.get("noise_rate_ci")
        ci_text = (
            f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            if ci
            else f"(no interval: {agree.get('noise_rate_ci_reason')})"
        )
        typer.echo(
            f"weak-label noise rate {agree['noise_rate']:.3f} {ci_text} "
            f"on {agree['n_both']} figure(s) with both labels"
        )
    from histomodels.report_tables import threshold_text

    how = result["threshold_source"]
    typer.echo(
        one_line(f"threshold {threshold_text(result['threshold'], how)}: {_source_shown(result)}")
    )
    typer.echo(f"temperature {result['temperature']:.3f}")
    if result.get("note"):
        typer.echo(result["note"])
    typer.echo(
        one_line(
            f"wrote {path_shown(out)}/metrics.json, image_scores.csv, tile_predictions.csv, "
            "heatmaps/, contact_sheet.png and plots"
        )
    )


def export_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointArgument = None,
    *,
    model: ModelOption = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output file (.onnx; .pt/.pth/.ts for TorchScript); replaces only an earlier "
            "export of the same format or an empty file. Not '-' (no binary output to "
            "standard output; a file named - is ./-).",
            parser=home_path_or_stdout,
        ),
    ],
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="File format \\[default: from the --out suffix: .pt/.pth/.ts TorchScript, "
            "else ONNX].",
        ),
    ] = None,
    exporter: Annotated[
        Exporter,
        typer.Option(
            "--exporter",
            help="ONNX exporter: auto = dynamo, else the TorchScript-based one (legacy).",
        ),
    ] = "auto",
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", callback=in_range(0), help="Fail if the parity diff exceeds this."
        ),
    ] = 1e-3,
) -> None:
    """Export to ONNX (dynamic batch axis, runs in ONNX Runtime) or TorchScript, then check
    parity against PyTorch on random input."""
    no_model_to_stdout(out)
    source = _model_source(ctx, checkpoint, model)
    try:
        written = export_format(out, fmt)
    except UsageError as exc:  # TorchScript into m.onnx: a usage error, before PyTorch
        usage_error(ctx, str(exc), "--format", "--out")
    require_file_out(out)
    with errors():
        from histomodels.export import export_checkpoint

        res = export_checkpoint(source, written, out, exporter=exporter, tolerance=tolerance)
    via = f" via {res['exporter']}" if res["format"] == "onnx" else ""
    typer.echo(
        f"wrote {one_line(source_shown(res['path']))} ({res['format']}{via}, {res['bytes']} bytes)"
    )
    typer.echo(f"max abs diff {res['max_abs_diff']:.3g}")
    if res.get("stain"):
        typer.echo(
            "note: the model was trained on Macenko-normalised patches; normalise inputs first "
            "(settings in the file's metadata, key histomodels.stain)"
        )


def predict_cmd(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="CHECKPOINT (file, run folder or ensemble) then image files or folders; "
            "with --model, image files or folders only.",
            metavar="[CHECKPOINT] IMAGES...",
            parser=checkpoint_path,
        ),
    ],
    model: ModelOption = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="CSV to write (replaces only a file whose first line is predict's header, an "
            "earlier run's CSV, or an empty file; never the checkpoint, its sidecar or an "
            "input); '-': standard output (the messages go to stderr; heatmaps only with "
            "--heatmaps; a file named - is ./-).",
            parser=home_path_or_stdout,
        ),
    ] = Path("predictions.csv"),
    stride: Annotated[
        int | None, typer.Option("--tile-stride", min=1, help="Tile step in px (default 96).")
    ] = None,
    scale: Annotated[
        float,
        typer.Option(
            "--scale",
            callback=in_range(0, 16, low_open=True),
            help="Resize first, in (0, 16] (0.25 for 40x images; PCam is ~10x).",
        ),
    ] = 1.0,
    heatmaps: Annotated[
        Path | None,
        typer.Option("--heatmaps", help="Heatmap folder (default: beside CSV).", parser=home_path),
    ] = None,
    no_heatmaps: Annotated[
        bool,
        typer.Option(
            "--no-heatmaps", help="Draw no heatmap PNGs (each costs ~0.5 s): the CSV only."
        ),
    ] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average the 8 dihedral views.")] = False,
    batch_size: InferenceBatchSize = 256,
    precision: PrecisionOption = "fp32",
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse larger images (bomb guard).")
    ] = 64_000_000,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            callback=in_range(0, 1),
            help="Call a patch tumour (CSV column tumour=yes) at this probability, in [0, 1] "
            "(default: the model's shipped threshold, else 0.5).",
        ),
    ] = None,
    device: Device = None,
    threads: Threads = None,
) -> None:
    """One CSV row per 96 px patch with its tumour probability and yes/no call; large images
    are tiled and get a heatmap PNG. Exit 0: every input scored; 3: the CSV was written but
    some inputs were skipped (a warning line each; those too small share one); 1: nothing
    written."""
    checkpoint = _model_source(ctx, None if model else paths[0], model)
    paths = [Path(p) for p in (paths if model else paths[1:])]  # images: a Path each
    if not paths:
        usage_error(ctx, "no image files or folders given after the checkpoint", "IMAGES...")
    if heatmaps is not None and no_heatmaps:
        usage_error(ctx, "give one of them, not both", "--heatmaps", "--no-heatmaps")
    require_paths(*paths)
    to_stdout = isinstance(out, StandardOutput)
    if not to_stdout:
        require_file_out(out)
    if not no_heatmaps and not (to_stdout and heatmaps is None):  # default folder too: a
        require_folder(heatmaps or out.with_name(out.stem + "_heatmaps"))  # file failed late
    use_cpu_cores(threads)
    stdout = sys.stdout  # taken here: inside progress() it may be the bar's stderr console
    if to_stdout and stdout is None:  # `--out - >&-`: a TypeError traceback after the work
        fail("standard output is closed")
    skipped: list = []  # files that could not be scored: one line each (see _print_skipped)
    with errors(), progress():
        from histomodels.predict import SkippedInputs, predict_paths

        try:
            res = predict_paths(
                checkpoint,
                paths,
                stdout if to_stdout else out,
                stride=stride,
                scale=scale,
                heatmap_dir=heatmaps,
                draw_heatmaps=not no_heatmaps,
                tta=tta,
                batch_size=batch_size,
                precision=precision,
                device=device,
                max_pixels=max_pixels,
                threshold=threshold,
            )
        except SkippedInputs as exc:  # the others were scored: their summary, then the lines
            skipped, res = exc.problems, exc.summary
    if res["csv"] is not None:
        _print_predicted(res, err=to_stdout)  # the CSV on stdout: the rest on stderr
    if skipped:
        _print_skipped(skipped, res)


def _print_predicted(res: dict, *, err: bool = False) -> None:
    where = "standard output" if err else source_shown(res["csv"])
    if where == "-":  # a file named '-' (given as ./-), not standard output
        where = "./-"
    typer.echo(f"{res['rows']} patch(es) from {res['files']} file(s) → {one_line(where)}", err=err)
    source = "--threshold" if res["threshold_source"] == "given" else res["threshold_source"]
    from histomodels.report_tables import threshold_text

    cut = threshold_text(res["threshold"], res["threshold_source"])
    typer.echo(f"tumour = probability >= {cut}: {source}", err=err)
    if res["heatmaps"]:
        folder = path_line(Path(res["heatmaps"][0]).parent)
        typer.echo(f"{len(res['heatmaps'])} heatmap(s) in {folder}", err=err)


#: predict's exit status when its CSV was written but some inputs could not be scored
PARTIAL_EXIT = 3


def _print_skipped(problems: list, summary: dict) -> None:
    """One line per file predict could not score: ``warning:`` and exit 3 when the others
    were scored into the CSV; ``error:`` and exit 1 when none was (nothing written). So 0
    means every input was scored, 3 that the CSV lacks some, 1 that this run wrote none.
    Files smaller than one patch (after ``--scale``) share one line when there are several,
    where the first of them stood (a folder of 256 px tiles at ``--scale 0.25`` gave one line
    per tile); that line, or a single such file's own, points to ``eval --data --scale``
    when that would score them whole (a single file's line lacked the pointer)."""
    from histocore.io import one_line
    from histomodels.predict import OverPixelLimit, TooSmall

    hint = "; --max-pixels raises the limit"  # the library's message knows no option names
    lines = [f"{exc}{hint if isinstance(exc, OverPixelLimit) else ''}" for exc in problems]
    small = [i for i, exc in enumerate(problems) if isinstance(exc, TooSmall)]
    if len(small) > 1:
        lines[small[0]] = _too_small_line([problems[i] for i in small], problems, summary)
        lines = [line for i, line in enumerate(lines) if i not in small[1:]]
    elif small:
        lines[small[0]] += _eval_pointer([problems[small[0]]], summary)
    if summary["csv"] is None:
        fail(*lines)
    for line in lines:
        typer.echo(f"warning: {one_line(line)}", err=True)
    raise typer.Exit(PARTIAL_EXIT)


def _too_small_line(small: list, problems: list, summary: dict) -> str:
    """One line for the files in ``small`` (:class:`~histomodels.predict.TooSmall`, two or
    more): how many, the first as an example, and :func:`_eval_pointer`."""
    from histocore.io import number_text

    given = (summary.get("files") or 0) + len(problems)
    size, scale = small[0].size, float(summary.get("scale", 1.0))
    # the first file's own line less its "smaller than ..." end: "a.png: 256x256 at scale
    # 0.25 is 64x64"
    example = str(small[0]).rsplit(" smaller than", 1)[0].rstrip(",").removesuffix(" is")
    line = (
        f"{len(small)} of {given} file(s) are smaller than one {size}px patch"
        f"{'' if scale == 1 else f' at scale {number_text(scale)}'}, e.g. {example}"
    )
    return line + _eval_pointer(small, summary)


def _eval_pointer(small: list, summary: dict) -> str:
    """``; predict cuts images into 96px patches: … use eval --data FOLDER --scale F`` after
    the line of the files too small for one patch (``small``, one or more), when eval scores
    them whole (:func:`histomodels.predict.eval_whole_hint`'s rule); else nothing."""
    from histomodels.predict import eval_whole_hint

    size, scale = small[0].size, float(summary.get("scale", 1.0))
    hint = eval_whole_hint(
        [e.scaled for e in small], size, scale, bool(summary.get("scores_small_whole"))
    )
    return f"; predict cuts images into {size}px patches: {hint}" if hint else ""


def label_cmd(
    manifest: Annotated[
        Path, typer.Option("--manifest", help="histofetch run folder.", parser=home_path)
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="IMAGE_ID=LABEL",
            callback=checked_by("histomodels.label:parse_set", "--set"),
            help="Set one figure's label: metastasis, no_metastasis, not_usable or clear "
            "(repeatable).",
        ),
    ] = None,
    from_csv: Annotated[
        Path | None,
        typer.Option("--from-csv", help="CSV with image_id,label columns.", parser=home_path),
    ] = None,
    relabel: Annotated[
        bool, typer.Option("--relabel", help="Also ask about labelled ones.")
    ] = False,
    show: Annotated[
        bool, typer.Option("--list", help="List figures and labels, change nothing.")
    ] = False,
) -> None:
    """Label kept figures: metastasis / no_metastasis / not_usable (saved in RUN/run.sqlite,
    exported to RUN/manifest.jsonl)."""
    from histocore.manifest import Manifest
    from histomodels.label import (
        apply_labels,
        label_interactively,
        listing,
        parse_set,
        read_label_csv,
    )

    require_folder(manifest, what="histofetch run folder")
    with errors(), Manifest.load(manifest) as m:
        if show:
            for line in listing(m):
                typer.echo(line)
            return
        if set_ or from_csv:
            labels, where = parse_set(set_ or []), {}  # where: id -> the CSV line giving it
            if from_csv:
                labels |= read_label_csv(from_csv, where)
            changed = apply_labels(m, labels, where)
            # the labels live in the run store; manifest.jsonl is its export, rewritten
            typer.echo(
                one_line(
                    f"{changed} label(s) changed in {path_shown(m.store_path)}; "
                    f"{path_shown(m.path)} exported from it"
                )
                if changed
                else "0 label(s) changed; nothing written"
            )
            return
        counts = label_interactively(m, _ask, typer.echo, relabel=relabel)
    typer.echo("labelled: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _ask(question: str) -> str:
    """One answer line from stdin; the end of the input (Ctrl-D, a piped file that ran out)
    quits like ``q`` (the labels so far are saved), Ctrl-C stays an interruption."""
    import sys

    typer.echo(f"{question}: ", nl=False)
    line = sys.stdin.readline()
    if not line:
        typer.echo("")
        return "q"
    return line


def report_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Training run and/or eval folders.", parser=home_path)
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.", parser=home_path)] = Path(
        "report"
    ),
    title: Annotated[
        str | None,
        typer.Option(
            "--title",
            help="Page title (default: 'Report: NAME', or 'Comparison: NAMES' for several).",
        ),
    ] = None,
) -> None:
    """One self-contained HTML page (and Markdown) for one run or several side by side."""
    require_folder(out)
    with errors():
        from histomodels.report import build_report

        res = build_report(runs, out, title=title)
    typer.echo(
        f"wrote {one_line(source_shown(res['html']))} and {one_line(source_shown(res['markdown']))}"
    )
