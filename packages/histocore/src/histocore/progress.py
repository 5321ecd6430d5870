"""Progress reports: libraries say how far long work has got; only a command line shows it.

A library wraps long work in :func:`task` and calls ``advance``; that costs nothing and
shows nothing unless a caller installed a display with :func:`reporting` (the CLIs do,
through :func:`histocore.cli.progress`). So data readers, trainers and stages stay quiet
when used as a library, in tests, or in batch jobs, and one display serves both CLIs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Literal

Unit = Literal["items", "bytes"]


class Task:
    """One piece of long work. This base class shows nothing; displays subclass it."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""

    def update(
        self, *, completed: int | None = None, total: int | None = None, description: str = ""
    ) -> None:
        """Set the units done so far, the total (e.g. once a download's size is known) and/or
        the description (e.g. a running loss)."""


#: A display: ``(description, total, unit)`` → a context manager yielding a :class:`Task`.
Display = Callable[[str, "int | None", Unit], AbstractContextManager[Task]]

_DISPLAY: ContextVar[Display | None] = ContextVar("histocore_progress_display", default=None)


@contextlib.contextmanager
def task(description: str, total: int | None = None, *, unit: Unit = "items") -> Iterator[Task]:
    """Report progress of one piece of work to the installed display (if any)."""
    display = _DISPLAY.get()
    if display is None:
        yield Task()
        return
    with display(description, total, unit) as shown:
        yield shown


@contextlib.contextmanager
def reporting(display: Display | None) -> Iterator[None]:
    """Send every :func:`task` inside this block to ``display`` (None: show nothing)."""
    token = _DISPLAY.set(display)
    try:
        yield
    finally:
        _DISPLAY.reset(token)
