"""The one error every dataset reader raises for bad input (below every other data module)."""

from __future__ import annotations

from histocore.errors import DomainError


class DatasetError(DomainError, ValueError):
    """Bad input data; the message names the file (and row) and the problem."""
