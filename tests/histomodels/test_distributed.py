"""DistributedDataParallel under torchrun: 2 CPU processes with gloo, unchanged CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from histomodels.checkpoint import load_model
from histomodels.distributed import DistInfo, cleanup, init_distributed, shard
from histomodels.synthetic import write_h5


def test_shards_cover_the_data_once():
    idx = torch.randperm(11)
    parts = [shard(idx, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert {len(p) for p in parts} == {3}  # equal steps per rank (tail dropped)
    assert len(set(torch.cat(parts).tolist())) == 9
    full = [shard(idx, DistInfo(rank=r, world_size=3), drop_tail=False) for r in range(3)]
    assert sorted(torch.cat(full).tolist()) == list(range(11))
    assert torch.equal(shard(idx, DistInfo()), idx)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cleanup_destroys_only_the_process_group_it_created(monkeypatch):
    """A one-process gloo group: the caller's own group is used and left alone; one that
    init_distributed created is destroyed by cleanup (the trainer calls it in a finally)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        info = init_distributed(torch.device("cpu"))  # joins nothing: a group exists
        assert info.enabled and info.rank == 0 and not info.owns_group
        cleanup(info)
        assert dist.is_initialized()  # the caller's group survives
        cleanup(DistInfo(world_size=2, owns_group=True))
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    cleanup(DistInfo(world_size=2, owns_group=True))  # nothing left to destroy: no error


#: The CLI as each rank runs it, with a spy that says which rank scored the teacher and
#: which targets each rank trained on (the real functions still do the work).
RANK_SCRIPT = """
import hashlib, os, sys
import torch.distributed as dist
import histomodels.inference as inference
import histomodels.training.distill as distill
from histomodels.cli import app

rank = os.environ["RANK"]
scores = inference.Predictor.logits
def spy_scores(self, *args, **kwargs):
    print(f"rank {rank} scores the teacher", file=sys.stderr)
    return scores(self, *args, **kwargs)
inference.Predictor.logits = spy_scores
targets = distill.distill_targets
def spy_targets(*args, **kwargs):
    out = targets(*args, **kwargs)
    digest = hashlib.sha256(out.numpy().tobytes()).hexdigest()
    print(f"rank {rank} targets {digest}", file=sys.stderr)
    return out
distill.distill_targets = spy_targets
try:
    app()
finally:  # the trainer destroyed the process group it joined
    alive = dist.is_initialized()
    print("group alive" if alive else "group destroyed", file=sys.stderr)
"""


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    """Two ranks train one run, distilled from a teacher: rank 0 alone scores the teacher
    (and writes the cache), rank 1 trains on the same soft targets it received."""
    from histomodels.config import TrainConfig
    from histomodels.synthetic import make_patches
    from histomodels.training import train

    train_h5 = write_h5(tmp_path / "train.h5", 64, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 40, seed=1)
    teacher = tmp_path / "teacher"
    tiny = {"width": 8, "depth": 2, "blocks": 1}
    cfg = TrainConfig(model_config=tiny, epochs=1, batch_size=16, progress=False, threads=1)
    train(cfg, teacher, train_data=make_patches(32, seed=2), val_data=make_patches(24, seed=3))
    script = tmp_path / "hm.py"
    script.write_text(RANK_SCRIPT)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), "train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
        "--model-config", json.dumps({"width": 8, "depth": 2, "blocks": 1}),
        "--epochs", "1", "--batch-size", "8", "--threads", "1", "--device", "cpu", "--quiet",
        "--teacher", str(teacher / "best.pt"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("best val AUC") == 1  # only rank 0 reports
    assert r.stderr.count("group destroyed") == 2 and "group alive" not in r.stderr
    assert r.stderr.count("scores the teacher") == 1 and "rank 0 scores the teacher" in r.stderr
    digests = {line.split()[-1] for line in r.stderr.splitlines() if " targets " in line}
    assert r.stderr.count(" targets ") == 2 and len(digests) == 1  # the same soft targets
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1
    # 64 patches / 2 ranks / batch 8 = 4 steps per rank; every patch seen once per epoch
    _, ckpt = load_model(run / "best.pt")
    assert ckpt["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert ckpt["metrics"]["val_auc"] == pytest.approx(history[0]["val_auc"], abs=1e-4)
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "best.pt", "config.json", "history.csv", "history.json", "last.pt", "learning_curve.png",
        "teacher_logits.npz",
    ]  # fmt: skip
