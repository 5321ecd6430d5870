"""Out-of-core training data: block reads, block-shuffled epochs, streaming in the trainer."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch

from histomodels.config import TrainConfig
from histomodels.data import open_dataset
from histomodels.data.base import DatasetError, PatchDataset
from histomodels.data.blocks import BlockImages
from histomodels.synthetic import write_h5
from histomodels.training import load_split, train


@pytest.fixture
def pcam_h5(tmp_path):
    """A PCam-layout file (x, y in one file) with gzip chunks, like the official release."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 96, 96, 3), dtype=np.uint8)
    path = tmp_path / "pcam_x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(4, 96, 96, 3), compression="gzip")
        f.create_dataset("y", data=(np.arange(50) % 2).astype(np.uint8).reshape(-1, 1, 1, 1))
    return path, x


def test_block_images_match_the_dataset(pcam_h5):
    path, x = pcam_h5
    images = BlockImages(open_dataset(path), block=8, window=2)
    assert images.shape == (50, 96, 96, 3) and len(images) == 50
    idx = torch.tensor([49, 0, 17, 3, 17, 40])
    assert torch.equal(images[idx], torch.from_numpy(x[idx.numpy()]))
    assert torch.equal(images[5:21], torch.from_numpy(x[5:21]))
    with pytest.raises(IndexError):
        images[torch.tensor([50])]


def test_an_epoch_reads_each_block_once_and_mixes_within_windows(pcam_h5):
    path, _ = pcam_h5
    images = BlockImages(open_dataset(path), block=8, window=2)  # 7 blocks, cache of 3
    order = images.order(torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(50))  # a permutation
    assert order.tolist() != sorted(order.tolist())
    # the first window holds exactly two whole blocks, shuffled together
    first = order[:16] // 8
    assert len(set(first.tolist())) == 2 and set(order[:16].tolist()) == {
        i for b in set(first.tolist()) for i in range(b * 8, b * 8 + 8)
    }
    for b in range(0, 50, 5):
        images[order[b : b + 5]]
    assert images.reads == images.n_blocks == 7
    other = images.order(torch.Generator().manual_seed(1))
    assert not torch.equal(order, other)


class _OddPatch(PatchDataset):
    source = "odd.h5"

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        shape = (96, 96, 3) if i != 7 else (64, 64, 3)
        return np.zeros(shape, np.uint8), 0, f"patch{i}"


def test_a_bad_patch_is_named_when_its_block_is_read():
    images = BlockImages(_OddPatch(), block=4)
    assert images[torch.tensor([0, 1])].shape == (2, 96, 96, 3)
    with pytest.raises(DatasetError, match=r"odd\.h5: patch 'patch7' differs in shape"):
        images[torch.tensor([6])]


def test_load_split_streams_only_above_the_cache_budget(pcam_h5, monkeypatch):
    path, x = pcam_h5
    images, labels = load_split(path, "train")
    assert isinstance(images, torch.Tensor) and torch.equal(images, torch.from_numpy(x))
    monkeypatch.setenv("HISTOMODELS_CACHE_BYTES", str(x.nbytes - 1))
    images, labels2 = load_split(path, "train")
    assert isinstance(images, BlockImages)
    assert torch.equal(labels, labels2)
    assert isinstance(load_split(path, "train", stream=False)[0], torch.Tensor)


def test_training_streams_data_larger_than_the_cache(tmp_path, monkeypatch, caplog):
    train_h5 = write_h5(tmp_path / "train.h5", 96, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 48, seed=1)
    monkeypatch.setenv("HISTOMODELS_CACHE_BYTES", "1")
    cfg = TrainConfig(
        model="cnn",
        model_config={"width": 8, "depth": 2},
        data=str(train_h5),
        val=str(val_h5),
        epochs=2,
        batch_size=16,
        threads=1,
        progress=False,
    )
    with caplog.at_level(logging.INFO, logger="histomodels.training"):
        res = train(cfg, tmp_path / "run")
    assert "train data" in caplog.text and "streaming it in blocks" in caplog.text
    assert "validation data" in caplog.text
    assert res.epochs_run == 2 and (tmp_path / "run" / "best.pt").is_file()
    assert 0.0 <= res.history[-1]["val_auc"] <= 1.0
