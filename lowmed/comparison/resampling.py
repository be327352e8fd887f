"""Each run's metrics on its full test set and on B patient (lesion) resamples of it, the same resamples for every
run evaluated on the same images, so that the draws of two runs, or of several seeds, can be averaged and
subtracted draw by draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowmed.comparison.runs import Run, headline_name
from lowmed.evaluation.metrics import accuracy, auroc, compute_metrics, expected_calibration_error
from lowmed.evaluation.stats import group_bootstrap_indices
from lowmed.numeric import finite_mean

# The calls at the evaluation's threshold, beside the headline metric: per arm, each with its interval
THRESHOLDED = {"binary": ("balanced_accuracy", "sensitivity", "specificity"), "multiclass": ("balanced_accuracy",)}
CALIBRATION = "ece"


@dataclass
class TestSet:
    """The images some runs were all evaluated on (in path order) and B resamples of them, shared by those runs."""

    __test__ = False

    paths: tuple[str, ...]
    indices: list[np.ndarray]

    @property
    def resamples(self) -> int:
        return len(self.indices)


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
            test_sets[key] = TestSet(paths, list(group_bootstrap_indices(groups, np.asarray(strata), resamples, seed)))
        test_set = test_sets[key]
        names = (headline_name(run.report.task, metric), *detail_metrics(run.report.task))
        everything = np.arange(len(paths))
        values = {name: metric_on(run, name, everything) for name in names}
        draws = {name: np.array([metric_on(run, name, indices) for indices in test_set.indices]) for name in names}
        scored[id(run)] = Scored(run, test_set, values, draws)
    return scored


def metric_on(run: Run, name: str, indices: np.ndarray) -> float:
    """One metric of ``run`` on the images at ``indices`` (a resample): the AUROCs, accuracy, the thresholded calls
    and calibration by their fast paths, anything else through ``compute_metrics``."""
    task, classes = run.report.task, run.report.classes
    targets, probs, mask = run.arrays
    targets, probs = targets[indices], probs[indices]
    mask = None if mask is None else mask[indices]
    if name in ("auroc", "macro_auroc", "mean_auroc"):
        return auroc(task, targets, probs, mask)
    if name == "accuracy" and task == "multiclass":
        return accuracy(task, targets, probs)
    predicted = run.predicted  # the saved calls (none for multi-label)
    if name in ("balanced_accuracy", "sensitivity", "specificity") and predicted is not None:
        return _called_rate(name, targets, predicted[indices], len(classes))
    if name == CALIBRATION and task == "binary":
        return expected_calibration_error(probs[:, 1], targets == 1)
    if name == CALIBRATION and task == "multiclass":
        return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == targets)
    threshold = run.report.threshold
    cut = 0.5 if threshold is None else np.asarray(threshold, dtype=float) if isinstance(threshold, list) else threshold
    return compute_metrics(task, classes, targets, probs, mask, cut).metrics[name]


def _called_rate(name: str, targets: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Recall of the saved calls: per class, then their mean (balanced accuracy), or of one class of a binary task
    (sensitivity: the positive class; specificity: the negative one)."""
    recalls = [
        float(np.mean(predicted[targets == k] == k)) if np.any(targets == k) else float("nan") for k in range(classes)
    ]
    if name == "sensitivity":
        return recalls[1]
    if name == "specificity":
        return recalls[0]
    return finite_mean(recalls)
