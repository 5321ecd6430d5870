"""histofetch: mine PubMed/PMC for H&E histology figures as an external test set."""

__version__ = "0.1.0"
