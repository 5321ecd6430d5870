"""The small shared core of histofetch and histomodels.

- :mod:`histocore.manifest`: the run manifest schema (records, images, labels vocabulary).
- :mod:`histocore.io`: atomic file writes and file-system-safe names.
- :mod:`histocore.errors`: ``DomainError``, the base of every error a user can cause.
- :mod:`histocore.progress`: how libraries report progress (shown only if a CLI asks).
- :mod:`histocore.cli`: what both command lines share (error line, error context, bars).
"""

import logging

__version__ = "0.1.0"

# the library convention: records go nowhere (not to logging's last-resort stderr handler)
# unless the application configures logging; the CLIs attach theirs (histocore.cli)
logging.getLogger(__name__).addHandler(logging.NullHandler())
