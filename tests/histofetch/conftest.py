"""Fixtures for the histofetch tests: ``ncbi`` is a local HTTP server playing NCBI & co."""

from ncbi_server import ncbi  # noqa: F401 (re-exported pytest fixture)
