"""lowmed: a controlled study of transfer learning on small medical image datasets.

The public Python API mirrors the command line: every ``lowmed`` command is one call into one of
these functions. They are imported on first use, so ``import lowmed`` stays light (no torch).
"""

import importlib

__version__ = "0.1.0"

_API = {
    "prepare": "lowmed.data.prepare",
    "subsample": "lowmed.data.subsample",
    "train": "lowmed.training.train",
    "train_model": "lowmed.training.train",
    "finetune": "lowmed.training.train",
    "tune": "lowmed.tuning",
    "evaluate": "lowmed.evaluation.evaluate",
    "evaluate_model": "lowmed.evaluation.evaluate",
    "predict": "lowmed.prediction",
    "export": "lowmed.exporting",
    "compare_runs": "lowmed.comparison",
    "compare_models": "lowmed.comparison",
    "run_experiment": "lowmed.experiment",
    "log_to_terminal": "lowmed.console",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lowmed' has no attribute {name!r}")
