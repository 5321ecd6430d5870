"""The small shared core of histofetch and histomodels (standard library only).

- :mod:`histocore.io`: atomic file writes and file-system-safe names.
- :mod:`histocore.manifest`: the run manifest schema (records, images, labels vocabulary).
"""

__version__ = "0.1.0"
