"""``python -m histofetch.cli``: the ``histofetch`` command."""

from histofetch.cli import app

app()
