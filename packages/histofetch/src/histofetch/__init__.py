"""histofetch: mine PubMed/PMC for H&E histology figures as an external test set."""

import logging

__version__ = "0.1.0"

# the library convention: records go nowhere (not to logging's last-resort stderr handler)
# unless the application configures logging; the CLIs attach theirs (histocore.cli)
logging.getLogger(__name__).addHandler(logging.NullHandler())
