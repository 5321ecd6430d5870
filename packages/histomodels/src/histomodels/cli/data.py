"""``histomodels data download | info | stain``: thin wrappers over :mod:`histomodels.data`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from histocore.cli import home_path
from histocore.io import one_line, path_line, source_shown
from histomodels.choices import PCAM_SPLITS, Dataset, PcamSplit
from histomodels.cli._common import (
    OriginSplit,
    checked_by,
    errors,
    progress,
    require_file_out,
    require_folder,
    usage_error,
)


class SplitName(str, Enum):
    """``--split`` of ``data download``: :data:`~histomodels.choices.PCAM_SPLITS` as an Enum
    (the option repeats, and Typer takes no list of a ``Literal``)."""

    train = "train"
    valid = "valid"
    test = "test"


def download(
    dataset: Annotated[Dataset, typer.Argument(case_sensitive=False, help="Dataset to fetch.")],
    dest: Annotated[Path, typer.Option(help="Folder to download into.", parser=home_path)],
    split: Annotated[
        list[SplitName] | None,
        typer.Option(
            metavar="SPLIT", help="Split: train, valid or test (default: all). Repeatable."
        ),
    ] = None,
    gunzip: Annotated[bool, typer.Option(help="Also decompress .h5.gz to .h5.")] = False,
    meta: Annotated[bool, typer.Option(help="Also fetch the *_meta.csv files.")] = True,
    url_template: Annotated[
        str | None,
        typer.Option(
            callback=checked_by("histomodels.data.download:check_url_template", "URL template"),
            help="Mirror URL with {name} (default: Zenodo); or env HISTOMODELS_PCAM_URL.",
        ),
    ] = None,
    checksums: Annotated[
        Path | None,
        typer.Option(help="md5sum-format file replacing the built-in checksums.", parser=home_path),
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="Reconnect attempts per file.")] = 5,
) -> None:
    """Download the real PatchCamelyon files (resumable, MD5-verified)."""
    require_folder(dest)
    from histomodels.data.download import download_pcam, read_checksums

    with errors(), progress():
        sums = read_checksums(checksums) if checksums else None
        results = download_pcam(
            dest,
            tuple(s.value for s in split) if split else PCAM_SPLITS,
            url_template=url_template,
            meta=meta,
            gunzip=gunzip,
            checksums=sums,
            retries=retries,
        )
    for r in results:
        typer.echo(f"{r.status:10s} {path_line(Path(r.path))}")


def info(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="Any dataset path histomodels can read.", parser=home_path)
    ],
    sheet: Annotated[
        Path | None, typer.Option(help="Write a contact-sheet PNG here.", parser=home_path)
    ] = None,
    per_class: Annotated[int, typer.Option(min=1, help="Patches per class on the sheet.")] = 8,
    split: Annotated[PcamSplit | None, typer.Option(help="PCam folder: which split.")] = None,
    origin_split: OriginSplit = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    patch_size: Annotated[
        int | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Side of the square patches expected, in px; 0 = any size (a folder of "
            "256 px tiles, which eval reads with --scale) \\[default: 96].",
        ),
    ] = None,
) -> None:
    """Counts, label balance and (optionally) a contact sheet of sample patches."""
    from histomodels.data import DatasetError, open_dataset
    from histomodels.data.info import contact_sheet, describe
    from histomodels.data.pcam import SplitNotChosen
    from histomodels.data.readers import OptionsNotTaken

    given = {"split": split, "origin_split": origin_split, "patch_size": patch_size}
    kw: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if patch_size == 0:
        kw["patch_size"] = None  # the readers' "any size"
    require_file_out(sheet)
    with errors(), progress():
        try:
            ds = open_dataset(path, **kw)
        except SplitNotChosen as exc:  # this command has an option for it
            raise DatasetError(
                f"{exc.folder}: holds PCam splits {sorted(exc.present)}; choose one with "
                "--split NAME"
            ) from None
        except OptionsNotTaken as exc:  # said with the options' names, not the arguments'
            usage_error(
                ctx,
                f"does not apply to {path_line(exc.path)}, {exc.fmt} data"
                + _takes([_INFO_OPTIONS[k] for k in exc.allowed if k in _INFO_OPTIONS]),
                *(_INFO_OPTIONS[k] for k in exc.options),
            )
        summary = describe(ds)
        if sheet is not None:
            contact_sheet(ds, sheet, per_class=per_class)
            summary["sheet"] = str(sheet)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{one_line(source_shown(summary['source']))} ({summary['reader']})")  # encoded:PATH
    typer.echo(f"  patches: {summary['n']}  shape: {summary['patch_shape']}")
    for label, count in summary["counts"].items():
        name = {"0": "normal (0)", "1": "tumour (1)", "-1": "unlabelled"}[label]
        typer.echo(f"  {name:12s} {count:8d}  ({count / summary['n']:.1%})")
    if "figures" in summary:
        typer.echo(f"  figures: {summary['figures']}")
    if sheet is not None:
        typer.echo(f"  contact sheet: {path_line(sheet)}")


#: ``data info``'s options by the reader keyword each one gives.
_INFO_OPTIONS = {"split": "--split", "origin_split": "--origin-split", "patch_size": "--patch-size"}


def _takes(options: list[str]) -> str:
    return f" (it takes {', '.join(options)})" if options else " (it takes none of these options)"


def stain(
    reference: Annotated[
        Path, typer.Argument(help="A well-stained H&E reference image.", parser=home_path)
    ],
    out: Annotated[Path, typer.Option("--out", help="Stain JSON to write.", parser=home_path)],
) -> None:
    """Fit Macenko stain settings on a reference image, for `train --stain-norm FILE`."""
    from histomodels.data.stain import MacenkoNormalizer, StainError
    from histomodels.predict import read_rgb

    require_file_out(out)
    with errors():
        image = read_rgb(reference)
        try:
            norm = MacenkoNormalizer().fit(image)
        except StainError as exc:  # the fit's message does not name the file
            raise StainError(f"{reference}: {exc}") from None
        norm.save(out)
    typer.echo(f"wrote {path_line(out)}: "
               f"haematoxylin {norm.stains[:, 0].round(3).tolist()}, "
               f"eosin {norm.stains[:, 1].round(3).tolist()}")  # fmt: skip
