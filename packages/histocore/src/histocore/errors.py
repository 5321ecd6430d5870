"""The one error type for a run folder that cannot be read or written as a manifest."""

from __future__ import annotations


class ManifestError(ValueError):
    """A manifest or run store that cannot be used; the message names the file (and line)."""
