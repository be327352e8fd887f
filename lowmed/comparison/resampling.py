"""Each run's metrics on its full test set and on B patient (lesion) resamples of it, the same resamples for every
run evaluated on the same images, so that the draws of two runs, or of several seeds, can be averaged and
subtracted draw by draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowmed.comparison.runs import Run, headline_name
from lowmed.evaluation.metrics import (
    accuracy,
    auroc,
    compute_metrics,
    resampled_auroc,
    resampled_ece,
    resampled_recalls,
)
from lowmed.evaluation.stats import group_bootstrap_counts
from lowmed.numeric import finite_mean

# The calls at the evaluation's threshold, beside the headline metric: per arm, each with its interval
THRESHOLDED = {"binary": ("balanced_accuracy", "sensitivity", "specificity"), "multiclass": ("balanced_accuracy",)}
CALIBRATION = "ece"


@dataclass
class TestSet:
    """The images some runs were all evaluated on (in path order) and B resamples of them, shared by those runs:
    ``counts[b, i]`` is how many times resample ``b`` holds image ``i``."""

    __test__ = False

    paths: tuple[str, ...]
    counts: np.ndarray

    @property
    def resamples(self) -> int:
        return len(self.counts)


@dataclass
class Scored:
    """One run's metrics: on the full test set (``values``) and on each resample of its test set (``draws``)."""

    run: Run
    test_set: TestSet
    values: dict[str, float]
    draws: dict[str, np.ndarray]


def detail_metrics(task: str) -> tuple[str, ...]:
    """What a group's detail shows beside the headline metric: the thresholded calls and calibration."""
    return (*THRESHOLDED.get(task, ()), *((CALIBRATION,) if task != "multilabel" else ()))


def score_runs(runs: list[Run], metric: str, resamples: int, seed: int) -> dict[int, Scored]:
    """Every run scored on its test set's shared resamples (keyed by ``id(run)``): the headline ``metric`` and the
    detail metrics. Runs evaluated on the same images of the same dataset share one TestSet."""
    test_sets: dict[tuple, TestSet] = {}
    scored = {}
    for run in runs:
        paths = tuple(run.table["path"])
        key = (run.dataset, run.report.split, paths)
        if key not in test_sets:
            targets = run.arrays[0]
            strata = targets if run.report.task != "multilabel" else (targets > 0).any(axis=1)
            groups = run.table["group"].to_numpy()
            test_sets[key] = TestSet(
                paths, np.stack(list(group_bootstrap_counts(groups, np.asarray(strata), resamples, seed)))
            )
        test_set = test_sets[key]
        names = (headline_name(run.report.task, metric), *detail_metrics(run.report.task))
        whole = np.ones((1, len(paths)), dtype=np.int64)  # the full test set, as a resample holding each image once
        values = {name: float(metric_draws(run, name, whole)[0]) for name in names}
        draws = {name: metric_draws(run, name, test_set.counts) for name in names}
        scored[id(run)] = Scored(run, test_set, values, draws)
    return scored


def metric_draws(run: Run, name: str, counts: np.ndarray) -> np.ndarray:
    """One metric of ``run`` on every resample (a row of ``counts``): the AUROCs, the thresholded calls and the
    calibration of a single-label task all resamples at once, anything else one resample at a time."""
    task, classes = run.report.task, len(run.report.classes)
    targets, probs, _ = run.arrays
    if name in ("auroc", "macro_auroc") and task != "multilabel":
        return resampled_auroc(task, targets, probs, counts)
    if name in ("balanced_accuracy", "sensitivity", "specificity") and run.predicted is not None:
        recalls = resampled_recalls(targets, run.predicted, classes, counts)  # of the saved calls
        if name == "balanced_accuracy":
            return np.array([finite_mean(row) for row in recalls])
        return recalls[:, 1 if name == "sensitivity" else 0]  # the positive class's recall, the negative one's
    if name == CALIBRATION and task == "binary":
        return resampled_ece(probs[:, 1], targets == 1, counts)
    if name == CALIBRATION and task == "multiclass":
        return resampled_ece(probs.max(axis=1), probs.argmax(axis=1) == targets, counts)
    images = np.arange(counts.shape[1])
    return np.array([_metric_on(run, name, np.repeat(images, row)) for row in counts])


def _metric_on(run: Run, name: str, indices: np.ndarray) -> float:
    """A metric that ``metric_draws`` has no all-at-once path for, on the images at ``indices``."""
    task, classes = run.report.task, run.report.classes
    targets, probs, mask = run.arrays
    targets, probs = targets[indices], probs[indices]
    mask = None if mask is None else mask[indices]
    if name in ("auroc", "macro_auroc", "mean_auroc"):
        return auroc(task, targets, probs, mask)
    if name == "accuracy" and task == "multiclass":
        return accuracy(task, targets, probs)
    threshold = run.report.threshold
    cut = 0.5 if threshold is None else np.asarray(threshold, dtype=float) if isinstance(threshold, list) else threshold
    return compute_metrics(task, classes, targets, probs, mask, cut).metrics[name]
