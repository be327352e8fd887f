"""``best.pt`` and ``last.pt``: a run's checkpoints as one typed, versioned contract, read and written here alone.

A checkpoint is the network's weights with what travels with them (the run's configuration, the input contract, the
task and classes: ``CheckpointHeader``) and the epoch they are from; ``best.pt`` adds that epoch's phase and
validation metrics, ``last.pt`` everything a resume needs (``TrainingState``). On disk it stays one flat mapping of
plain values and tensors, which ``torch.load(..., weights_only=True)`` reads without running code, stamped with
its ``schema`` as timm stamps its checkpoints; files from before the stamp are schema 1, with the same keys.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from lowmed.errors import LowmedError, RunFailed
from lowmed.io import atomic_path

CHECKPOINT_SCHEMA = 2  # 1: lowmed before this contract (no ``schema`` key); the same keys


def load_weights_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: a file that would run code is refused, never executed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle); anything else, such as a text file,
        # makes the unpickler fail with whatever error the bytes happen to cause
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
            raise ValueError("neither a PyTorch file nor a pickle")
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowmedError(f"{path}: not a loadable weights file ({first_line})") from None


@dataclass(frozen=True, kw_only=True)
class CheckpointHeader:
    """What every checkpoint of a run carries besides the weights."""

    config: dict  # the run's TrainConfig (or PretrainConfig) values
    preprocessing: dict  # lowmed.preprocessing.Preprocessing: the input the weights expect
    task: str  # binary | multiclass | multilabel, or the pretraining's phase name
    classes: list[str]
    lowmed_version: str = ""

    @property
    def model_name(self) -> str | None:
        return self.config.get("model")


@dataclass
class BestSoFar:
    """The best epoch so far, as a run's CheckpointSaver keeps it while training and ``last.pt`` records it."""

    value: float | None = None  # of the monitored metric
    epoch: int | None = None
    phase: str | None = None

    def reached(self) -> tuple[int, float]:
        """The best epoch and its value, once an epoch was trained."""
        if self.epoch is None or self.value is None:
            raise RunFailed("no epoch was trained: the run has no best epoch (are its epochs 0?)")
        return self.epoch, self.value


@dataclass(kw_only=True)
class TrainingState:
    """What ``last.pt`` adds so that a run continues exactly where it stopped."""

    history: list[dict]  # one row per epoch so far
    best: BestSoFar
    optimizer: dict
    scheduler: dict | None = None
    phase_index: int = 0
    scaler: dict | None = None  # supervised training's gradient scaler
    phase_epoch: int = 0
    phase_done: bool = False
    stale_epochs: int = 0
    queue: dict | None = None  # a momentum method's memory bank (lightly keeps it out of the state dict)
    torch_rng: torch.Tensor | None = None


_TRAINING_KEYS = {f.name for f in fields(TrainingState)}
_HEADER_KEYS = {f.name for f in fields(CheckpointHeader)}


@dataclass(kw_only=True)
class Checkpoint:
    """A run's ``best.pt`` or ``last.pt``."""

    model: dict[str, torch.Tensor]
    header: CheckpointHeader
    epoch: int | None = None
    phase: str | None = None  # best.pt: the phase of its epoch
    metrics: dict | None = None  # best.pt: the validation metrics of its epoch
    training: TrainingState | None = None  # last.pt only

    def to_file(self) -> dict[str, Any]:
        """The flat mapping ``torch.save`` writes."""
        values: dict[str, Any] = {"schema": CHECKPOINT_SCHEMA, "model": self.model, **asdict(self.header)}
        values |= {"epoch": self.epoch}
        if self.phase is not None:
            values |= {"phase": self.phase, "metrics": self.metrics}
        if self.training is not None:
            values |= {f.name: getattr(self.training, f.name) for f in fields(TrainingState)}
            values["best"] = asdict(self.training.best)
        return values

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.to_file(), tmp)

    @staticmethod
    def is_lowmed(loaded: Any) -> bool:
        """Whether a loaded weights file is a lowmed checkpoint (not a plain state dict or another tool's file)."""
        return isinstance(loaded, dict) and {"model", "config", "classes", "task", "preprocessing"} <= set(loaded)

    @classmethod
    def from_file(cls, loaded: Any, path: Path) -> "Checkpoint":
        """A loaded file as a checkpoint, older schemas upgraded; anything else refused naming the file."""
        if not cls.is_lowmed(loaded):
            raise LowmedError(f"{path}: not a checkpoint written by 'lowmed train'")
        schema = loaded.get("schema", 1)
        if not isinstance(schema, int) or schema > CHECKPOINT_SCHEMA:
            raise LowmedError(
                f"{path}: written by a newer lowmed (checkpoint schema {schema}; this one reads up to "
                f"{CHECKPOINT_SCHEMA}); upgrade lowmed to read it"
            )
        training = None
        if "optimizer" in loaded:  # last.pt
            missing = [key for key in ("optimizer", "history", "best") if key not in loaded]
            if missing:
                raise LowmedError(f"{path}: not a lowmed training checkpoint (no {missing[0]!r})")
            values = {key: loaded[key] for key in _TRAINING_KEYS if key in loaded}
            training = TrainingState(**values | {"best": BestSoFar(**loaded["best"])})
        return cls(
            model=loaded["model"],
            header=CheckpointHeader(**{key: loaded[key] for key in _HEADER_KEYS if key in loaded}),
            epoch=loaded.get("epoch"),
            phase=loaded.get("phase") if training is None else None,
            metrics=loaded.get("metrics") if training is None else None,
            training=training,
        )

    @classmethod
    def read(cls, path: Path) -> "Checkpoint":
        return cls.from_file(load_weights_file(path), path)

    @classmethod
    def read_resumable(cls, path: Path) -> "Checkpoint":
        """``last.pt`` with everything a resume needs; a damaged file, or one that is not lowmed's, is said so."""
        try:
            loaded = load_weights_file(path)
        except LowmedError as exc:  # e.g. cut short by a crash of an older version, or a full disk
            raise LowmedError(f"{path} is damaged and cannot be resumed ({exc})") from None
        for key in ("model", "optimizer", "phase_index", "epoch", "history"):
            if not isinstance(loaded, dict) or key not in loaded:
                raise LowmedError(f"{path}: not a lowmed training checkpoint (no {key!r})")
        return cls.from_file(loaded, path)


def trained_model_name(path: Path) -> str | None:
    """The model a weights file was trained as, when it is a lowmed checkpoint (None for other files)."""
    loaded = load_weights_file(path)
    return Checkpoint.from_file(loaded, path).header.model_name if Checkpoint.is_lowmed(loaded) else None
