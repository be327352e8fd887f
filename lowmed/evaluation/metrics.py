"""Clinical metrics on predicted probabilities, for binary, multi-class and multi-label tasks.

AUROC and average precision are computed here with NumPy (rank formula; distinct-threshold sum) rather
than per call through scikit-learn, because the bootstrap recomputes them thousands of times; the tests
check every value against scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from lowmed.numeric import finite_mean

ECE_BINS = 10


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann–Whitney AUROC with ties counted half; NaN unless both outcomes occur."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def resampled_binary_auroc(y: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``binary_auroc`` on many resamples at once, each a row of ``counts`` (how often it holds each image): the
    same Mann–Whitney count of positive–negative pairs, ties half, exact in float64 like the rank formula, so each
    value is the one a resample's own call gives."""
    codes = np.unique(score, return_inverse=True)[1].ravel()  # equal scores share a code, in score order
    levels = int(codes.max()) + 1
    positive, negative = _tally(counts, codes, levels, y == 1), _tally(counts, codes, levels, y != 1)
    below = np.cumsum(negative, axis=1) - negative
    wins = (positive * (below + 0.5 * negative)).sum(axis=1)
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(counts), np.nan), where=pairs > 0)


def _tally(counts: np.ndarray, codes: np.ndarray, levels: int, values: np.ndarray) -> np.ndarray:
    """Per resample (a row of ``counts``) and per level of ``codes`` (one per image): the sum of ``values`` over the
    images the resample holds, each as often as it holds it."""
    rows = len(counts)
    cells = (codes[None, :] + levels * np.arange(rows)[:, None]).ravel()
    weights = (counts * values).ravel().astype(float)
    return np.bincount(cells, weights=weights, minlength=rows * levels).reshape(rows, levels)


def resampled_auroc(task: str, targets: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``auroc`` of a binary or multi-class task on each resample (a row of ``counts``): multi-class, the mean over
    the classes a resample holds, NaN where it holds fewer than two."""
    if task == "binary":
        return resampled_binary_auroc(targets, probs[:, 1], counts)
    total, present = np.zeros(len(counts)), np.zeros(len(counts), dtype=int)
    for c in range(probs.shape[1]):  # in class order, as the mean over a resample's classes adds them
        held = counts[:, targets == c].sum(axis=1) > 0
        total += np.where(held, resampled_binary_auroc((targets == c).astype(int), probs[:, c], counts), 0.0)
        present += held
    return np.divide(total, present, out=np.full(len(counts), np.nan), where=present >= 2)


def resampled_recalls(targets: np.ndarray, predicted: np.ndarray, classes: int, counts: np.ndarray) -> np.ndarray:
    """Each class's recall of the calls ``predicted`` on each resample (a row of ``counts``): resamples × classes,
    NaN where a resample holds no image of the class."""
    recalls = np.full((len(counts), classes), np.nan)
    for k in range(classes):
        held = counts[:, targets == k].sum(axis=1)
        hits = counts[:, (targets == k) & (predicted == k)].sum(axis=1)
        np.divide(hits, held, out=recalls[:, k], where=held > 0)
    return recalls


def resampled_ece(confidence: np.ndarray, correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``expected_calibration_error`` on each resample (a row of ``counts``)."""
    index = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    gap = np.abs(_tally(counts, index, ECE_BINS, confidence) - _tally(counts, index, ECE_BINS, correct.astype(float)))
    images = counts.sum(axis=1)
    return np.divide(gap.sum(axis=1), images, out=np.full(len(counts), np.nan), where=images > 0)


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision–recall curve as a step sum over distinct thresholds (scikit-learn's AP)."""
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    sorted_score, sorted_y = score[order], y[order]
    last_of_each_threshold = np.r_[np.flatnonzero(np.diff(sorted_score)), len(y) - 1]
    true_positives = np.cumsum(sorted_y)[last_of_each_threshold]
    precision = true_positives / (last_of_each_threshold + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Equal-width-bin ECE: the share-weighted gap between mean confidence and observed frequency."""
    if len(confidence) == 0:
        return float("nan")
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, confidence, bins) - np.bincount(index, correct.astype(float), bins))
    return float(gap.sum() / counts.sum())


def auroc(task: str, targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The headline AUROC: binary, macro one-vs-rest, or the mean over findings (used during training)."""
    if task == "binary":
        return binary_auroc(targets, probs[:, 1])
    if task == "multiclass":
        present = np.unique(targets)
        if len(present) < 2:
            return float("nan")
        return float(np.mean([binary_auroc((targets == c).astype(int), probs[:, c]) for c in present]))
    scores = [binary_auroc(*counted_labels(targets, probs, mask, k)) for k in range(targets.shape[1])]
    return float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")


def accuracy(task: str, targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Single-label: top-1 accuracy. Multi-label: accuracy of every counted label at threshold 0.5."""
    if task != "multilabel":
        return float((probs.argmax(axis=1) == targets).mean())
    counted = mask > 0 if mask is not None else np.ones_like(targets, dtype=bool)
    return float(((probs >= 0.5) == (targets > 0.5))[counted].mean())


def counted_labels(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None, k: int):
    """Finding ``k``'s labels and scores where its label counts (uncertain ones masked out)."""
    keep = mask[:, k] > 0 if mask is not None else slice(None)
    return targets[keep, k].astype(int), probs[keep, k]


@dataclass
class Metrics:
    metrics: dict[str, float]  # headline scalars
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]] | None

    def flat(self) -> dict[str, float]:
        """Every number under one key (``metric`` or ``class/metric``), for the bootstrap and metrics.csv."""
        flat = dict(self.metrics)
        for name, values in self.per_class.items():
            flat.update({f"{name}/{key}": value for key, value in values.items()})
        return flat


def compute_metrics(
    task: str,
    classes: list[str],
    targets: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    threshold: float | np.ndarray = 0.5,
) -> Metrics:
    if task == "binary":
        return _binary(classes, targets, probs[:, 1], float(threshold))
    if task == "multiclass":
        return _multiclass(classes, targets, probs)
    return _multilabel(classes, targets, probs, mask, np.broadcast_to(threshold, (len(classes),)))


def _rates(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    tn = int(np.sum(~predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _binary(classes: list[str], y: np.ndarray, score: np.ndarray, threshold: float) -> Metrics:
    predicted = score >= threshold
    rates = _rates(y, predicted)
    metrics = {
        "auroc": binary_auroc(y, score),
        "auprc": average_precision(y, score),
        "accuracy": float(np.mean(predicted == (y == 1))),
        "balanced_accuracy": rates["balanced_accuracy"],
        "sensitivity": rates["sensitivity"],
        "specificity": rates["specificity"],
        "precision": rates["ppv"],
        "npv": rates["npv"],
        "f1": rates["f1"],
        "brier": float(np.mean((score - y) ** 2)),
        "ece": expected_calibration_error(score, y == 1),
    }
    per_class: dict[str, dict[str, float]] = {
        classes[0]: {"support": int(np.sum(y == 0))},
        classes[1]: {"support": int(np.sum(y == 1))},
    }
    confusion = [[int(rates["tn"]), int(rates["fp"])], [int(rates["fn"]), int(rates["tp"])]]
    return Metrics(metrics, per_class, confusion)


def _multiclass(classes: list[str], y: np.ndarray, probs: np.ndarray) -> Metrics:
    predicted = probs.argmax(axis=1)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y, predicted), 1)
    per_class, support = {}, confusion.sum(axis=1)
    for c, name in enumerate(classes):
        tp, fp, fn = confusion[c, c], confusion[:, c].sum() - confusion[c, c], support[c] - confusion[c, c]
        per_class[name] = {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "auroc": binary_auroc((y == c).astype(int), probs[:, c]),
            "support": int(support[c]),
        }
    present = [name for c, name in enumerate(classes) if support[c] > 0]
    weights = np.array([per_class[name]["support"] for name in present], dtype=float)

    def macro(key: str) -> float:
        return finite_mean([per_class[name][key] for name in present])

    def weighted(key: str) -> float:
        values = np.nan_to_num([per_class[name][key] for name in present])
        return float(np.sum(values * weights) / weights.sum())

    onehot = np.eye(k)[y]
    metrics = {
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": macro("recall"),
        "macro_auroc": macro("auroc"),
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "f1": macro("f1"),  # the seed project's eval_results["metrics"]["f1"]
        "weighted_precision": weighted("precision"),
        "weighted_recall": weighted("recall"),
        "weighted_f1": weighted("f1"),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(probs.max(axis=1), predicted == y),
    }
    return Metrics(metrics, per_class, confusion.tolist())


def _multilabel(
    classes: list[str], targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None, thresholds: np.ndarray
) -> Metrics:
    per_class = {}
    for k, name in enumerate(classes):
        y, score = counted_labels(targets, probs, mask, k)
        rates = _rates(y, score >= thresholds[k])
        per_class[name] = {
            "auroc": binary_auroc(y, score),
            "auprc": average_precision(y, score),
            "sensitivity": rates["sensitivity"],
            "specificity": rates["specificity"],
            "positives": int(y.sum()),
            "counted": int(len(y)),
        }

    def mean(key: str) -> float:
        values = [v[key] for v in per_class.values() if not np.isnan(v[key])]
        return float(np.mean(values)) if values else float("nan")

    metrics = {
        "mean_auroc": mean("auroc"),
        "mean_auprc": mean("auprc"),
        "findings_with_auroc": int(sum(not np.isnan(v["auroc"]) for v in per_class.values())),
    }
    return Metrics(metrics, per_class, None)
