"""Checkpoints written atomically (temporary file, fsync, rename) and read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from lowmed.contracts import RunDir
from lowmed.errors import LowmedError
from lowmed.io import atomic_path
from lowmed.models.weights import load_checkpoint


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
