"""Headline metrics shared by training (validation) and evaluation, on predicted probabilities."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def auroc(task: str, targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Binary: AUROC of the positive (second) class. Multi-class: macro one-vs-rest. Multi-label: mean over
    findings that have both outcomes among the counted labels. NaN where it is undefined."""
    if task == "binary":
        return float(roc_auc_score(targets, probs[:, 1])) if len(np.unique(targets)) == 2 else float("nan")
    if task == "multiclass":
        present = np.unique(targets)
        if len(present) < 2:
            return float("nan")
        scores = [roc_auc_score(targets == c, probs[:, c]) for c in present]
        return float(np.mean(scores))
    scores = []
    for k in range(targets.shape[1]):
        counted = mask[:, k] > 0 if mask is not None else np.ones(len(targets), dtype=bool)
        y = targets[counted, k]
        if len(np.unique(y)) == 2:
            scores.append(roc_auc_score(y, probs[counted, k]))
    return float(np.mean(scores)) if scores else float("nan")


def accuracy(task: str, targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Single-label: top-1 accuracy. Multi-label: accuracy of every counted label at threshold 0.5."""
    if task != "multilabel":
        return float((probs.argmax(axis=1) == targets).mean())
    counted = mask > 0 if mask is not None else np.ones_like(targets, dtype=bool)
    return float(((probs >= 0.5) == (targets > 0.5))[counted].mean())
