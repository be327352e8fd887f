"""Bootstrap confidence intervals that resample patients, not images."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pandas as pd

from lowmed.console import track


def group_bootstrap_indices(groups: np.ndarray, strata: np.ndarray, resamples: int,
                            seed: int) -> Iterator[np.ndarray]:
    """Yield image indices of ``resamples`` bootstrap samples.

    Each sample draws whole groups (patients/lesions) with replacement, as many from each stratum
    (the group's class) as the stratum has, and takes every image of every drawn group.
    ``strata`` is per image; a group's stratum is that of its first image.
    """
    codes, unique_groups = pd.factorize(groups)
    first_image = np.unique(codes, return_index=True)[1]
    group_stratum = np.asarray(strata)[first_image]
    members = [np.flatnonzero(group_stratum == s) for s in np.unique(group_stratum)]
    rng = np.random.default_rng(seed)
    image_order = np.arange(len(codes))
    for _ in range(resamples):
        counts = np.zeros(len(unique_groups), dtype=np.int64)
        for stratum_groups in members:
            counts += np.bincount(stratum_groups[rng.integers(0, len(stratum_groups), len(stratum_groups))],
                                  minlength=len(unique_groups))
        yield np.repeat(image_order, counts[codes])


def bootstrap_ci(statistic: Callable[[np.ndarray], dict[str, float]], groups: np.ndarray, strata: np.ndarray,
                 resamples: int, seed: int, quiet: bool = True, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals for every value ``statistic(indices)`` returns; NaN draws are left out."""
    draws: dict[str, list[float]] = {}
    samples = group_bootstrap_indices(groups, strata, resamples, seed)
    for indices in track(samples, resamples, "Bootstrap", quiet):
        for name, value in statistic(indices).items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in draws.items():
        finite = np.asarray(values, dtype=float)
        finite = finite[~np.isnan(finite)]
        intervals[name] = ([float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
                           if len(finite) else [float("nan"), float("nan")])
    return intervals
