"""The errors a user can cause: bad input, or a service that said no.

A command line catches :class:`DomainError` (and ``OSError``) and prints one line
``error: <file>: <problem>``; anything else is a programmer bug and keeps its traceback.
Each package's errors (``ManifestError``, ``DatasetError``, ``NetError``, …) subclass it,
usually next to the built-in they always were (``ValueError``, ``RuntimeError``).
"""

from __future__ import annotations

import errno
import os

from histocore.io import atomic_temp_target


def describe(exc: BaseException) -> str:
    """``<file>: <problem>`` for an OSError, else the domain error's own message (what the
    ``error:`` line says; libraries use it too, e.g. to tell other ranks why one failed).
    The file is :func:`os_error_path`'s: an atomic write whose final rename failed names
    the file the user gave, not its temp file (``out.csv: is a folder, not a file`` when
    ``--out`` names a folder)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        if isinstance(exc, IsADirectoryError) and _renamed_target(exc) is not None:
            return f"{os_error_path(exc)}: is a folder, not a file"
        return f"{os_error_path(exc)}: {exc.strerror.lower()}"
    subject, problem = getattr(exc, "subject", None), getattr(exc, "problem", None)
    if isinstance(exc, DomainError) and subject and problem:
        return f"{subject}: {problem}"
    return str(exc) or type(exc).__name__


def os_error_path(exc: OSError) -> str | None:
    """Which path an OS error's one line names (None when it has none): its file; of two
    (``os.replace``, ``os.link``) the destination, the file in the way (the source is
    often a temp file already deleted; an atomic write's temp file stands for it), or
    ``<src> -> <dst>`` when one of them is missing (either may be). ``describe`` and
    ``histofetch.stage.failure_reason`` both name it."""
    if exc.filename is None:
        return None
    if exc.filename2 is None:
        return f"{exc.filename}"
    if exc.errno == errno.ENOENT and _renamed_target(exc) is None:
        return f"{exc.filename} -> {exc.filename2}"
    return f"{exc.filename2}"


def _renamed_target(exc: OSError) -> str | None:
    """The target of a failed rename of an atomic write's temp file over it, else None."""
    src, dst = exc.filename, exc.filename2
    if not isinstance(src, str | os.PathLike) or not isinstance(dst, str | os.PathLike):
        return None
    src_name, dst_name = os.path.basename(os.fspath(src)), os.path.basename(os.fspath(dst))
    if isinstance(src_name, str) and atomic_temp_target(src_name) == dst_name:
        return str(os.fspath(dst))
    return None


def is_missing(exc: ImportError, *names: str) -> bool:
    """Whether ``exc`` says that one of the optional packages ``names`` is not installed:
    a ``ModuleNotFoundError`` whose ``.name`` is one of them. Only then is the error advice
    (``pip install ...``). An import of a submodule (``from safetensors.torch import ...``)
    names the package when the package is missing, and is judged by it; a module of the
    package's own missing (``pyarrow.lib``), another module missing as it imports (a
    dependency of its own, ``numpy``), or an ``ImportError`` that names no module (a C
    part built for another Python) is a broken install, not a missing one: the caller
    re-raises it, and it keeps its traceback."""
    return isinstance(exc, ModuleNotFoundError) and exc.name in names


class DomainError(Exception):
    """Bad input or an unavailable service; the message names the file and the problem.

    An error whose message is worded for another reader (a record's failure reason:
    ``HTTP 503 from <url>``) sets the attributes ``subject`` (the file or URL) and
    ``problem``, and :func:`describe` says ``<subject>: <problem>``, the CLI's rule."""


class UsageError(DomainError, ValueError):
    """An option or setting the user gave is unknown or out of range (the message says which)."""


class MissingDependency(DomainError, ImportError):
    """Parquet export without pyarrow (``histofetch export --format parquet``): the message
    names the file not written and what to install. Raised only where pyarrow itself is
    missing (:func:`is_missing`, the rule every optional import follows: histomodels'
    PyYAML, safetensors, lite0 weights, the demo's histofetch raise their own domain
    errors by it); an ImportError from anything else (our own code, a broken install) is a
    bug and keeps its traceback."""


class ManifestError(DomainError, ValueError):
    """A manifest or run store that cannot be used; the message names the file (and line)."""


class UnresolvablePath(ManifestError):
    """An image row's path whose links cannot be resolved (a link loop on its way)."""


class UnnameablePath(ManifestError):
    """An image row's path no file can have: a NUL character, or one the file system's
    encoding cannot write (:func:`histocore.io.unnameable`). It was called a link loop."""
