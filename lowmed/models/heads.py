"""Classifier heads that sit on a backbone's pooled features."""

from torch import nn


def mlp_head(in_features: int, classes: int) -> nn.Sequential:
    """The seed study's head: 512 → 256 → classes, each hidden layer ReLU → BatchNorm → Dropout."""
    return nn.Sequential(
        nn.Linear(in_features, 512),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(512),
        nn.Dropout(0.5),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(256),
        nn.Dropout(0.3),
        nn.Linear(256, classes),
    )


def build_head(kind: str, in_features: int, classes: int) -> nn.Module:
    return mlp_head(in_features, classes) if kind == "mlp" else nn.Linear(in_features, classes)
