"""The comparison's statistics: a difference between two training pipelines, tested with both of its sources of
variance.

A run is one draw of a pipeline: which images were sampled, the initialisation, the order of the batches. Its
test-set metric varies between seeds as well as between test sets. A paired test that resamples only test patients
(with the trained models held fixed) leaves the first source out and is overconfident exactly where lowmed is used,
at 50–200 images per class (Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks",
MLSys). So the primary test here takes the mean over seeds of the per-seed difference on the full test set, d̄, with

    Var(d̄) = SE_pat² + SD_seed² / n

where SE_pat is the patient (lesion) bootstrap SD of the seed-averaged difference, SD_seed the SD of the n per-seed
differences, and refers d̄ / √Var(d̄) to a t distribution with Welch–Satterthwaite degrees of freedom
(Satterthwaite 1946; the bootstrap term counts as known, so the df come from the seed term). The per-seed
differences already hold some test-set noise, so the sum is conservative rather than exact. With ten or more seeds
a two-level bootstrap (seeds and patients resampled together) is reported beside it as a sensitivity check.

Bootstrap p-values are floored at 1/(B+1): B resamples cannot show a smaller one. Holm's correction runs within a
family fixed beforehand; a member without a result counts with p = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05
POWER = 0.8
# The SD between seeds of a paired difference, assumed for planning before a study has finished runs of its own:
# the median over the 12 primary comparisons of the 3-seed Kermany study at 64 px was 0.019 (../shared/FINDINGS.md).
DEFAULT_SD_SEED = 0.02
# Between two arms' AUROCs on the same test images, for a planning SE from the test set's counts alone
DEFAULT_PAIR_CORRELATION = 0.5
PLANNING_AUROC = 0.9
# A paired difference's test-set SE assumed where the test set's counts do not give one (no binary counts known)
DEFAULT_SE_PATIENT = 0.015


@dataclass(frozen=True)
class VarianceComponents:
    """A mean over n seeds and how uncertain it is: from the test set (SE_pat) and between seeds (SD_seed)."""

    estimate: float
    se_patient: float
    sd_seed: float  # NaN with one seed: the variance between seeds cannot be estimated from one
    seeds: int

    @property
    def seed_variance(self) -> float:
        return 0.0 if self.seeds < 2 or np.isnan(self.sd_seed) else self.sd_seed**2 / self.seeds

    @property
    def variance(self) -> float:
        return self.se_patient**2 + self.seed_variance

    @property
    def standard_error(self) -> float:
        return float(np.sqrt(self.variance))

    @property
    def seed_share(self) -> float:
        """The share of Var(mean) that comes from seeds (NaN where nothing varies)."""
        return self.seed_variance / self.variance if self.variance > 0 else float("nan")

    @property
    def df(self) -> float:
        """Welch–Satterthwaite degrees of freedom; infinite where the seed term is nil or cannot be estimated."""
        return satterthwaite_df(self.se_patient, self.sd_seed, self.seeds)

    def interval(self, level: float = 0.95, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
        """estimate ± t·SE; ``bounds`` clip it to the metric's range."""
        half = scipy_stats.t.ppf(0.5 + level / 2, self.df) * self.standard_error
        low, high = self.estimate - half, self.estimate + half
        if bounds is not None:
            low, high = max(bounds[0], low), min(bounds[1], high)
        return float(low), float(high)

    def p_value(self) -> float:
        """Two-sided p of the estimate against zero."""
        if self.variance <= 0:
            return 1.0 if abs(self.estimate) < 1e-12 else 0.0
        t = self.estimate / self.standard_error
        return float(2 * scipy_stats.t.sf(abs(t), self.df))


def components(per_seed: np.ndarray, pooled_draws: np.ndarray) -> VarianceComponents:
    """``per_seed``: one value per seed on the full test set; ``pooled_draws``: the mean over those seeds on each
    patient resample (the same resamples for every seed)."""
    per_seed = np.asarray(per_seed, dtype=float)
    finite = pooled_draws[np.isfinite(pooled_draws)]
    return VarianceComponents(
        estimate=float(per_seed.mean()),
        se_patient=float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
        sd_seed=float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
        seeds=len(per_seed),
    )


def satterthwaite_df(se_patient: float, sd_seed: float, seeds: int) -> float:
    """df of SE_pat² + SD_seed²/n with the bootstrap term taken as known: (Var)² / ((SD_seed²/n)² / (n − 1))."""
    if seeds < 2 or np.isnan(sd_seed) or sd_seed == 0:
        return float("inf")
    seed_term = sd_seed**2 / seeds
    return float((se_patient**2 + seed_term) ** 2 / (seed_term**2 / (seeds - 1)))


def two_level_bootstrap(per_seed_draws: np.ndarray, seed: int, level: float = 0.95) -> dict[str, Any]:
    """Seeds and patients resampled together: ``per_seed_draws`` is (seeds, B), each row one seed's difference on
    the same B patient resamples; each replicate draws n seeds with replacement and averages them on its patient
    resample. Percentile interval; two-sided p floored at 1/(B+1)."""
    seeds, resamples = per_seed_draws.shape
    rng = np.random.default_rng([seed, 2])
    chosen = rng.integers(0, seeds, size=(resamples, seeds))
    draws = per_seed_draws[chosen, np.arange(resamples)[:, None]].mean(axis=1)
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2 * 100
    p = 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))
    return {
        "ci_low": float(np.percentile(draws, tail)),
        "ci_high": float(np.percentile(draws, 100 - tail)),
        "p": floored_p(p, len(draws)),
    }


def floored_p(p: float, resamples: int) -> float:
    """A bootstrap p-value no smaller than 1/(B+1), the smallest that B resamples can show, and at most 1."""
    return float(min(1.0, max(p, 1 / (resamples + 1))))


def minimum_detectable_difference(
    se_patient: float,
    sd_seed: float,
    seeds: int,
    family_size: int = 1,
    alpha: float = ALPHA,
    power: float = POWER,
) -> float:
    """The smallest true difference the primary test finds with probability ``power`` at two-sided ``alpha``,
    Bonferroni over ``family_size`` (Holm's first step): (t_{1−α/2m} + t_{power}) · SE, df by Satterthwaite."""
    planned = VarianceComponents(0.0, se_patient, sd_seed, seeds)
    df = planned.df
    quantiles = scipy_stats.t.ppf(1 - alpha / (2 * family_size), df) + scipy_stats.t.ppf(power, df)
    return float(quantiles * planned.standard_error)


def planning_se_patient(positives: int, negatives: int, auroc: float = PLANNING_AUROC) -> float:
    """A paired AUROC difference's test-set SE before any run: Hanley & McNeil's (1982) SE of one AUROC at
    ``auroc`` with the test set's class counts, times √(2(1 − ρ)) for two arms whose AUROCs correlate by
    ρ = DEFAULT_PAIR_CORRELATION on the same images."""
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    variance = (auroc * (1 - auroc) + (positives - 1) * (q1 - auroc**2) + (negatives - 1) * (q2 - auroc**2)) / (
        positives * negatives
    )
    return float(np.sqrt(variance * 2 * (1 - DEFAULT_PAIR_CORRELATION)))


@dataclass(frozen=True)
class PowerPlan:
    """The smallest difference a study's primary test can detect at 80 % power, and what that rests on."""

    seeds: int
    family_size: int
    se_patient: float
    sd_seed: float
    source: str  # where SE_pat and SD_seed come from: the study's own runs, or stated defaults
    metric: str = "AUROC"

    @property
    def detectable(self) -> float:
        return minimum_detectable_difference(self.se_patient, self.sd_seed, self.seeds, self.family_size)

    @property
    def unadjusted(self) -> float:
        return minimum_detectable_difference(self.se_patient, self.sd_seed, self.seeds)

    def sentence(self) -> str:
        return (
            f"with {self.seeds} seed{'s' if self.seeds != 1 else ''} and a primary family of {self.family_size} "
            f"comparison{'s' if self.family_size != 1 else ''}, the primary test detects a difference in "
            f"{self.metric} of {self.detectable:.3f} with {POWER:.0%} power at two-sided α {ALPHA} (Holm's first "
            f"step, α/{self.family_size}; {self.unadjusted:.3f} for a single test); SE test set {self.se_patient:.3f}, "
            f"SD between seeds {self.sd_seed:.3f} ({self.source})."
        )
