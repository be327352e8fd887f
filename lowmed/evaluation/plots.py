"""PNG plots of an evaluation: ROC and precision–recall curves, confusion matrix, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from lowmed.contracts import ComparisonDir
from lowmed.evaluation.metrics import ECE_BINS, counted_labels
from lowmed.figures import plt, save_png


def _curves(
    task: str, classes: list[str], targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, y, score) per curve: the positive class, each class one-vs-rest, or each finding."""
    if task == "binary":
        return [(classes[1], targets, probs[:, 1])]
    if task == "multiclass":
        return [
            (name, (targets == c).astype(int), probs[:, c]) for c, name in enumerate(classes) if (targets == c).any()
        ]
    counted = [(name, *counted_labels(targets, probs, mask, k)) for k, name in enumerate(classes)]
    return [(name, y, score) for name, y, score in counted if 0 < y.sum() < len(y)]


def plot_roc(
    path: Path,
    task: str,
    classes: list[str],
    targets: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None,
    metrics: dict,
    ci95: dict,
    threshold: float | None,
) -> None:
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, y, score in _curves(task, classes, targets, probs, mask):
        fpr, tpr, _ = roc_curve(y, score)
        axes.plot(fpr, tpr, lw=1.6, label=name if task != "binary" else "ROC")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if task == "binary":
        low, high = ci95.get("auroc", [np.nan, np.nan])
        axes.plot(
            1 - metrics["specificity"],
            metrics["sensitivity"],
            "o",
            color="crimson",
            ms=8,
            label=f"operating point (threshold {threshold:.3g})",
        )
        axes.set_title(f"ROC — AUROC {metrics['auroc']:.3f} [{low:.3f}, {high:.3f}]")
    else:
        key = "macro_auroc" if task == "multiclass" else "mean_auroc"
        low, high = ci95.get(key, [np.nan, np.nan])
        interval = "" if np.isnan(low) else f" [{low:.3f}, {high:.3f}]"
        axes.set_title(f"ROC — {key.split('_')[0]} AUROC {metrics[key]:.3f}{interval}")
    axes.set(
        xlabel="1 − specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower right", fontsize=7)
    save_png(figure, path)


def plot_pr(
    path: Path, task: str, classes: list[str], targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None
) -> None:
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, y, score in _curves(task, classes, targets, probs, mask):
        precision, recall, _ = precision_recall_curve(y, score)
        axes.step(recall, precision, where="post", lw=1.6, label=f"{name} (prevalence {y.mean():.2f})")
    axes.set(
        xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01), title="Precision–recall"
    )
    axes.legend(loc="lower left", fontsize=7)
    save_png(figure, path)


def plot_confusion(path: Path, classes: list[str], confusion: list[list[int]]) -> None:
    counts = np.asarray(confusion)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * len(classes) + 2)
    figure, panels = plt.subplots(1, 2, figsize=(2 * size, size))
    for axes, values, title, fmt in (
        (panels[0], counts, "counts", "d"),
        (panels[1], normalised, "row-normalised", ".2f"),
    ):
        axes.imshow(values, cmap="Blues")
        for (i, j), value in np.ndenumerate(values):
            axes.text(
                j,
                i,
                format(value, fmt),
                ha="center",
                va="center",
                color="white" if values[i, j] > values.max() / 2 else "black",
                fontsize=8,
            )
        axes.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xlabel="predicted",
            ylabel="true",
            title=f"Confusion matrix ({title})",
        )
        axes.set_xticklabels(classes, rotation=45, ha="right")
        axes.set_yticklabels(classes)
    save_png(figure, path)


def plot_reliability(path: Path, confidence: np.ndarray, observed: np.ndarray, title: str, ece: float) -> None:
    """Mean predicted probability vs observed frequency in equal-width bins, with a histogram of predictions."""
    edges = np.linspace(0, 1, ECE_BINS + 1)
    index = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    counts = np.bincount(index, minlength=ECE_BINS)
    filled = counts > 0
    mean_confidence = np.bincount(index, confidence, ECE_BINS)[filled] / counts[filled]
    frequency = np.bincount(index, observed.astype(float), ECE_BINS)[filled] / counts[filled]
    figure, (axes, histogram) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    axes.plot(mean_confidence, frequency, "o-", color="tab:blue", label="model")
    axes.set(ylabel="observed frequency", ylim=(0, 1.01), title=f"Reliability — ECE {ece:.3f}")
    axes.legend(loc="upper left", fontsize=8)
    histogram.bar(edges[:-1], counts, width=1 / ECE_BINS, align="edge", color="tab:gray", edgecolor="white")
    histogram.set(xlabel=title, ylabel="images", xlim=(0, 1))
    save_png(figure, path)


def plot_learning_curves(target: ComparisonDir, curves) -> list[Path]:
    """One PNG per dataset: the metric against training images per class, a line per arm and model, with its
    95 % interval as a band. ``curves``: rows of dataset, arm, model, per_class, metric, mean, ci_low, ci_high."""
    written: list[Path] = []
    if curves.empty:  # no run was trained on a per-class subset
        return written
    for dataset, part in curves.groupby("dataset"):
        figure, axes = plt.subplots(figsize=(6.5, 4.5))
        for (arm, model), line in part.groupby(["arm", "model"]):
            line = line.sort_values("per_class")
            x = line["per_class"].astype(float)
            axes.plot(x, line["mean"], "o-", lw=1.8, label=f"{arm} · {model}")
            axes.fill_between(x, line["ci_low"].astype(float), line["ci_high"].astype(float), alpha=0.2)
        axes.set(
            xlabel="training images per class", ylabel=part["metric"].iloc[0], title=f"Learning curves — {dataset}"
        )
        axes.set_xticks(sorted(part["per_class"].astype(float).unique()))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        path = target.learning_curve(dataset)
        save_png(figure, path)
        written.append(path)
    return written


def plot_reliability_by_arm(path: Path, arms: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """One reliability curve per arm (``arms``: label -> (confidence, observed), pooled over its seeds): mean
    predicted probability against observed frequency in equal-width bins."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for label, (confidence, observed) in arms.items():
        index = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
        counts = np.bincount(index, minlength=ECE_BINS)
        filled = counts > 0
        mean_confidence = np.bincount(index, confidence, ECE_BINS)[filled] / counts[filled]
        frequency = np.bincount(index, observed.astype(float), ECE_BINS)[filled] / counts[filled]
        axes.plot(mean_confidence, frequency, "o-", ms=4, label=label)
    axes.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1.01), title=title)
    axes.legend(loc="upper left", fontsize=8)
    save_png(figure, path)


def plot_image_grid(path: Path, images: list[np.ndarray], captions: list[str], title: str, columns: int = 4) -> None:
    """Images (H×W×3 floats in [0, 1], or uint8) in a grid, each with its caption below."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.7 * rows + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions):
        axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
        axis.set_title(caption, fontsize=7)
    figure.suptitle(title, fontsize=9)
    save_png(figure, path)
