"""Paired statistics against answers derived independently."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from lowmed.evaluation.stats import delong_test, holm, holm_by_family, mcnemar_test


def delong_by_definition(y, a, b):
    """DeLong et al. (1988) straight from the definition: the Mann–Whitney kernel over every (positive,
    negative) pair, its structural components, and their covariance."""
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(positives), len(negatives)

    def kernel(score):
        return np.array(
            [
                [1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0 for j in negatives]
                for i in positives
            ]
        )

    psi = [kernel(a), kernel(b)]
    aucs = [k.mean() for k in psi]
    v10 = np.array([k.mean(axis=1) for k in psi])
    v01 = np.array([k.mean(axis=0) for k in psi])
    s10 = np.cov(v10)
    s01 = np.cov(v01)
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (aucs[0] - aucs[1]) / math.sqrt(variance)
    return aucs, 2 * norm.sf(abs(z))


def test_delong_matches_the_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    a = np.round(y * 0.8 + rng.normal(0, 0.6, 120), 1)  # rounded: ties
    b = np.round(y * 0.4 + rng.normal(0, 0.6, 120), 1)
    (auc_a, auc_b), p = delong_by_definition(y, a, b)
    result = delong_test(y, a, b)
    assert result["auroc_a"] == pytest.approx(auc_a) and result["auroc_b"] == pytest.approx(auc_b)
    assert result["p"] == pytest.approx(p, rel=1e-9)
    assert result["p"] < 0.05


def test_identical_predictions_give_p_one():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    score = rng.random(50)
    assert delong_test(y, score, score)["p"] == 1.0
    correct = rng.random(50) > 0.3
    assert mcnemar_test(correct, correct)["p"] == 1.0


def test_mcnemar_exact_binomial():
    # 10 discordant pairs: A alone right in 8, B alone right in 2; 30 concordant
    correct_a = np.array([True] * 8 + [False] * 2 + [True] * 20 + [False] * 10)
    correct_b = np.array([False] * 8 + [True] * 2 + [True] * 20 + [False] * 10)
    expected = 2 * sum(math.comb(10, k) for k in range(0, 3)) / 2**10  # two-sided: P(X <= 2) + P(X >= 8)
    result = mcnemar_test(correct_a, correct_b)
    assert result["only_a_correct"] == 8 and result["only_b_correct"] == 2
    assert result["p"] == pytest.approx(expected)  # 0.109375


def test_holm_on_a_known_list():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan")])[0] == 0.5 and math.isnan(holm([0.5, float("nan")])[1])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # 0.8 × 2 caps at 1, and no adjusted p may fall below it
    assert holm([0.01, 0.02], family_size=4) == pytest.approx([0.04, 0.06])  # two members of four have no result
    # each family on its own: the two DeLong p-values are doubled, the lone McNemar one is not
    assert holm_by_family([0.01, 0.04, 0.03], ["DeLong", "McNemar", "DeLong"]) == pytest.approx([0.02, 0.04, 0.03])
