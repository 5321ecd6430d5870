"""The fixed choices of histomodels' string settings, as ``Literal`` types and tuples.

One place for each set of names, without heavy imports: the library checks values against
the tuples (library callers get a :class:`~histocore.errors.UsageError`), and the CLI
annotates its options with the ``Literal`` types, so Typer lists the choices in ``--help``
and a malformed value is a usage error (exit 2) before PyTorch is imported.
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["auto", "fp32", "bf16"]
ThresholdRule = Literal["sensitivity", "youden"]
StoreTemperature = Literal["beside", "checkpoint", "none"]
ExportFormat = Literal["onnx", "torchscript"]
#: ONNX exporter; ``auto``: the dynamo exporter, and the TorchScript-based one if dynamo fails
#: on this torch build (e.g. torch 2.11 on a scalar times a 0-d parameter)
Exporter = Literal["auto", "dynamo", "legacy"]
Schedule = Literal["cosine", "plateau", "constant"]
Dataset = Literal["pcam"]
PcamSplit = Literal["train", "valid", "test"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
THRESHOLD_RULES: tuple[str, ...] = get_args(ThresholdRule)
STORE_TEMPERATURE: tuple[str, ...] = get_args(StoreTemperature)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORTERS: tuple[str, ...] = get_args(Exporter)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PCAM_SPLITS: tuple[str, ...] = get_args(PcamSplit)
