"""DaemonThreadPool (download --jobs): runs calls like a thread pool, never holds the
process open, and gives up queued work on a cancelling shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import wait

import pytest

from histofetch.http import Cancelled
from histofetch.thread_pool import DaemonThreadPool


def test_runs_calls_on_at_most_jobs_daemon_threads() -> None:
    seen: set[str] = set()

    def call(n: int) -> int:
        seen.add(threading.current_thread().name)
        assert threading.current_thread().daemon
        time.sleep(0.02)
        return n * n

    pool = DaemonThreadPool(2)
    futures = [pool.submit(call, n) for n in range(6)]
    assert [f.result(timeout=30) for f in futures] == [n * n for n in range(6)]
    assert seen <= {"histofetch-0", "histofetch-1"}
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(call, 1)


def test_a_cancelled_call_and_queued_work_end_in_their_futures() -> None:
    gate = threading.Event()

    def blocked() -> None:
        gate.wait(30)
        raise Cancelled("cancelled")  # what a cancelled NetClient raises in a thread

    pool = DaemonThreadPool(1)
    running = pool.submit(blocked)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    wait([running], timeout=30)
    assert isinstance(running.exception(), Cancelled)
    pool.join(5)


def test_a_thread_stuck_in_a_call_does_not_hold_the_process_open() -> None:
    code = (
        "import time\n"
        "from histofetch.thread_pool import DaemonThreadPool\n"
        "pool = DaemonThreadPool(1)\n"
        "pool.submit(time.sleep, 600)\n"
        "time.sleep(0.2)\n"
        "pool.shutdown(wait=False, cancel_futures=True)\n"
        "pool.join(0.1)\n"
        "print('done')\n"
    )
    # held open by the thread, the process would live its 600 s sleep: TimeoutExpired at
    # 300 s (a loaded box may take a while to start Python and import)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout == "done\n", res.stderr
