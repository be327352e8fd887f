"""lowmed: a controlled study of transfer learning on small medical image datasets.

The public Python API mirrors the command line: every ``lowmed`` command is one call
into one of these functions.
"""

__version__ = "0.1.0"

from lowmed.data.prepare import prepare  # noqa: E402
from lowmed.data.subsample import subsample  # noqa: E402

__all__ = ["__version__", "prepare", "subsample"]
