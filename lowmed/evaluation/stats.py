"""Statistics a reviewer expects: patient-level bootstrap intervals, DeLong, McNemar, Holm."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm, rankdata

from lowmed.console import track


def group_bootstrap_counts(groups: np.ndarray, strata: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield, for each of ``resamples`` bootstrap samples, how many times it holds each image.

    Each sample draws whole groups (patients/lesions) with replacement, as many from each stratum
    (the group's class) as the stratum has, and takes every image of every drawn group.
    ``strata`` is per image; a group's stratum is that of its first image.
    """
    codes, unique_groups = pd.factorize(groups)
    first_image = np.unique(codes, return_index=True)[1]
    group_stratum = np.asarray(strata)[first_image]
    members = [np.flatnonzero(group_stratum == s) for s in np.unique(group_stratum)]
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        counts = np.zeros(len(unique_groups), dtype=np.int64)
        for stratum_groups in members:
            counts += np.bincount(
                stratum_groups[rng.integers(0, len(stratum_groups), len(stratum_groups))], minlength=len(unique_groups)
            )
        yield counts[codes]


def group_bootstrap_indices(groups: np.ndarray, strata: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The image indices of ``group_bootstrap_counts``' samples, in image order."""
    images = np.arange(len(groups))
    for counts in group_bootstrap_counts(groups, strata, resamples, seed):
        yield np.repeat(images, counts)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], dict[str, float]],
    groups: np.ndarray,
    strata: np.ndarray,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile intervals for every value ``statistic(indices)`` returns; NaN draws are left out."""
    draws: dict[str, list[float]] = {}
    samples = group_bootstrap_indices(groups, strata, resamples, seed)
    for indices in track(samples, resamples, "Bootstrap"):
        for name, value in statistic(indices).items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in draws.items():
        finite = np.asarray(values, dtype=float)
        finite = finite[~np.isnan(finite)]
        intervals[name] = (
            [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
            if len(finite)
            else [float("nan"), float("nan")]
        )
    return intervals


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test for two correlated AUROCs on the same images (fast midrank form, Sun & Xu 2014).

    Returns both AUROCs, their difference, z and the two-sided p-value; identical scores give p = 1.
    """
    positives, negatives = y == 1, y == 0
    m, n = int(positives.sum()), int(negatives.sum())
    if m < 2 or n < 2:
        return {
            "auroc_a": float("nan"),
            "auroc_b": float("nan"),
            "difference": float("nan"),
            "z": float("nan"),
            "p": float("nan"),
        }
    aucs, v10, v01 = [], [], []
    for score in (score_a, score_b):
        pos, neg = score[positives], score[negatives]
        ranks_all = rankdata(np.concatenate([pos, neg]))
        ranks_pos, ranks_neg = rankdata(pos), rankdata(neg)
        aucs.append((ranks_all[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((ranks_all[:m] - ranks_pos) / n)  # per positive: share of negatives scored below it
        v01.append(1 - (ranks_all[m:] - ranks_neg) / m)  # per negative: share of positives scored above it
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    difference = aucs[0] - aucs[1]
    if variance <= 1e-15:
        z, p = 0.0, 1.0 if abs(difference) < 1e-12 else 0.0
    else:
        z = difference / np.sqrt(variance)
        p = float(2 * norm.sf(abs(z)))
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "difference": float(difference),
        "z": float(z),
        "p": p,
    }


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test on paired right/wrong calls: a two-sided binomial test on the discordant pairs."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "difference": (only_a - only_b) / len(correct_a),
        "p": p,
    }


def holm_by_family(p_values: list[float], families: list[str]) -> list[float]:
    """Holm-adjusted p-values, each family of tests (say, all DeLong tests) corrected on its own."""
    adjusted = [float("nan")] * len(p_values)
    for family in set(families):
        members = [i for i, name in enumerate(families) if name == family]
        for index, value in zip(members, holm([p_values[i] for i in members])):
            adjusted[index] = value
    return adjusted


def holm(p_values: list[float], family_size: int | None = None) -> list[float]:
    """Holm–Bonferroni adjusted p-values. NaN entries stay NaN and do not count; ``family_size`` (at least the number
    of finite p-values) counts the members of a fixed family that have no result yet, as if their p were 1."""
    values = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(values), np.nan)
    finite = np.flatnonzero(~np.isnan(values))
    size = max(len(finite), family_size or 0)
    order = finite[np.argsort(values[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (size - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()
