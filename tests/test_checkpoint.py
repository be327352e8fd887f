"""Checkpoints written on a background thread: what is on disk is each epoch's state as it was, always consistent,
and a failed write is raised in the training thread."""

import threading
import time

import pandas as pd
import pytest
import torch
from torch import nn

from lowmed.config import TrainConfig
from lowmed.contracts import RunDir
from lowmed.errors import LowmedError, RunFailed
from lowmed.models.checkpoint import CHECKPOINT_SCHEMA, Checkpoint, CheckpointHeader
from lowmed.training import checkpoint
from lowmed.training.checkpoint import CheckpointSaver
from lowmed.training.train import resume_run, train
from tests.conftest import FAST


def header(classes: list[str] | None = None) -> CheckpointHeader:
    return CheckpointHeader(config={}, preprocessing={}, task="binary", classes=classes or [])


def epoch(saver: CheckpointSaver, model: nn.Module, history: list[dict], loss: float) -> bool:
    history.append({"phase": "full", "epoch": len(history) + 1, "val_loss": loss})
    return saver.epoch_end(model, {"val_loss": loss}, history, {"optimizer": {"step": torch.tensor(len(history))}})


def test_files_hold_each_epoch_as_it_was_when_it_ended(tmp_path):
    run, model, history = RunDir(tmp_path), nn.Linear(2, 1), []
    with CheckpointSaver(run, "val_loss", header(["a", "b"]), writes=True) as saver:
        with torch.no_grad():
            model.weight.fill_(1.0)
        assert epoch(saver, model, history, 0.5)
        with torch.no_grad():
            model.weight.fill_(2.0)  # training goes on while epoch 1's files may still be being written
        assert not epoch(saver, model, history, 0.7)
        saver.flush()
        best, last = (torch.load(path, weights_only=True) for path in (run.best, run.last))
        assert best["epoch"] == 1 and torch.all(best["model"]["weight"] == 1.0)
        assert last["epoch"] == 2 and torch.all(last["model"]["weight"] == 2.0)
        assert last["best"]["epoch"] == 1 and [row["epoch"] for row in last["history"]] == [1, 2]
        assert last["optimizer"]["step"] == 2 and last["classes"] == ["a", "b"]
        assert len(pd.read_csv(run.history)) == 2
        with torch.no_grad():
            model.weight.fill_(3.0)
        assert epoch(saver, model, history, 0.1)
    # leaving the block waits for the last epoch's files
    assert torch.load(run.best, weights_only=True)["epoch"] == 3 == torch.load(run.last, weights_only=True)["epoch"]


def test_a_newer_snapshot_replaces_one_not_yet_written_and_best_is_written_first(tmp_path, monkeypatch):
    """While the disk is slow, epochs pile up: only the latest last.pt is written, never before its best.pt."""
    written: list[tuple[str, int]] = []
    first_write_started, release = threading.Event(), threading.Event()
    original = checkpoint.save_checkpoint

    def slow_save(path, state):
        first_write_started.set()
        release.wait(timeout=10)
        written.append((path.name, state.epoch))
        original(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    run, model, history = RunDir(tmp_path), nn.Linear(2, 1), []
    with CheckpointSaver(run, "val_loss", header(), writes=True) as saver:
        epoch(saver, model, history, 0.9)
        first_write_started.wait(timeout=10)  # epoch 1's best.pt is being written
        for loss in (0.8, 0.85, 0.7, 0.75):  # epochs 2-5; 2 and 4 are the best so far
            epoch(saver, model, history, loss)
        release.set()
    assert written == [("best.pt", 1), ("last.pt", 1), ("best.pt", 4), ("last.pt", 5)]
    assert torch.load(run.last, weights_only=True)["best"]["epoch"] == 4


def test_a_failed_write_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    def full_disk(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    model, history = nn.Linear(2, 1), []
    with pytest.raises(RunFailed, match=r"could not write .*best.pt \(No space left on device\).*--resume"):
        with CheckpointSaver(RunDir(tmp_path), "val_loss", header(), writes=True) as saver:
            epoch(saver, model, history, 0.5)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the next epoch's submit (or the block's end) raises it
                epoch(saver, model, history, 0.5)


def test_a_process_that_does_not_write_leaves_the_files_alone(tmp_path):
    """Under torchrun only rank 0 writes; the others keep the same record of the best epoch."""
    model, history = nn.Linear(2, 1), []
    with CheckpointSaver(RunDir(tmp_path), "val_loss", header(), writes=False) as saver:
        assert epoch(saver, model, history, 0.5) and saver.best.epoch == 1
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_checkpoint_cannot_be_written_fails_and_resumes_once_mended(separable, tmp_path, monkeypatch):
    original = checkpoint.save_checkpoint

    def disk_full_from_epoch_3(path, state):
        if state.epoch >= 3:
            raise OSError(28, "No space left on device")
        original(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", disk_full_from_epoch_3)
    run = tmp_path / "run"
    with pytest.raises(RunFailed, match="No space left on device"):
        train(TrainConfig(data=str(separable), epochs=5, out=str(run), **FAST))
    summary = RunDir(run).read_summary()
    assert summary.status == "failed" and f"lowmed train --resume {run}" in summary.error
    monkeypatch.setattr(checkpoint, "save_checkpoint", original)
    resumed = resume_run(run)
    assert resumed.status == "completed" and len(pd.read_csv(RunDir(run).history)) == 5


def test_a_saver_writes_inside_its_with_block_only(tmp_path):
    """Outside it nothing would wait for the last files: refused, not silently unsaved."""
    with pytest.raises(RuntimeError, match="inside its with block"):
        epoch(CheckpointSaver(RunDir(tmp_path), "val_loss", header(), writes=True), nn.Linear(2, 1), [], 0.5)


def test_a_checkpoint_is_stamped_with_its_schema_and_older_and_foreign_files_are_told_apart(tmp_path):
    written = Checkpoint(model={"w": torch.ones(2)}, header=header(["a", "b"]), epoch=3, phase="full", metrics={"x": 1})
    written.write(tmp_path / "best.pt")
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["schema"] == CHECKPOINT_SCHEMA and saved["classes"] == ["a", "b"] and saved["epoch"] == 3

    torch.save({key: value for key, value in saved.items() if key != "schema"}, tmp_path / "older.pt")  # schema 1
    older = Checkpoint.read(tmp_path / "older.pt")
    assert older.header == written.header and (older.epoch, older.phase, older.metrics) == (3, "full", {"x": 1})
    assert older.training is None and torch.equal(older.model["w"], torch.ones(2))

    torch.save({**saved, "schema": CHECKPOINT_SCHEMA + 1}, tmp_path / "newer.pt")
    with pytest.raises(LowmedError, match="newer lowmed .*upgrade lowmed"):
        Checkpoint.read(tmp_path / "newer.pt")
    torch.save({"weight": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(LowmedError, match="not a checkpoint written by 'lowmed train'"):
        Checkpoint.read(tmp_path / "plain.pt")
    with pytest.raises(LowmedError, match="not a lowmed training checkpoint \\(no 'optimizer'\\)"):
        Checkpoint.read_resumable(tmp_path / "best.pt")
