"""Checkpoints written atomically (temporary file, fsync, rename) and read with ``weights_only=True``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lowmed.contracts import RunDir
from lowmed.errors import LowmedError
from lowmed.io import atomic_path, write_csv
from lowmed.models.weights import load_checkpoint


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class CheckpointSaver:
    """Owns a run's checkpoints, as timm's ``CheckpointSaver`` does: ``best.pt`` whenever the monitored value
    improves, ``last.pt`` (all a resume needs) and ``history.csv`` after every epoch. Only the process that
    ``writes`` touches the files; every process keeps the same record of the best epoch."""

    def __init__(self, run: RunDir, monitor: str, extras: dict, writes: bool, best: dict | None = None) -> None:
        self.run, self.monitor, self.extras, self.writes = run, monitor, extras, writes
        self.best = best or {"value": None, "epoch": None, "phase": None}

    def is_better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best["value"] is None:
            return True
        return value < self.best["value"] if self.monitor == "val_loss" else value > self.best["value"]

    def epoch_end(self, model: nn.Module, metrics: dict, history: list[dict], training_state: dict) -> bool:
        """Record the epoch that ends ``history``; True when it is the best so far."""
        row = history[-1]
        improved = self.is_better(metrics[self.monitor])
        if improved:
            self.best = {"value": metrics[self.monitor], "epoch": row["epoch"], "phase": row["phase"]}
        if self.writes:
            if improved:
                save_checkpoint(
                    self.run.best,
                    {
                        "model": model.state_dict(),
                        "epoch": row["epoch"],
                        "phase": row["phase"],
                        "metrics": metrics,
                        **self.extras,
                    },
                )
            save_checkpoint(
                self.run.last,
                {
                    "model": model.state_dict(),
                    **training_state,
                    "epoch": row["epoch"],
                    "best": self.best,
                    "history": history,
                    **self.extras,
                },
            )
            write_csv(self.run.history, pd.DataFrame(history))
        return improved

    def best_weights(self, device: torch.device) -> dict:
        return torch.load(self.run.best, map_location=device, weights_only=True)["model"]


def read_training_state(run: RunDir) -> dict:
    """The state ``last.pt`` holds; a damaged file is reported, never half-used."""
    try:
        state = load_checkpoint(run.last)
    except LowmedError as exc:  # e.g. cut short by a crash of an older version, or a full disk
        raise LowmedError(
            f"{run.last} is damaged and cannot be resumed ({exc}); start the run again with --overwrite"
        ) from None
    for key in ("model", "optimizer", "phase_index", "epoch", "history"):
        if key not in state:
            raise LowmedError(
                f"{run.last}: not a lowmed training checkpoint (no {key!r}); start the run again with --overwrite"
            )
    return state
