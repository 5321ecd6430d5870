"""Export a checkpoint to ONNX or TorchScript and check the export against PyTorch.

The exported graph contains the network only (input: normalised float NCHW ``[N, 3, H, W]``
with a dynamic batch axis, output: one logit per patch); preprocessing (``to_input``) and
the stored temperature (``sigmoid(logit / T)``) are recorded in the ONNX metadata so a
deployment can reproduce :mod:`histomodels.inference` exactly.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histocore.errors import DomainError, UsageError
from histocore.io import (
    make_parents,
    replace_only_ours,
    same_file,
    temp_beside,
    usual_file_mode,
)
from histomodels.calibration import effective_temperature
from histomodels.checkpoint import load_model, resolve_checkpoint
from histomodels.choices import EXPORT_FORMATS, EXPORTERS, export_format
from histomodels.inference import norm_of

FORMATS = EXPORT_FORMATS

log = logging.getLogger(__name__)


class _Logit(nn.Module):
    """Flatten the head's ``[N, 1]`` to ``[N]`` so every format returns the same shape."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(x.shape[0], -1)[:, 0]


def export_onnx(
    net: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str], exporter: str
) -> str:
    """Write ``net`` (traced on ``example``) to ONNX at ``path`` with ``meta`` in its
    metadata; returns the exporter that wrote it.

    ``auto`` falls back to ``legacy`` when the dynamo exporter fails, and logs why; but if the
    legacy trace warns that the graph depends on the example (a branch on a tensor's value,
    a tensor turned into a Python number), the trace would not be faithful for other inputs,
    so :class:`ExportError` is raised instead."""
    import onnx

    check_exporter(exporter)
    used = "dynamo" if exporter == "auto" else exporter
    try:
        traced = _onnx_export(net, example, path, used)
    except Exception as exc:  # torch.onnx raises many kinds (ConversionError, torch.export's)
        if exporter != "auto":
            raise
        why = f"{type(exc).__name__}: {_first_line(exc)}"
        log.warning(
            "the dynamo ONNX exporter failed on this model with torch %s (%s); "
            "using the TorchScript-based exporter",
            torch.__version__,
            why,
        )
        used = "legacy"
        traced = _onnx_export(net, example, path, used)
        if traced:
            raise ExportError(
                f"the dynamo ONNX exporter failed ({why}) and the TorchScript-based trace "
                f"depends on the example input ({_first_line(traced[0].message)}), so it would not "
                "be faithful; nothing written"
            ) from None
    if traced:
        log.warning("the trace depends on the example input: %s", _first_line(traced[0].message))
    proto = onnx.load(str(path))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return used


def check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown ONNX exporter {exporter!r}; use {', '.join(EXPORTERS)}")


def _first_line(exc: BaseException | str) -> str:
    """The first line of an error without terminal colour codes (torch.onnx adds them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:200] if text else ""


def _onnx_export(
    net: nn.Module, example: torch.Tensor, path: Path, exporter: str
) -> list[warnings.WarningMessage]:
    """One exporter's run; returns the TracerWarnings of a legacy trace (other warnings are
    torch's deprecation and exporter chatter, silenced)."""
    common: dict[str, Any] = {"input_names": ["input"], "output_names": ["logit"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", torch.jit.TracerWarning)
        if exporter == "dynamo":  # torch.export-based: the default exporter since torch 2.9
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
                **common,
            )
        else:  # legacy: the TorchScript-based exporter (older torch, odd models)
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=False,
                opset_version=17,
                dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}},
                **common,
            )
    return [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def _run_exported(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {"input": x.contiguous().numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, still supported
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(x).numpy()


class ExportError(DomainError, RuntimeError):
    """No exporter can write this model faithfully with the installed torch."""


class ParityError(DomainError, RuntimeError):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""


#: Where each format keeps what :func:`export_checkpoint` records (the ONNX metadata key;
#: the TorchScript archive's extra file)
_ONNX_MARK, _TORCHSCRIPT_MARK = "histomodels.model", "/extra/histomodels.json"


def _refuse_to_replace(out: Path, source: Path, fmt: str) -> None:
    """A :class:`UsageError` naming ``out`` when the export would replace the checkpoint it
    exports or its calibration sidecar (judged by real path, so one not written yet too,
    and by file identity), or any existing file but an empty one or an earlier export of
    this format by this command: ``export --out RUN/last.pt`` (``history.json``, another
    checkpoint) replaced what it never reads, ``--out RUN/best.calibration.json`` made every
    later predict and eval of the run fail. A folder is left to the writer's own error."""
    from histomodels.calibration import calibration_path

    target = out.resolve()  # source: resolve_checkpoint's (a shipped model's: in the package)
    for path, what in ((source, "the checkpoint being exported"),
                       (calibration_path(source), "the calibration file of the checkpoint "
                        "being exported")):  # fmt: skip
        if target == path.resolve() or same_file(out, path):
            raise UsageError(f"{out}: is {what}; the export would replace it: choose another --out")
    name = "ONNX" if fmt == "onnx" else "TorchScript"
    replace_only_ours(out, lambda path: is_export(path, fmt), UsageError,
                      not_ours=f"is not an earlier {name} export of histomodels",
                      would="the export would replace it: choose another --out")  # fmt: skip


def is_export(path: Path, fmt: str) -> bool:
    """Whether the regular file ``path`` is an export in ``fmt`` that
    :func:`export_checkpoint` wrote (its metadata says so). Only the metadata is read: an
    ONNX file's top-level fields are walked past (:func:`_onnx_marked`), a TorchScript
    archive's central directory listed. A file that cannot be opened or read raises its
    ``OSError`` (``<file>: permission denied``): whether it is an export cannot be told, and
    "not an earlier export" would be untrue of an earlier export made unreadable."""
    import zipfile

    with open(path, "rb") as fh:
        try:
            if fmt == "onnx":
                return _onnx_marked(fh, os.fstat(fh.fileno()).st_size)
            with zipfile.ZipFile(fh) as archive:
                return any(n.endswith(_TORCHSCRIPT_MARK) for n in archive.namelist())
        except OSError as exc:  # a read failed (an I/O error): named by the file
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
            raise
        except Exception as exc:  # anything else: not an export (BadZipFile, …)
            if isinstance(exc, MemoryError):
                raise
            return False


#: ModelProto's field number of ``metadata_props``, a repeated ``StringStringEntryProto``
#: (key field 1, value field 2) where :data:`_ONNX_MARK` is (the graph, field 7, before it)
_ONNX_METADATA = 14
#: An export has a few dozen top-level fields (opset imports, metadata entries): a file with
#: more, or with a metadata entry larger than this, is not one (a file of many tiny valid
#: fields would otherwise be walked for minutes)
_ONNX_MAX_FIELDS, _ONNX_MAX_ENTRY = 4096, 1 << 16


def _varint(fh: Any) -> int | None:
    """The protobuf varint at ``fh``'s position, or None (end of file; over 10 bytes)."""
    value = 0
    for shift in range(0, 70, 7):
        byte = fh.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def _skip_fields(fh: Any, size: int) -> Iterator[tuple[int, int]]:
    """``(field number, length)`` of each length-delimited field of the protobuf message
    in ``fh`` (``size`` bytes), left at its start for the caller to read or not (the next
    step seeks past it); varint and fixed-width fields are skipped. Ends at the end of the
    message, or at anything malformed (a bad tag or varint, a group, a field past the end),
    or after :data:`_ONNX_MAX_FIELDS` fields."""
    for _ in range(_ONNX_MAX_FIELDS):
        if fh.tell() >= size:
            return
        tag = _varint(fh)
        if tag is None or tag >> 3 == 0:
            return
        wire = tag & 7
        if wire == 0:
            if _varint(fh) is None:
                return
        elif wire in (1, 5):  # fixed 64 or 32 bit
            fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            n = _varint(fh)
            start = fh.tell()
            if n is None or start + n > size:
                return
            yield tag >> 3, n
            fh.seek(start + n)
        else:  # groups (deprecated, not in ONNX) or no wire type
            return
        if fh.tell() > size:
            return


def _onnx_marked(fh: Any, size: int) -> bool:
    """Whether the ONNX model in ``fh`` has the metadata key :data:`_ONNX_MARK`, found
    without loading it: the top-level fields are walked, the graph (and all else but the
    small metadata entries) seeked past, so a large file that is no export (a 1.9 GB one
    took 14 s and 2.7 GB of memory through ``onnx.load_model``) is told apart in a few
    reads. Anything malformed: not an export."""
    if size >= 2**31:  # over protobuf's limit: no ONNX file
        return False
    for field, n in _skip_fields(fh, size):
        if field == _ONNX_METADATA and n <= _ONNX_MAX_ENTRY:
            entry = io.BytesIO(fh.read(n))
            key = None
            for sub, m in _skip_fields(entry, n):
                if sub == 1:  # the key (the last one, as protobuf reads a repeated scalar)
                    key = entry.read(m)
            if key == _ONNX_MARK.encode():
                return True
    return False


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str | None,
    out: str | Path,
    *,
    exporter: str = "auto",
    parity_batch: int = 4,
    seed: int = 0,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Write ``out`` atomically and return ``{"path", "format", "max_abs_diff", ...}``.

    ``fmt`` None: the format ``out``'s suffix names, else ONNX; a ``fmt`` the suffix
    contradicts is a UsageError (:func:`histomodels.choices.export_format`).

    The parity check runs PyTorch and the exported model on the same random batch (and a
    batch of another size for the dynamic axis) and reports the largest logit difference.
    With ``tolerance``, a larger difference raises :class:`ParityError` and ``out`` is left
    as it was (the export is checked before it replaces anything).
    """
    fmt = export_format(out, fmt)
    check_exporter(exporter)
    out = Path(out)
    source = resolve_checkpoint(checkpoint)
    _refuse_to_replace(out, source, fmt)
    model, ckpt = load_model(checkpoint)
    make_parents(out)  # once the checkpoint loaded
    net = _Logit(model).eval()
    size = int(ckpt.get("input_size", 96))
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(parity_batch, 3, size, size, generator=gen)
    other = torch.randn(parity_batch + 3, 3, size, size, generator=gen)
    mean, std = norm_of(ckpt)
    meta = {
        "histomodels.model": str(ckpt.get("model")),
        "histomodels.input": f"float32 [N, 3, {size}, {size}], RGB/255 normalised by mean/std",
        "histomodels.normalization": json.dumps({"mean": mean, "std": std}),
        "histomodels.temperature": str(effective_temperature(source, ckpt)),
        "histomodels.output": "logit per patch; probability = sigmoid(logit / temperature)",
    }
    if ckpt.get("threshold") is not None:  # a shipped model's operating point (model card)
        meta["histomodels.threshold"] = str(float(ckpt["threshold"]))
        meta["histomodels.threshold_rule"] = str(ckpt.get("threshold_rule") or "")
    if ckpt.get("stain"):  # not part of the graph: callers must normalise patches first
        meta["histomodels.stain"] = json.dumps(ckpt["stain"])
        meta["histomodels.input"] += " after Macenko stain normalisation (histomodels.stain)"
    tmp = temp_beside(out)
    try:
        if fmt == "onnx":
            exporter = export_onnx(net, example, tmp, meta, exporter)
        else:
            extra = {"histomodels.json": json.dumps(meta)}  # see _TORCHSCRIPT_MARK
            with warnings.catch_warnings():  # jit is deprecated in torch 2.14, still works
                warnings.simplefilter("ignore", FutureWarning)
                with torch.no_grad():
                    scripted = torch.jit.trace(net, example, check_trace=False)
                scripted = torch.jit.freeze(scripted)
                torch.jit.save(scripted, str(tmp), _extra_files=extra)
        with torch.inference_mode():
            ref = torch.cat([net(example), net(other)]).numpy()
        got = np.concatenate([_run_exported(fmt, tmp, example), _run_exported(fmt, tmp, other)])
        diff = float(np.abs(ref - got).max())
        if tolerance is not None and not diff <= tolerance:
            raise ParityError(
                f"{out}: parity check failed (max abs diff {diff:.3g} > {tolerance}); "
                "nothing written"
            )
        os.chmod(tmp, usual_file_mode())  # mkstemp made it 0600, readable by its owner only
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(out),
        "format": fmt,
        "exporter": exporter if fmt == "onnx" else "trace",
        "model": ckpt.get("model"),
        "max_abs_diff": diff,
        "parity_batches": [len(example), len(other)],
        "bytes": out.stat().st_size,
        "stain": ckpt.get("stain"),
    }
