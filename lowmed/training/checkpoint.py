"""Writing a run's checkpoints while it trains (``lowmed.models.checkpoint`` is their contract), and the run dir
they live in: continued, or replaced only when it holds a lowmed run."""

from __future__ import annotations

import math
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lowmed.contracts import RunDir
from lowmed.errors import LowmedError, RunFailed
from lowmed.io import write_csv, write_yaml
from lowmed.locking import LOCK_FILE
from lowmed.models.checkpoint import BestSoFar, Checkpoint, CheckpointHeader, TrainingState


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    checkpoint.write(path)


def _snapshot(value: Any) -> Any:
    """``value`` with every container and tensor copied (tensors to the CPU), so that training can go on changing
    the originals while the copy is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(item) for item in value)
    return value


class _BackgroundWriter:
    """One thread writing the latest snapshot of each of a run's files, so that an epoch does not wait for the disk.

    Files are written in the order ``FILES`` (best.pt before last.pt, whose record names the best epoch, before
    history.csv): what is on disk is always consistent. A snapshot not yet begun is replaced by a newer one of the
    same file. A failed write is raised in the training thread at its next ``submit`` or ``flush`` (``RunFailed``
    where the disk refused it).
    """

    FILES = ("best", "last", "history")

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self._pending: dict[str, Any] = {}
        self._writing = False
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="lowmed-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, contents: dict[str, Any]) -> None:
        with self._changed:
            self._raise_error()
            self._pending.update(contents)
            self._changed.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted is on disk."""
        with self._changed:
            self._changed.wait_for(self._idle)
            self._raise_error()

    def close(self, raise_error: bool = True) -> None:
        """Flush, then end the thread."""
        with self._changed:
            self._changed.wait_for(self._idle)
            self._closed = True
            self._changed.notify_all()
        self._thread.join()
        if raise_error:
            self._raise_error()

    def _idle(self) -> bool:
        return not (self._pending or self._writing) or self._error is not None

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                batch, self._pending, self._writing = self._pending, {}, True
            try:
                for name in self.FILES:
                    if name in batch:
                        self._write(name, batch[name])
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
                with self._changed:
                    self._error, self._pending = exc, {}
            with self._changed:
                self._writing = False
                self._changed.notify_all()

    def _write(self, name: str, contents: Any) -> None:
        path = self.paths[name]
        try:
            if isinstance(contents, pd.DataFrame):
                write_csv(path, contents)
            else:
                save_checkpoint(path, contents)
        except OSError as exc:  # a full disk, a folder made read-only: the run stops, resumable once mended
            raise RunFailed(
                f"could not write {path} ({exc.strerror or exc}); make room or mend the folder, then continue with: "
                f"lowmed train --resume {path.parent}"
            ) from None


class CheckpointSaver:
    """Owns a run's checkpoints, as timm's ``CheckpointSaver`` does: ``best.pt`` whenever the monitored value
    improves, ``last.pt`` (all a resume needs) and ``history.csv`` after every epoch. Only the process that
    ``writes`` touches the files, on a background thread (``_BackgroundWriter``); every process keeps the same record
    of the best epoch. Use it as a context manager: leaving the block waits for the files."""

    def __init__(
        self, run: RunDir, monitor: str, header: CheckpointHeader, writes: bool, best: BestSoFar | None = None
    ) -> None:
        self.run, self.monitor, self.header, self.writes = run, monitor, header, writes
        self.best = best or BestSoFar()
        self._writer: _BackgroundWriter | None = None

    def __enter__(self) -> "CheckpointSaver":
        if self.writes:
            self._writer = _BackgroundWriter(
                {"best": self.run.best, "last": self.run.last, "history": self.run.history}
            )
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._writer is not None:
            self._writer.close(raise_error=exc_type is None)  # an error already raised is the one to report
            self._writer = None

    def is_better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best.value is None:
            return True
        return value < self.best.value if self.monitor == "val_loss" else value > self.best.value

    def epoch_end(self, model: nn.Module, metrics: dict, history: list[dict], training_state: dict) -> bool:
        """Record the epoch that ends ``history``; True when it is the best so far."""
        row = history[-1]
        improved = self.is_better(metrics[self.monitor])
        if improved:
            self.best = BestSoFar(value=metrics[self.monitor], epoch=row["epoch"], phase=row["phase"])
        if self.writes:
            if self._writer is None:
                raise RuntimeError("a CheckpointSaver writes inside its with block only")
            weights = _snapshot(model.state_dict())
            state = TrainingState(history=_snapshot(history), best=replace(self.best), **_snapshot(training_state))
            contents: dict[str, Any] = {
                "last": Checkpoint(model=weights, header=self.header, epoch=row["epoch"], training=state),
                "history": pd.DataFrame(history),
            }
            if improved:
                contents["best"] = Checkpoint(
                    model=weights, header=self.header, epoch=row["epoch"], phase=row["phase"], metrics=dict(metrics)
                )
            self._writer.submit(contents)
        return improved

    def flush(self) -> None:
        """Wait until the files of every epoch so far are on disk."""
        if self._writer is not None:
            self._writer.flush()

    def best_weights(self) -> dict:
        self.flush()
        return Checkpoint.read(self.run.best).model


def read_training_state(run: RunDir) -> Checkpoint:
    """``last.pt``, with all a resume needs; a damaged file is reported, never half-used."""
    try:
        return Checkpoint.read_resumable(run.last)
    except LowmedError as exc:  # e.g. cut short by a crash of an older version, or a full disk
        raise LowmedError(f"{exc}; start the run again with --overwrite") from None


def check_run_dir(run: RunDir, resume: bool, overwrite: bool) -> None:
    """An existing run dir is only continued (--resume) or replaced (--overwrite); a folder that holds anything but
    a lowmed run is never replaced."""
    if resume:
        if not run.last.is_file():
            raise LowmedError(
                f"--resume {run.path}: no {run.last.name} to continue from; start the run without --resume"
            )
        return
    written = written_files(run)
    if written and not overwrite:
        raise LowmedError(
            f"run dir {run.path} exists; continue it with --resume {run.path}, start again with --overwrite, or "
            "choose --out"
        )
    if written and not (run.config.is_file() or run.summary.is_file()):
        raise LowmedError(
            f"--out {run.path}: holds files that are not a lowmed run (e.g. {written[0].name}); --overwrite replaces "
            "only a run dir; choose another --out"
        )


def start_run_dir(run: RunDir, config: dict) -> None:
    """A new run starts in an empty dir: what an --overwrite replaces (an earlier run) goes now, not before; then
    its ``config.yaml``."""
    for path in written_files(run):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    write_yaml(run.config, config)


def written_files(run: RunDir) -> list[Path]:
    """What is in a run dir besides its lock."""
    return [p for p in run.path.iterdir() if p.name != LOCK_FILE] if run.path.is_dir() else []
