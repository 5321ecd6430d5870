"""The errors a user can cause: bad input, or a service that said no.

A command line catches :class:`DomainError` (and ``OSError``) and prints one line
``error: <file>: <problem>``; anything else is a programmer bug and keeps its traceback.
Each package's errors (``ManifestError``, ``DatasetError``, ``NetError``, …) subclass it,
usually next to the built-in they always were (``ValueError``, ``RuntimeError``).
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """``<file>: <problem>`` for an OSError, else the domain error's own message (what the
    ``error:`` line says; libraries use it too, e.g. to tell other ranks why one failed)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


class DomainError(Exception):
    """Bad input or an unavailable service; the message names the file and the problem."""


class UsageError(DomainError, ValueError):
    """An option or setting the user gave is unknown or out of range (the message says which)."""


class ManifestError(DomainError, ValueError):
    """A manifest or run store that cannot be used; the message names the file (and line)."""
