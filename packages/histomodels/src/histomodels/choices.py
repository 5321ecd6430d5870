"""The fixed choices of histomodels' string settings, as ``Literal`` types and tuples.

One place for each set of names, without heavy imports: the library checks values against
the tuples (library callers get a :class:`~histocore.errors.UsageError`), and the CLI
annotates its options with the ``Literal`` types, so Typer lists the choices in ``--help``
and a malformed value is a usage error (exit 2) before PyTorch is imported.

The names that are not a fixed list have their syntax checked here, for the same reason:
:func:`check_device` (``cpu``, ``cuda:1``...), :func:`check_model` (the registry's trainable
models, ``timm/<name>``) and :func:`origin_splits` (a comma list of names).
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import PurePath
from typing import Literal, get_args

from histocore.errors import UsageError

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

#: Seeds are numpy's (``np.random.seed``): 0 to 2**32 - 1; another was its ValueError.
MAX_SEED = 2**32 - 1

#: The most intra-op threads ``threads``/``--threads`` takes: more than any machine has cores;
#: 10**5 crashed libgomp and 2**31 overflowed torch's C int, a traceback.
MAX_THREADS = 4096

#: The sides (px) a model may resize its input to (``model_config`` ``input_size``,
#: ``finetune --input-size``): an 8 px patch is the smallest the backbones take, and 4096 px
#: the largest a checkpoint may ask for.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 4096

#: Device types histomodels runs on; ``--device`` is one, with an optional ``:N`` (``cuda:1``).
DEVICE_TYPES = ("cpu", "cuda", "mps")

#: torchvision backbones the registry builds (histomodels.models.torchvision_zoo)
TORCHVISION_ARCHS = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
)
#: The registry's models that ``train``/``finetune --model`` build (its ``ensemble`` is made
#: by ``histomodels ensemble``, not trained); tests keep it equal to
#: :func:`histomodels.models.list_models`, which needs PyTorch to list them.
TRAINABLE_MODELS = ("cnn", "efficientnet_lite0", *TORCHVISION_ARCHS)
#: ``timm/<name>``: any timm model (timm knows its names once imported)
MODEL_PREFIXES = ("timm",)


#: The ``export --out`` suffixes that say which format the file holds.
EXPORT_SUFFIXES: dict[str, str] = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".ts": "torchscript",
}
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def export_format(out: str | PathLike[str], fmt: str | None = None) -> str:
    """The format an export to ``out`` writes: ``fmt`` when given, else the one the file's
    suffix names (:data:`EXPORT_SUFFIXES`), else ``onnx``. A ``fmt`` that the suffix
    contradicts (TorchScript into ``m.onnx``) is a :class:`UsageError`, as is an unknown one."""
    suffix = PurePath(out).suffix.lower()
    named = EXPORT_SUFFIXES.get(suffix)
    if fmt is None:
        return named or "onnx"
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if named is not None and named != fmt:
        fits = "/".join(s for s, f in EXPORT_SUFFIXES.items() if f == fmt)
        raise UsageError(
            f"--format {fmt} writes {_FORMAT_NAMES[fmt]}, but {PurePath(out).name!r} is named "
            f"as {_FORMAT_NAMES[named]} ({suffix}): name it {fits}, or leave --format "
            "out to export what the name says"
        )
    return fmt


def check_device(name: str) -> str:
    """``name`` if it names a device type histomodels runs on (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``), else a :class:`UsageError`; whether this machine has it is
    :func:`histomodels.device.pick_device`'s question."""
    problem = device_problem(name)
    if problem:
        raise UsageError(f"--device {name!r}: {problem}")
    return name


def device_problem(name: str) -> str | None:
    """What is wrong with device ``name`` (:func:`check_device`'s rule), or None."""
    kind, sep, index = name.partition(":")
    index_ok = index.isascii() and index.isdigit() and len(index) <= 4 and str(int(index)) == index
    if kind not in DEVICE_TYPES or (sep and not index_ok):  # torch takes "cuda:1", not "cuda:01"
        return "not a device histomodels runs on (cpu, cuda, cuda:N, mps)"
    return None


def check_model(name: str) -> str:
    """``name`` if the registry builds it for training, else a :class:`UsageError`."""
    problem = model_problem(name)
    if problem:
        raise UsageError(f"--model {name!r}: {problem}")
    return name


def model_problem(name: str) -> str | None:
    """What is wrong with model ``name`` (:func:`check_model`'s rule), or None."""
    head, _, rest = name.partition("/")
    # spaces around a timm name are refused, as around 'cnn ', and inside an architecture's
    # name ('timm/res net18' reached timm); a source's (hf-hub:, local-dir: a folder may
    # hold spaces) is checked where it is built (models.timm_zoo)
    spaced = any(c.isspace() for c in rest) if ":" not in rest else rest != rest.strip()
    if name in TRAINABLE_MODELS or (head in MODEL_PREFIXES and rest and not spaced):
        return None
    known = ", ".join((*TRAINABLE_MODELS, *(f"{p}/<name>" for p in MODEL_PREFIXES)))
    return f"unknown model; known: {known}{_model_hint(name)}"


def _model_hint(name: str) -> str:
    """What the user likely meant, only where something plausible is near: the name without
    its spaces (``cnn ``, ``timm/resnet18 ``, ``timm/res net18``), the ``timm/`` spelling
    of ``Timm/resnet18`` or ``timm:resnet18``, else :func:`name_hint` over the trainable
    models (another case, the known names that start with it, one typo away). A name near
    nothing gets no hint: the known list already says how a timm model is given
    (``timm/<name>``). Last, a bare name shaped like an architecture's, a digit or an
    underscore in it (``resnet18``, ``resnet18 ``, ``convnext_atto.d2_in1k``), is told how a
    timm model is given (``timm/resnet18``); timm is not imported to check (a usage error
    comes before PyTorch). That hint was offered for any bare word (``--model nope``: 'a
    timm model is given as timm/nope')."""
    import re

    bare = "".join(name.split())  # 'timm/res net18 ', 'timm / resnet18', 'resnet18 '
    if bare != name and bare and model_problem(bare) is None:
        return f" (did you mean {bare!r}, without the spaces?)"
    prefixed = re.fullmatch(r"([^/:]+)[/:](.*)", bare)
    if prefixed and prefixed[1].lower() in MODEL_PREFIXES and prefixed[2]:
        return f" (did you mean '{prefixed[1].lower()}/{prefixed[2]}'?)"
    hint = name_hint(name, TRAINABLE_MODELS)
    if not hint and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.]*", bare) and re.search(r"[0-9_]", bare):
        return f" (a timm model is given as timm/{bare})"
    return hint


def name_hint(name: str, known: Iterable[str]) -> str:
    """`` (did you mean …?)`` for a ``name`` that is not one of ``known`` but plausibly
    meant one: the name without the spaces around it, in another case, the known names
    that start with it (three letters or more: ``mobilenet_v3``), or one typo away
    (:func:`_one_typo`); else ``""``, no guess for a name near none of them. Every name
    option's hint (``--model`` of train and finetune, and of eval, predict and export)."""
    known = tuple(known)
    bare = name.strip()
    if bare != name and bare in known:
        return f" (did you mean {bare!r}, without the spaces?)"
    low = bare.lower()
    same = [m for m in known if m.lower() == low]
    if same:
        return f" (did you mean {same[0]!r}?)"
    starting = [m for m in known if len(low) >= 3 and m.lower().startswith(low)]
    if starting:
        return f" (did you mean {' or '.join(map(repr, starting))}?)"
    typo = [m for m in known if _one_typo(low, m.lower())]
    if typo:
        return f" (did you mean {typo[0]!r}?)"
    return ""


def _one_typo(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` with one letter added, dropped, changed or two neighbours
    swapped; a digit changed to another digit is not a typo (``efficientnet_b3``,
    ``efficientnet_b1`` are two models)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return not (a[diff[0]].isdigit() and b[diff[0]].isdigit())
        i = diff[0]
        return len(diff) == 2 and diff[1] == i + 1 and a[i] == b[i + 1] and a[i + 1] == b[i]
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def origin_splits(value: str | Iterable[str]) -> set[str]:
    """The origin splits asked for: a comma list (or a sequence) of names, at least one;
    which names exist is the data's ``manifest.csv``'s to say."""
    names = (
        {v.strip() for v in value.split(",") if v.strip()}
        if isinstance(value, str)
        else {str(v) for v in value}
    )
    if not names:
        raise UsageError(
            f"origin_split {value!r}: no split named; give a comma list, e.g. pcam_train"
        )
    return names
