"""Splits that are stratified by class and never share a patient or lesion."""

from __future__ import annotations

import numpy as np
import pandas as pd


def group_stratified_split(
    groups: pd.Series, targets: np.ndarray, wanted: dict[str, np.ndarray], seed: int, rest: str = "train"
) -> pd.Series:
    """Assign whole groups to splits so each split in ``wanted`` gets about its per-class counts.

    ``targets`` is an (images × classes) 0/1 matrix (one-hot for single-label data, the positive
    findings plus a "none" column for multi-label data); ``wanted[split]`` gives the count wanted of
    each class. Groups are visited in a seeded random order; each goes to the wanted split whose
    unmet need it fills best, provided at least half of its counts fill a need and the split's image
    budget is not overrun (so one big patient cannot swamp a small split); otherwise to ``rest``.
    A second pass relaxes the half rule for splits still short.
    """
    codes, uniques = pd.factorize(groups, sort=True)
    per_group = np.zeros((len(uniques), targets.shape[1]))
    np.add.at(per_group, codes, targets)
    group_size = np.bincount(codes, minlength=len(uniques))
    names = list(wanted)
    assigned = np.full(len(uniques), -1)
    if names:
        need = np.stack([np.asarray(wanted[name], dtype=float) for name in names])
        budget = need.sum(axis=1) / max(targets.sum(), 1) * len(targets) * 1.05 + 1
        taken = np.zeros(len(names))
        order = np.random.default_rng(seed).permutation(len(uniques))
        for min_share in (0.5, 1e-9):
            for g in order:
                if assigned[g] >= 0:
                    continue
                filled = np.minimum(per_group[g][None, :], np.clip(need, 0, None)).sum(axis=1)
                filled[taken + group_size[g] > budget] = 0
                best = int(np.argmax(filled))
                if filled[best] > 0 and filled[best] >= min_share * per_group[g].sum():
                    assigned[g] = best
                    need[best] -= per_group[g]
                    taken[best] += group_size[g]
    split_of_group = np.array([names[a] if a >= 0 else rest for a in assigned], dtype=object)
    return pd.Series(split_of_group[codes], index=groups.index)
