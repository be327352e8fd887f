"""Comparing arms: the runs compared (``runs``), their shared patient resamples (``resampling``), the statistics of
a difference between training pipelines (``statistics``), ``compare_runs`` itself (``compare``), the tables shown on
the terminal, in compare.md and in report.md (``render``), and what each arm looks at (``attention``)."""

import importlib

_API = {"compare_runs": "lowmed.comparison.compare", "compare_models": "lowmed.comparison.compare"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lowmed.comparison' has no attribute {name!r}")
