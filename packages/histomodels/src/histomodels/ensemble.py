"""``histomodels ensemble``: combine trained models into one checkpoint.

The result is an ordinary histomodels checkpoint (a plain dict, ``weights_only``-loadable)
whose ``model`` is ``"ensemble"`` (:mod:`histomodels.models.ensemble`): ``model_config``
lists one member per source with its architecture, normalisation, input size and
temperature, and ``state_dict`` holds every member's weights under ``members.<i>.net.``.
So ``eval``, ``predict``, ``export`` and :class:`histomodels.inference.Predictor` load it
like any checkpoint. Its own temperature starts at 1.0 (the members' temperatures are
applied inside); ``eval --val`` fits one for the averaged logit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histocore.io import replace_only_ours, same_file
from histomodels import pretrained
from histomodels.checkpoint import (
    F32_MAX,
    F32_TINY,
    FORMAT,
    VERSION,
    CheckpointError,
    build_with_weights,
    read_checkpoint,
    resolve_checkpoint,
)
from histomodels.inference import norm_of

#: the ensemble takes RGB in [0, 1]; each member normalises its own input
IDENTITY_NORM = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def member_spec(ckpt: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """What the ensemble needs to rebuild and feed one member; its temperature is the one
    inference uses on ``source`` as given (a calibration sidecar's beside that file, a link
    too, else the checkpoint's); ``source`` is recorded as :func:`provenance` says."""
    from histomodels.calibration import effective_temperature

    mean, std = norm_of(ckpt)
    return {
        "model": ckpt["model"],
        "model_config": dict(ckpt.get("model_config", {})),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "input_size": int(ckpt.get("input_size", 96)),
        "temperature": effective_temperature(resolve_checkpoint(source), ckpt),
        "stain": ckpt.get("stain"),
        "source": provenance(source),
    }


def provenance(source: str | Path) -> str:
    """How the ensemble records a member's ``source``: the absolute, resolved path of the
    file or run folder given (``runs/a`` typed in one folder means nothing read from
    another, or once the ensemble is moved), or a shipped model's name as it is (the name,
    not a path inside the installed package; also where a file of that name is here)."""
    if pretrained.shipped_name(source) is not None:
        return str(source)
    return str(Path(source).resolve())


def build_ensemble(sources: Sequence[str | Path], *, tta: bool = False) -> dict[str, Any]:
    """The ensemble checkpoint dict of ``sources`` (checkpoint files, run folders holding
    ``best.pt``, or shipped model names such as ``pcam-cnn``).

    Members must agree on stain normalisation (it runs on the patches before the graph);
    a mix raises :class:`~histomodels.checkpoint.CheckpointError`.
    """
    if len(sources) < 2:
        raise CheckpointError("an ensemble needs at least two models")
    members: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    seen: list[tuple[Path, str]] = []
    for i, src in enumerate(sources):
        file = resolve_checkpoint(src)  # a run folder and its best.pt are one
        # one file however it is named: another spelling, a symbolic or a hard link (by
        # identity); a shipped model's name by its weights in the package. realpath, not
        # Path.resolve: a member that links to itself made resolve raise RuntimeError
        # (Python < 3.13), a traceback; read_checkpoint names the loop below
        real = os.path.realpath(file)
        twin = next((s for f, s in seen if same_file(f, file) or os.path.realpath(f) == real), None)
        if twin is not None:
            raise CheckpointError(
                f"{src}: the same checkpoint as {twin}; give each member once (a "
                "repeated member would count twice in the average)"
            )
        seen.append((file, str(src)))
        ckpt = read_checkpoint(src)
        if ckpt["model"] == "ensemble":  # its member specs are not plain config values
            raise CheckpointError(
                f"{src}: is an ensemble; an ensemble cannot be a member (list its members)"
            )
        spec = member_spec(ckpt, src)  # not its resolved path: a link's sidecar is beside it
        t = spec["temperature"]  # fine in float64 alone, 0 or inf in the ensemble
        if not F32_TINY <= t <= F32_MAX:
            small = t < F32_TINY
            raise CheckpointError(
                f"{src}: temperature {t!r} (its checkpoint's or calibration sidecar's) is too "
                f"{'small' if small else 'large'} for float32 ({'0' if small else 'inf'} there), "
                "where an ensemble divides the member's logit by it"
            )
        # each member alone: its config cannot build a giant, its weights must fit it
        build_with_weights(spec["model"], spec["model_config"], ckpt["state_dict"], src)
        members.append(spec)
        for k, v in ckpt["state_dict"].items():
            state[f"members.{i}.net.{k}"] = v
    stains = {repr(m["stain"]) for m in members}
    if len(stains) > 1:
        raise CheckpointError(
            f"{sources[0]}: members use different stain normalisation; an ensemble needs "
            "one (train the members with the same --stain-norm)"
        )
    config = {"members": members, "tta": bool(tta)}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": "ensemble",
        "model_config": config,
        "state_dict": state,
        "normalization": dict(IDENTITY_NORM),
        "input_size": members[0]["input_size"],
        "train_config": {},
        "metrics": {},
        "epoch": 0,
        "temperature": 1.0,
        "stain": members[0]["stain"],
        "ensemble_of": [provenance(s) for s in sources],
    }


def write_ensemble(sources: Sequence[str | Path], out: str | Path, *, tta: bool = False) -> Path:
    """Build and save the ensemble: ``out`` is a ``.pt`` file or a run folder (→ ``best.pt``)."""
    from histomodels.checkpoint import save_checkpoint

    out = Path(out)
    path = out if out.suffix == ".pt" else out / "best.pt"
    _refuse_to_replace_a_model(path, sources)
    return save_checkpoint(path, build_ensemble(sources, tta=tta))


def _refuse_to_replace_a_model(path: Path, sources: Sequence[str | Path]) -> None:
    """The ensemble must not be written over a member's checkpoint (its weights would be
    lost once read), over the ``best.pt`` of a training run (one holding ``last.pt``), nor
    over any other file but an empty one or an earlier ensemble (:func:`is_ensemble`):
    ``--out RUN/last.pt`` or another checkpoint was replaced, a pipe's node too."""

    if not path.exists():
        return
    for src in sources:
        if same_file(path, resolve_checkpoint(src)):
            raise CheckpointError(
                f"{path}: is the checkpoint of member {src}; the ensemble would replace its "
                "weights: choose another --out"
            )
    if path.name == "best.pt" and (path.parent / "last.pt").exists():
        raise CheckpointError(
            f"{path.parent}: holds a trained run (last.pt); the ensemble would replace its "
            "best.pt: choose another --out"
        )
    replace_only_ours(path, is_ensemble, CheckpointError,
                      not_ours="is not an earlier ensemble of histomodels",
                      would="the ensemble would replace it: choose another --out")  # fmt: skip


#: The most of a checkpoint's pickle (``data.pkl``, the dict without its tensors) that
#: :func:`is_ensemble` reads; an ensemble's is a few KB
_PICKLE_CAP = 16 << 20


def is_ensemble(path: Path) -> bool:
    """Whether the regular file ``path`` is a checkpoint :func:`write_ensemble` wrote: a
    ``torch.save`` archive whose pickle (``data.pkl``, up to 16 MB of it) is a dict holding
    ``format`` = the checkpoint format tag, ``model`` = ``"ensemble"`` and an
    ``ensemble_of`` key, read by :func:`_top_level_items` (the bytes were searched for the
    words: a trained checkpoint whose config named ``ensemble_of_sites.h5`` was replaced).
    Its tensors are never read and nothing is unpickled. A file that cannot be opened or
    read raises its ``OSError``; anything else unreadable as such an archive (a truncated
    one whose offsets fall before its start: ``EINVAL`` from a seek) is not an ensemble."""
    import errno
    import zipfile

    with open(path, "rb") as fh:
        try:
            with zipfile.ZipFile(fh) as archive:
                pickles = [n for n in archive.namelist() if n.count("/") == 1
                           and n.endswith("/data.pkl")]  # fmt: skip
                if len(pickles) != 1:
                    return False
                with archive.open(pickles[0]) as pkl:
                    head = pkl.read(_PICKLE_CAP + 1)
        except OSError as exc:  # a read failed (an I/O error): named by the file
            if exc.errno == errno.EINVAL:  # a seek before the start: not a whole archive
                return False
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
            raise
        except Exception as exc:  # BadZipFile, a bad member: not an ensemble
            if isinstance(exc, MemoryError):
                raise
            return False
    if len(head) > _PICKLE_CAP:
        return False
    items = _top_level_items(head)
    return (
        items is not None
        and items.get("format") == FORMAT
        and items.get("model") == "ensemble"
        and "ensemble_of" in items
    )


class _Opaque:
    """A value on :func:`_top_level_items`' stack it does not follow."""


class _Dict:
    """A dict on :func:`_top_level_items`' stack: its string keys and what they are set to
    (a string, or an :class:`_Opaque` / :class:`_Dict`)."""

    def __init__(self) -> None:
        self.items: dict[str, object] = {}

    def set(self, key: object, value: object) -> None:
        if isinstance(key, str):
            self.items[key] = value


_MARK = object()


def _top_level_items(data: bytes) -> dict[str, object] | None:
    """The string keys of the dict ``data`` (a pickle) holds at its top and their values
    where they are strings, found by walking its opcodes (:func:`pickletools.genops`) on a
    stack of stand-ins: nothing is unpickled, no class is looked up, no code runs. None when
    the pickle is malformed or its top is not a dict."""
    import pickletools

    stack: list[object] = []
    memo: dict[int, object] = {}
    keep_object = {"SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS", "BUILD"}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name == "STOP":
                top = stack.pop()
                return top.items if isinstance(top, _Dict) else None
            if name in ("PROTO", "FRAME"):
                continue
            if name == "MARK":
                stack.append(_MARK)
            elif name == "EMPTY_DICT":
                stack.append(_Dict())
            elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                if not stack or stack[-1] is _MARK:
                    return None
                memo[len(memo) if name == "MEMOIZE" else int(arg or 0)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(arg or 0)])  # PUT and GET have an int
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("SETITEM", "SETITEMS", "DICT"):
                single = name == "SETITEM"
                pairs = [stack.pop(-2), stack.pop()] if single else _pop_to_mark(stack)
                if len(pairs) % 2:
                    return None
                target = _Dict() if name == "DICT" else stack[-1]
                if name == "DICT":
                    stack.append(target)
                if isinstance(target, _Dict):
                    for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                        target.set(key, value)
            elif any(o is pickletools.markobject for o in op.stack_before):
                _pop_to_mark(stack)
                before = op.stack_before.index(pickletools.markobject)
                kept = stack[-1] if name in keep_object else None
                del stack[len(stack) - before :]
                _push(stack, name, kept, len(op.stack_after))
            else:
                taken = [stack.pop() for _ in op.stack_before]
                if any(t is _MARK for t in taken):
                    return None
                kept = taken[-1] if name in keep_object else None
                if "UNICODE" in name and isinstance(arg, str):
                    stack.append(arg)  # a string pushed (the *UNICODE* opcodes)
                else:
                    _push(stack, name, kept, len(op.stack_after))
    except (ValueError, IndexError, KeyError, TypeError):  # malformed: ours never is
        return None
    return None


def _push(stack: list[object], name: str, kept: object, count: int) -> None:
    """What an opcode leaves: the object it changed in place (``kept``), else stand-ins."""
    if kept is not None:
        stack.append(kept)
    else:
        stack.extend(_Opaque() for _ in range(count))


def _pop_to_mark(stack: list[object]) -> list[object]:
    """The values above the topmost mark, the mark taken off too (ValueError: no mark)."""
    at = len(stack) - 1 - stack[::-1].index(_MARK)
    taken = stack[at + 1 :]
    del stack[at:]
    return taken
