"""DistributedDataParallel under torchrun: 2 CPU processes with gloo, unchanged CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from histomodels.checkpoint import load_model
from histomodels.distributed import DistInfo, cleanup, init_distributed, shard, span
from histomodels.synthetic import write_h5


@pytest.fixture(autouse=True)
def no_rank_prefix_left():
    """A test that creates a process group in the pytest process leaves sys.excepthook as
    it found it: init_process_group replaces it, for good, with one that prefixes every line
    of a traceback with ``[rank0]:`` (a later test's crash in CI read so)."""
    before = sys.excepthook
    yield
    after = sys.excepthook
    assert after is before or "init_process_group" not in after.__qualname__, after


def test_shards_cover_the_data_once():
    idx = torch.randperm(11)
    parts = [shard(idx, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert {len(p) for p in parts} == {3}  # equal steps per rank (tail dropped)
    assert len(set(torch.cat(parts).tolist())) == 9
    full = [shard(idx, DistInfo(rank=r, world_size=3), drop_tail=False) for r in range(3)]
    assert sorted(torch.cat(full).tolist()) == list(range(11))
    assert torch.equal(shard(idx, DistInfo()), idx)
    blocks = [span(11, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert blocks == [(0, 3), (3, 7), (7, 11)]  # contiguous, in rank order, sizes 3-4
    assert span(11, DistInfo()) == (0, 11) and span(1, DistInfo(rank=1, world_size=2)) == (0, 1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cleanup_destroys_only_the_process_group_it_created(monkeypatch):
    """A one-process gloo group: the caller's own group is used and left alone; one that
    init_distributed created is destroyed by cleanup (the trainer calls it in a finally)."""
    import torch.distributed as dist

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # init_process_group replaces it
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


#: The CLI as each rank runs it, with a spy that says how many patches each rank scored with
#: the teacher and saves the targets each rank trained on (the real functions do the work).
RANK_SCRIPT = """
import os, sys
import torch, torch.distributed as dist
import histomodels.inference as inference
import histomodels.training.distill as distill
from histomodels.cli import app

rank, spy = os.environ["RANK"], os.environ["SPY_DIR"]
scores = inference.Predictor.logits
def spy_scores(self, images, *args, **kwargs):
    seen = []
    def counted(batches):
        for b in batches:
            seen.append(len(b))
            yield b
    out = scores(self, counted(images), *args, **kwargs)
    print(f"rank {rank} scored {sum(seen)} patches", file=sys.stderr)
    return out
inference.Predictor.logits = spy_scores
targets = distill.distill_targets
def spy_targets(cfg, images, *args, **kwargs):
    out = targets(cfg, images, *args, **kwargs)
    torch.save(out, os.path.join(spy, f"targets{rank}.pt"))
    x = images if isinstance(images, torch.Tensor) else images[torch.arange(len(images))]
    torch.save(x, os.path.join(spy, f"images{rank}.pt"))
    return out
distill.distill_targets = spy_targets
try:
    app()
finally:  # the trainer destroyed the process group it joined
    alive = dist.is_initialized()
    print("group alive" if alive else "group destroyed", file=sys.stderr)
"""


def _torchrun(script, args, tmp_path, *extra):
    """torchrun with 2 processes; its temp files in ``tmp_path`` (``TMPDIR``), which pytest
    removes: without ``--log-dir`` it makes a ``torchelastic_*`` log folder with
    ``tempfile.mkdtemp`` and leaves it, and each run left one in /tmp."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *extra, str(script), *args,
    ]  # fmt: skip
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
        "SPY_DIR": str(tmp_path), "TMPDIR": str(tmp_path),
    }  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    """Two ranks train one run, distilled from a teacher: each rank scores half the patches,
    both train on the same soft targets (those of one process scoring them all, to float
    rounding), rank 0 alone writes the cache, and a rerun reuses it without scoring."""
    from histomodels.config import TrainConfig
    from histomodels.synthetic import make_patches
    from histomodels.training import train
    from histomodels.training.distill import teacher_logits

    train_h5 = write_h5(tmp_path / "train.h5", 64, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 40, seed=1)
    teacher = tmp_path / "teacher"
    tiny = {"width": 8, "depth": 2, "blocks": 1}
    cfg = TrainConfig(model_config=tiny, epochs=1, batch_size=16, progress=False, threads=1)
    train(cfg, teacher, train_data=make_patches(32, seed=2), val_data=make_patches(24, seed=3))
    script = tmp_path / "hm.py"
    script.write_text(RANK_SCRIPT)

    def run_into(run):
        args = [
            "train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
            "--model-config", json.dumps(tiny), "--epochs", "1", "--batch-size", "8",
            "--threads", "1", "--device", "cpu", "--quiet", "--teacher", str(teacher / "best.pt"),
        ]  # fmt: skip
        r = _torchrun(script, args, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stderr.count("group destroyed") == 2 and "group alive" not in r.stderr
        got = [torch.load(tmp_path / f"targets{k}.pt") for k in range(2)]
        assert torch.equal(got[0], got[1])  # the same soft targets on both ranks
        return r, got[0]

    run = tmp_path / "run"
    r, targets = run_into(run)
    # torchrun's log folder is in the test's own folder (removed with it), not left in /tmp
    assert len(list(tmp_path.glob("torchelastic_*"))) == 1
    assert r.stdout.count("best val AUC") == 1  # only rank 0 reports
    assert "rank 0 scored 32 patches" in r.stderr and "rank 1 scored 32 patches" in r.stderr
    assert r.stderr.count(" scored ") == 2
    # one process scoring every patch: the same per-patch TTA, other batches (fp32 or bf16
    # autocast as "auto" picks, the same in both), so equal to float rounding
    images = torch.load(tmp_path / "images0.pt")
    assert torch.equal(images, torch.load(tmp_path / "images1.pt")) and len(images) == 64
    alone = teacher_logits(str(teacher / "best.pt"), images, None)
    cached = np.load(run / "teacher_logits.npz")["logits"]
    assert np.allclose(cached, alone, rtol=1e-4, atol=1e-4), np.abs(cached - alone).max()
    soft = torch.sigmoid(torch.from_numpy(cached) / 2.0)  # distill_temperature T = 2
    assert torch.equal(targets[:, 1], soft)  # the targets are the cached (gathered) logits
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
    # a rerun into a folder holding the soft targets (as a failed run leaves them) reuses
    # them on every rank: nobody scores, the cache is not rewritten
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    shutil.copy2(run / "teacher_logits.npz", rerun)
    written = (rerun / "teacher_logits.npz").stat().st_mtime_ns
    r, again = run_into(rerun)
    assert " scored " not in r.stderr, r.stderr[-3000:]
    assert torch.equal(again, targets)
    assert (rerun / "teacher_logits.npz").stat().st_mtime_ns == written


@pytest.mark.slow
def test_torchrun_bad_teacher_is_one_line_on_every_rank(tmp_path):
    """A corrupt --teacher fails on every rank alike, before any collective: each rank's
    stderr (torchrun's per-rank log) is the one error line, no traceback from our code."""
    train_h5 = write_h5(tmp_path / "train.h5", 16, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 8, seed=1)
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint" * 100)
    args = [
        "train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "run"),
        "--epochs", "1", "--threads", "1", "--device", "cpu", "--quiet", "--teacher", str(bad),
    ]  # fmt: skip
    logs = tmp_path / "logs"
    # torchrun stops the other ranks once it sees one fail; polling every 5 s (not 0.1)
    # lets each rank finish on its own, so what each one prints can be read
    extra = ["--log-dir", str(logs), "--redirects", "3", "--monitor-interval", "5", "-m"]
    r = _torchrun("histomodels", args, tmp_path, *extra)
    assert r.returncode != 0
    assert not (tmp_path / "run").exists()  # nothing half written
    per_rank = sorted(logs.rglob("stderr.log"), key=lambda p: p.parent.name)
    assert [p.parent.name for p in per_rank] == ["0", "1"]
    for log in per_rank:
        lines = log.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), lines
        assert "Traceback" not in log.read_text()


def test_ranks_started_by_hand_need_rank_and_the_masters_address(monkeypatch):
    """WORLD_SIZE without RANK, or without MASTER_ADDR/MASTER_PORT: one clear error that
    says what to set (not a KeyError, nor torch's rendezvous traceback)."""
    from histomodels.distributed import DistError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DistError, match="needs RANK"):
        init_distributed(torch.device("cpu"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistError, match="MASTER_ADDR and MASTER_PORT"):
        init_distributed(torch.device("cpu"))


#: Rank 0 of 2 alone: its join's error line, once, or once for each HISTOMODELS_JOIN_TIMEOUT
#: given as an argument, in turn (one process for them all: each costs PyTorch's import).
JOIN_ALONE = """
import os, sys
import torch
from histomodels.distributed import DistError, init_distributed
failed = False
for value in sys.argv[1:] or [None]:
    if value is not None:
        os.environ["HISTOMODELS_JOIN_TIMEOUT"] = value
    try:
        init_distributed(torch.device("cpu"))
    except DistError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        failed = True
    else:
        print(f"{value}: joined", file=sys.stderr, flush=True)
sys.exit(1 if failed else 0)
"""


def test_rank_0_waits_for_the_others_only_as_long_as_histomodels_join_timeout_says(tmp_path):
    """Rank 0 started by hand whose rank 1 never comes (it failed before rank 0's store was
    up, so its report reached no one) waited out torch's 30-minute timeout. The wait is
    HISTOMODELS_JOIN_TIMEOUT seconds when set (10 minutes, torchrun's own rendezvous
    default, when not), and the line says how to wait longer; a value that is not a
    positive number of seconds is one line at once."""
    import time

    script = tmp_path / "join.py"
    script.write_text(JOIN_ALONE)
    env = {
        **os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
        "HISTOMODELS_JOIN_TIMEOUT": "3",
    }  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=150)  # fmt: skip
    assert r.returncode == 1 and time.monotonic() - t0 < 100, r.stderr
    assert r.stderr.splitlines() == [
        "error: all 2 ranks did not join within 0:00:03: start every rank with the same "
        "WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and each its own RANK); "
        "HISTOMODELS_JOIN_TIMEOUT=SECONDS waits longer for ranks started further apart"
    ]
    bad = ["soon", "0", "-5", "nan", "inf"]
    r = subprocess.run([sys.executable, str(script), *bad], env=env, capture_output=True,
                       text=True, timeout=150)  # fmt: skip
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"error: HISTOMODELS_JOIN_TIMEOUT={value}: expected a positive number of seconds, "
        "at least 0.001 (1 ms) and under 10000000 (116 days)"
        for value in bad
    ], r.stderr


def test_the_join_timeout_is_torchruns_ten_minutes_unless_set(monkeypatch):
    from datetime import timedelta

    from histomodels.distributed import join_timeout

    monkeypatch.delenv("HISTOMODELS_JOIN_TIMEOUT", raising=False)
    assert join_timeout() == timedelta(minutes=10)
    monkeypatch.setenv("HISTOMODELS_JOIN_TIMEOUT", " 5400 ")  # a node started 90 min later
    assert join_timeout() == timedelta(minutes=90)
    monkeypatch.setenv("HISTOMODELS_JOIN_TIMEOUT", "0.001")  # TCPStore's smallest wait
    assert join_timeout() == timedelta(milliseconds=1)


def test_the_training_docs_give_the_join_timeout_range_the_code_takes():
    """docs/histomodels-training.md said values went "up to 10000000", which is refused."""
    from pathlib import Path

    from histomodels.distributed import JOIN_TIMEOUT_MAX, JOIN_TIMEOUT_MIN

    doc = Path(__file__).parents[2] / "docs" / "histomodels-training.md"
    text = " ".join(doc.read_text(encoding="utf-8").split())
    said = (
        f"from {JOIN_TIMEOUT_MIN:g} (1 ms, the store's smallest wait) and under {JOIN_TIMEOUT_MAX}"
    )
    assert said in text and f"up to {JOIN_TIMEOUT_MAX}" not in text


@pytest.mark.parametrize("value", ["0.0001", "1e-9", "1e7", "99999999"])
def test_a_join_timeout_under_1_ms_or_from_116_days_is_refused_naming_the_range(monkeypatch, value):
    """TCPStore counts whole milliseconds: under 1 ms a rank failed at once with a
    traceback (DistNetworkError ... timed out after 0ms). 10^7 s and up is refused too,
    and the line says both limits, not only "a positive number"."""
    from histomodels.distributed import DistError, join_timeout

    monkeypatch.setenv("HISTOMODELS_JOIN_TIMEOUT", value)
    with pytest.raises(DistError) as e:
        join_timeout()
    assert str(e.value) == (
        f"HISTOMODELS_JOIN_TIMEOUT={value}: expected a positive number of seconds, "
        "at least 0.001 (1 ms) and under 10000000 (116 days)"
    )


#: How long the by-hand ranks may take before the test calls them hung. The hang these tests
#: guard is a rank waiting out the 10-minute join (600 s) or 30-minute collective timeout;
#: a healthy pair takes about 30 s on the 2 cores at load 7, 130-175 s at load 12 (measured
#: 2026-12-01), and CI once needed more than the old 120 s. 420 s leaves the module fixture
#: room under pytest's 600 s per test.
BY_HAND_TIMEOUT = 420


def _listening(port: int) -> bool:
    """Something listens on TCP ``port`` here (Linux's socket tables; read, so the store
    never sees a stray connection). True where the tables cannot be read: no wait then."""
    from pathlib import Path

    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return not found


#: A process that has made the imports every rank makes (the CLI, PyTorch, the trainer, timm,
#: scikit-learn: about 6 CPU seconds a process) and forks each by-hand rank from there, so the
#: by-hand tests pay them once, not twice a test. A rank is still a process of its own with
#: its own environment, working folder and stderr, that runs the CLI as ``python -m
#: histomodels`` does and exits as it would (an uncaught exception's traceback, click's exit
#: code); asked over stdin, one JSON line a request, one JSON line an answer:
#: ``spawn`` a rank (its pid), ``poll`` one (its exit code, or null while it runs), ``kill``,
#: ``hash`` (what ``hash("histomodels")`` and numpy's global generator give in a child).
#: Each rank has a forker of its own (:func:`forker`), started with its own PYTHONHASHSEED,
#: and a child reseeds numpy's global generator from the OS, as a rank started on its own
#: would have: ranks forked from one process shared the string hash seed (set and dict
#: orders of str keys) and numpy's global state, so a bug where real ranks disagree on
#: such an order, or on a draw made before the trainer seeds, could not show in these tests.
RANK_FORKER = """
import json, os, sys
import numpy as np
import histomodels.cli, histomodels.training  # noqa: F401
from histomodels.cli import app

codes = {}
for line in sys.stdin:
    job = json.loads(line)
    if job["op"] == "spawn":
        pid = os.fork()
        if pid == 0:  # the rank: the request's folder, environment, stderr file and argv
            np.random.seed()  # from the OS, as in a process of its own
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            null = os.open(os.devnull, os.O_RDWR)
            err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err, 2)
            sys.argv = ["histomodels", *job["args"]]
            app(prog_name="histomodels")
            sys.exit(0)
        answer = {"pid": pid}
    elif job["op"] == "hash":
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            np.random.seed()
            os.write(write, json.dumps([hash("histomodels"), np.random.random()]).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        answer = {"values": json.loads(os.read(read, 4096))}
        os.close(read)
    else:
        pid = job["pid"]
        if job["op"] == "kill" and pid not in codes:
            os.kill(pid, 9)
            codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if pid not in codes:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        answer = {"code": codes.get(pid)}
    print(json.dumps(answer), flush=True)
"""


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    """A RANK_FORKER process per rank (rank k's at index k), shared by the by-hand tests,
    each with a PYTHONHASHSEED of its own (drawn per session); a forker's stderr is shown
    if it fails."""
    import secrets

    seeds = [secrets.randbelow(2**32 - 1) + 1 for _ in range(2)]
    seeds[1] = seeds[1] if seeds[1] != seeds[0] else seeds[0] % (2**32 - 1) + 1
    procs = []
    try:
        for rank, seed in enumerate(seeds):
            log = tmp_path_factory.mktemp(f"forker{rank}") / "stderr.txt"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                   "PYTHONHASHSEED": str(seed)}  # fmt: skip
            with log.open("w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-c", RANK_FORKER], env=env, text=True,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                )  # fmt: skip
            procs.append((proc, log))
        yield procs
    finally:
        for proc, _ in procs:
            assert proc.stdin is not None
            proc.stdin.close()  # its loop ends; every rank it forked was waited for or killed
        for proc, _ in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_by_hand_ranks_do_not_share_a_hash_seed_or_numpys_state(forker):
    """Both by-hand ranks were forked from one process: the same str hash seed and the same
    numpy global state, unlike ranks started on their own, so a test could not catch ranks
    that disagree on a set's order or on an unseeded draw."""
    (hash0, draw0), (hash1, draw1) = (_ask(f, op="hash")["values"] for f in forker)
    assert hash0 != hash1
    assert draw0 != draw1
    assert _ask(forker[0], op="hash")["values"][1] != draw0  # each child draws afresh


def _ask(forker, **request):
    proc, log = forker
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline()
    assert answer, f"the rank forker died: {log.read_text()[-3000:]}"
    return json.loads(answer)


def _by_hand(
    forker, tmp_path, args, *, timeout=BY_HAND_TIMEOUT, rank_args=None, rank_env=None, **env_vars
):
    """Two ranks of ``histomodels ARGS`` started by hand (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT; no torchrun), rank k in its own folder ``node<k>`` as if on its own node's
    disk, each forked by ``forker`` (RANK_FORKER). Returns [(exit code, stderr, seconds to
    exit)] per rank; a rank still running after ``timeout`` s is killed and fails the test
    (it would have waited 10 minutes or more). ``rank_args`` {rank: [more args]} /
    ``rank_env`` {rank: {VAR: value}} give one rank options or environment of its own.

    Rank 1 starts once rank 0 hosts the rendezvous store, so that every test sees what its
    docstring says (rank 0 waiting in the join). Started together on a loaded box, rank 1
    could fail more than a minute before rank 0's store was up; its report then gives up
    after REPORT_WAIT and rank 0 waits for it in the join."""
    import time

    port = _free_port()
    pids, codes, t0 = [], {}, time.monotonic()

    def poll(rank):
        if rank not in codes:
            code = _ask(forker[rank], op="poll", pid=pids[rank])["code"]
            if code is not None:
                codes[rank] = (code, time.monotonic() - t0)
        return rank in codes

    for rank in range(2):
        env = {
            **os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            **env_vars, **(rank_env or {}).get(rank, {}),
        }  # fmt: skip
        node = tmp_path / f"node{rank}"
        job = {"args": [*args, *(rank_args or {}).get(rank, [])], "env": env, "cwd": str(node)}
        spawn = {"op": "spawn", "stderr": str(node / "stderr.txt"), **job}
        pids.append(_ask(forker[rank], **spawn)["pid"])
        while rank == 0 and not _listening(port) and not poll(0):
            if time.monotonic() - t0 > timeout:
                break  # rank 0 never hosted the store: the wait below fails the test
            time.sleep(0.1)
    try:
        while not (poll(0) & poll(1)):
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"rank {min({0, 1} - set(codes))} still running after {timeout} s")
            time.sleep(0.1)
    finally:
        for rank, pid in enumerate(pids):
            _ask(forker[rank], op="kill", pid=pid)  # reaps it; kills only one still running
    return [
        (codes[k][0], (tmp_path / f"node{k}" / "stderr.txt").read_text(), codes[k][1])
        for k in range(2)
    ]


#: One rank of two, started by hand, with a short REPORT_WAIT (a minute in the CLI).
SHORT_REPORT_WAIT = """
import sys
from datetime import timedelta
import histomodels.distributed
from histomodels.cli import app
histomodels.distributed.REPORT_WAIT = timedelta(seconds=2)
sys.argv[0] = "histomodels"
app()
"""


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (["--data", "missing.h5"], 1, "error: missing.h5: train data not found"),
        (["--data", "missing.h5", "--lr", "0"], 2, "Invalid value for '--lr'"),  # click's
    ],
)
def test_a_rank_failing_before_rank_0s_store_is_up_prints_only_its_error(
    tmp_path, args, code, error
):
    """Rank 1 fails before joining and no rank 0 hosts the store within REPORT_WAIT (rank
    0 far slower to start): it prints its own error alone and exits; torch's store client
    printed about 40 lines of C++ connect timeouts and stacks after it, then a warning."""
    script = tmp_path / "rank.py"
    script.write_text(SHORT_REPORT_WAIT)
    env = {
        **os.environ, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    cmd = [sys.executable, str(script), "train", "--val", "v.h5", "--out", "run", *args]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == code, r.stderr[-3000:]
    assert error in r.stderr and "c10d" not in r.stderr and "warning" not in r.stderr, r.stderr
    if code == 1:
        assert r.stderr.splitlines() == [error]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic data and a teacher trained on it, shared by the by-hand tests."""
    from histomodels.config import TrainConfig
    from histomodels.synthetic import make_patches
    from histomodels.training import train

    where = tmp_path_factory.mktemp("trained")
    write_h5(where / "train.h5", 16, seed=0)
    write_h5(where / "val.h5", 8, seed=1)
    cfg = TrainConfig(model_config=TINY, epochs=1, batch_size=8, progress=False, threads=1)
    train(
        cfg, where / "teacher", train_data=make_patches(16, seed=2),
        val_data=make_patches(8, seed=3),
    )  # fmt: skip
    return where


def _two_nodes(trained, tmp_path):
    """A folder per rank and the command line both run (``--teacher`` is relative: each
    rank's own copy, in its folder)."""
    for rank in range(2):
        (tmp_path / f"node{rank}").mkdir()
    return [
        "train", "--data", str(trained / "train.h5"), "--val", str(trained / "val.h5"),
        "--out", str(tmp_path / "run"), "--model-config", json.dumps(TINY), "--epochs", "1",
        "--batch-size", "8", "--threads", "1", "--device", "cpu", "--quiet",
        "--teacher", "teacher.pt",
    ]  # fmt: skip


TINY = {"width": 8, "depth": 2, "blocks": 1}


def _one_line_each(done, failed, problem):
    """Every rank exits 1 with one error line: the failed rank names the problem, the
    others name the failed rank. A warning line of the run before it (the tiny data's
    one-step warm-up) is not noise."""
    for rank, (code, err, _) in enumerate(done):
        lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert code == 1 and len(lines) == 1, (rank, err[-3000:])
        if rank == failed:
            assert lines[0].startswith("error: ") and problem in lines[0], lines
        else:
            assert lines[0].startswith(f"error: rank {failed} of 2 failed"), lines
    assert abs(done[0][2] - done[1][2]) < 30  # the other rank did not wait for a timeout


@pytest.mark.slow
def test_by_hand_a_teacher_missing_on_one_node_stops_both_ranks(trained, forker, tmp_path):
    """Rank 1 fails before joining (its --teacher is not on its disk): rank 0, waiting for
    it in the join, learns it from the rendezvous store and stops (it used to wait there
    for the 30-minute process-group timeout); nothing is written."""
    args = _two_nodes(trained, tmp_path)
    shutil.copy2(trained / "teacher" / "best.pt", tmp_path / "node0" / "teacher.pt")
    done = _by_hand(forker, tmp_path, args)
    _one_line_each(done, failed=1, problem="teacher must be a checkpoint")
    assert "before joining" in done[0][1]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_by_hand_a_bad_option_on_one_rank_stops_both_ranks(trained, forker, tmp_path):
    """Rank 1 is given --lr 0: click stops it with a usage error (exit 2) before any of our
    code runs; it still tells rank 0, which stops at once instead of waiting in the join
    for the 30-minute timeout; nothing is written."""
    args = _two_nodes(trained, tmp_path)
    for rank in range(2):
        shutil.copy2(trained / "teacher" / "best.pt", tmp_path / f"node{rank}" / "teacher.pt")
    done = _by_hand(forker, tmp_path, args, rank_args={1: ["--lr", "0"]})
    (code0, err0, t0), (code1, err1, t1) = done
    assert code1 == 2 and "Invalid value for '--lr'" in err1 and "Traceback" not in err1, err1
    lines = err0.splitlines()
    assert code0 == 1 and len(lines) == 1, err0[-3000:]
    assert lines[0].startswith("error: rank 1 of 2 failed before joining"), lines
    assert abs(t0 - t1) < 30  # rank 0 did not wait for a timeout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_by_hand_one_rank_streaming_and_one_in_memory_train_together(trained, forker, tmp_path):
    """Each rank decides by its own free memory whether to stream its data: rank 0 streams
    (a 1-byte cache budget), rank 1 holds the patches in memory. They still make the same
    collectives (a per-batch check on one rank only paired with DDP's gradient all-reduce
    on the other and hung both) and finish."""
    args = _two_nodes(trained, tmp_path)
    args = args[: args.index("--teacher")]  # no teacher needed here
    done = _by_hand(forker, tmp_path, args, rank_env={0: {"HISTOMODELS_CACHE_BYTES": "1"}})
    assert [code for code, _, _ in done] == [0, 0], [err[-2000:] for _, err, _ in done]
    assert (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.slow
def test_by_hand_a_teacher_only_rank_0_cannot_load_stops_both_ranks(trained, forker, tmp_path):
    """Rank 0's copy of the teacher is truncated: it fails loading it after the ranks
    joined, and both stop before the next collective with one error line each, no
    traceback, no soft-target cache, no run folder (rank 1 used to die in the gloo
    collective with a traceback)."""
    args = _two_nodes(trained, tmp_path)
    good = (trained / "teacher" / "best.pt").read_bytes()
    (tmp_path / "node0" / "teacher.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "node1" / "teacher.pt").write_bytes(good)
    done = _by_hand(forker, tmp_path, args)
    _one_line_each(done, failed=0, problem="teacher.pt: not a loadable checkpoint")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_by_hand_training_data_only_rank_1_cannot_read_stops_both_ranks(trained, forker, tmp_path):
    """Rank 1's copy of the training data is truncated: it fails reading it after the
    ranks joined, rank 0 (which read its own copy) stops too instead of scoring."""
    args = _two_nodes(trained, tmp_path)
    args[args.index("--data") + 1] = "train.h5"  # each rank's own copy
    data = (trained / "train.h5").read_bytes()
    (tmp_path / "node0" / "train.h5").write_bytes(data)
    (tmp_path / "node1" / "train.h5").write_bytes(data[: len(data) // 3])
    for rank in range(2):
        shutil.copy2(trained / "teacher" / "best.pt", tmp_path / f"node{rank}" / "teacher.pt")
    done = _by_hand(forker, tmp_path, args)
    _one_line_each(done, failed=1, problem="train.h5")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_by_hand_a_batch_only_rank_1_cannot_read_stops_both_ranks(trained, forker, tmp_path):
    """The training data is streamed (a cache budget of 1 byte) and rank 1's copy has
    damaged patches after the first: rank 1 fails at its first batch, mid-epoch, and rank
    0 stops with it instead of dying in DDP's next collective with a traceback."""
    import h5py
    import numpy as np

    args = _two_nodes(trained, tmp_path)
    args[args.index("--data") + 1] = "train.h5"  # each rank's own copy
    del args[args.index("--teacher") :]  # a teacher would read every patch at setup
    shutil.copy2(trained / "train.h5", tmp_path / "node0" / "train.h5")
    shutil.copy2(trained / "train.h5", tmp_path / "node1" / "train.h5")
    with h5py.File(tmp_path / "node1" / "train.h5", "r+") as f:
        encoded = f["encoded"]
        assert isinstance(encoded, h5py.Dataset)
        for i in range(1, len(encoded)):
            encoded[i] = np.frombuffer(b"\x89PNG\r\n\x1a\n" + b"damaged" * 9, np.uint8)
    done = _by_hand(forker, tmp_path, args, HISTOMODELS_CACHE_BYTES="1")
    _one_line_each(done, failed=1, problem="train.h5 row")
    assert not (tmp_path / "run").exists()
