"""Numeric helpers shared by every layer."""

from __future__ import annotations

import numpy as np


def finite_mean(values) -> float:
    """The mean of the defined values (NaN, without a warning, when none is)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")
