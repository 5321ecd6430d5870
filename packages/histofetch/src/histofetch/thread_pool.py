"""A thread pool whose threads never hold the process open (``download --jobs``).

:class:`concurrent.futures.ThreadPoolExecutor` threads are joined by the interpreter at
exit, so a Ctrl-C would wait for every running download, up to its read timeout when a
server has gone silent (a blocking socket read cannot be interrupted from another thread).
These are daemon threads: the pool's caller cancels the work (``NetClient.cancel``), waits
:data:`CANCEL_GRACE_S` at most, and the command ends.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

#: Seconds Ctrl-C waits for cancelled threads to stop before the command ends anyway.
CANCEL_GRACE_S = 2.0


class DaemonThreadPool(Executor):
    """Up to ``jobs`` daemon threads running submitted calls in order. Unlike
    :class:`~concurrent.futures.ThreadPoolExecutor`, whose threads the interpreter joins at
    exit, these do not hold the process open: on Ctrl-C, ``download --jobs`` cancels its
    client, waits :data:`CANCEL_GRACE_S` at most, and ends even when a thread is still
    blocked reading a silent server (a socket read cannot be interrupted from another
    thread; when it wakes, the cancelled client stops it before it writes anything)."""

    def __init__(self, jobs: int) -> None:
        self._jobs = jobs
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._queue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._queue.put((future, functools.partial(fn, *args, **kwargs)))
            if len(self._threads) < self._jobs:
                name = f"histofetch-{len(self._threads)}"
                thread = threading.Thread(target=self._work, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
            return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # Cancelled included: the future holds it
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if item is not None:
                        item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def join(self, within_s: float) -> None:
        """Wait for the threads to end, ``within_s`` seconds at most in all."""
        deadline = time.monotonic() + within_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
