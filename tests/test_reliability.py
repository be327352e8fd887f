"""Faults survived and bad inputs refused: real processes killed, interrupted, fed broken files."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from lowmed import prepare, train
from lowmed.config import TrainConfig
from lowmed.errors import LowmedError
from lowmed.training.train import resume_run
from tests.conftest import FAST
from tests.factory import make_kermany

TRAIN_FLAGS = ["--image-size", "32", "--batch-size", "16", "--lr", "0.001", "--patience", "100", "-q"]


def lowmed(*args):
    return [sys.executable, "-m", "lowmed", *map(str, args)]


def wait_for_epochs(run_dir, epochs, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = run_dir / "history.csv"
        if history.is_file() and len(pd.read_csv(history)) >= epochs:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before epoch {epochs}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for epochs")


def test_kill_9_mid_run_then_resume_matches_the_uninterrupted_run(small, tmp_path):
    epochs = 24
    train(TrainConfig(data=str(small), epochs=epochs, patience=100, out=str(tmp_path / "whole"), **FAST), quiet=True)
    process = subprocess.Popen(
        lowmed("train", small, "--epochs", epochs, "--out", tmp_path / "killed", *TRAIN_FLAGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_epochs(tmp_path / "killed", 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not any(
        p.name.startswith(".") and ".tmp-" in p.name and p.stat().st_size == 0
        for p in (tmp_path / "killed").iterdir()
        if p.name.endswith((".pt",))
    )
    torch.load(tmp_path / "killed" / "last.pt", weights_only=True)  # never half-written
    done = subprocess.run(lowmed("train", "--resume", tmp_path / "killed", "-q"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole, resumed = pd.read_csv(tmp_path / "whole" / "history.csv"), pd.read_csv(tmp_path / "killed" / "history.csv")
    assert list(resumed["epoch"]) == list(range(1, epochs + 1))  # no gap, no duplicate
    pd.testing.assert_frame_equal(
        whole[["epoch", "train_loss", "val_loss"]], resumed[["epoch", "train_loss", "val_loss"]], rtol=1e-4
    )
    assert json.loads((tmp_path / "killed" / "train.json").read_text())["status"] == "completed"


def test_ctrl_c_stops_after_the_batch_marks_interrupted_and_exits_130(small, tmp_path):
    process = subprocess.Popen(
        lowmed("train", small, "--epochs", 40, "--out", tmp_path / "run", *TRAIN_FLAGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_epochs(tmp_path / "run", 2, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "lowmed train --resume" in err
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["status"] == "interrupted"
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == len(pd.read_csv(tmp_path / "run" / "history.csv"))
    assert resume_run(tmp_path / "run", quiet=True)["epochs_run"] == 40


def test_truncated_checkpoint_is_detected_and_reported(small, tmp_path):
    train(TrainConfig(data=str(small), epochs=2, out=str(tmp_path / "run"), **FAST), quiet=True)
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    done = subprocess.run(lowmed("train", "--resume", tmp_path / "run"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "last.pt is damaged and cannot be resumed" in done.stderr and "Traceback" not in done.stderr


def test_images_deleted_after_prepare_are_skipped_with_a_warning(tmp_path):
    src = make_kermany(
        tmp_path / "src", {"train": {"NORMAL": 60, "PNEUMONIA": 60}, "test": {"NORMAL": 4, "PNEUMONIA": 4}}
    )
    data = prepare(src, tmp_path / "p", min_val_per_class=4, quiet=True)
    victim = data.split("train")["path"].iloc[0]
    os.remove(victim)
    summary = train(TrainConfig(data=str(data.root), epochs=1, out=str(tmp_path / "run"), **FAST), quiet=True)
    assert summary["unreadable_files"] == {"train": [victim]}
    for path in data.split("train")["path"].iloc[1:20]:  # far more than 1 %: the run refuses to go on
        os.remove(path)
    with pytest.raises(Exception, match="unreadable — too many to go on"):
        train(TrainConfig(data=str(data.root), epochs=1, out=str(tmp_path / "run2"), **FAST), quiet=True)


def test_unwritable_run_dir_is_refused_before_training(small, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LowmedError, match="cannot write there"):
        train(TrainConfig(data=str(small), epochs=1, out=str(tmp_path / "a-file" / "run"), **FAST), quiet=True)


def test_not_enough_disk_space_is_refused_before_training(small, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(LowmedError, match="MB free, but the checkpoints of this model need about"):
        train(TrainConfig(data=str(small), epochs=1, out=str(tmp_path / "run"), **FAST), quiet=True)


def bad_inputs(root, small):
    """(name, command, text the one-line error must contain) for a corpus of broken inputs."""
    root.mkdir(parents=True, exist_ok=True)
    ham_like = root / "ham.csv"
    ham_like.write_text("lesion_id,image_id,dx\nL1,I1,nv\nL1,I1,mel\n")
    misspelled = root / "misspelled.csv"
    misspelled.write_text("paht,label\na.png,x\n")
    outside = root / "outside.csv"
    outside.write_text("path,label\n../../etc/passwd,x\nb.png,y\n")
    chex = root / "chex" / "CheXpert-v1.0-small"
    chex.mkdir(parents=True)
    header = (
        "Path,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,"
        "Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
    )
    (chex / "train.csv").write_text(header + "\nCheXpert-v1.0-small/train/p1/s1/v.jpg" + ",2" * 14 + "\n")
    unknown_key = root / "unknown.yaml"
    unknown_key.write_text("epochs: 3\nlearning-rate: 0.1\n")
    wrong_type = root / "wrong.yaml"
    wrong_type.write_text("epochs: many\n")
    negative = root / "negative.yaml"
    negative.write_text(f"data: {small}\nepochs: -2\n")
    other = root / "other"
    prepare(make_kermany(root / "other-src", {"train": {"A": 6, "B": 6}}), other, min_val_per_class=1, quiet=True)
    foreign_subset = root / "foreign.csv"
    pd.read_csv(other / "manifest.csv").to_csv(foreign_subset, index=False)
    (root / "foreign.yaml").write_text(yaml.safe_dump({"prepared_dir": str(small)}))
    incompatible = root / "simple.pth"
    from lowmed.models.registry import build_model, get_model_spec

    torch.save(build_model(get_model_spec("simplecnn"), 2).backbone.state_dict(), incompatible)
    text = root / "notes.txt"
    text.write_text("these are not weights\n")
    return [
        (
            "duplicated image ids",
            ["prepare", ham_like, "--format", "ham10000", "-o", root / "o1"],
            "image_id 'I1' appears more than once",
        ),
        ("misspelled column", ["prepare", misspelled, "-o", root / "o2"], "missing column(s) 'path'"),
        ("path escaping the root", ["prepare", outside, "-o", root / "o3"], "points outside"),
        ("bad CheXpert value", ["prepare", root / "chex", "-o", root / "o4"], "value '2' is not 1, 0, -1 or empty"),
        ("unknown config key", ["train", small, "--config", unknown_key], "unknown key(s) learning-rate"),
        ("wrong config type", ["train", small, "--config", wrong_type], "epochs: 'many' is not a valid int"),
        ("negative epochs", ["train", "--config", negative], "--epochs -2: expected at least 1"),
        ("subset of another dataset", ["train", foreign_subset, "-o", root / "r1"], "label(s) ['A', 'B'] are not in"),
        (
            "incompatible weights",
            ["train", small, "--model", "resnet18", "--weights", incompatible, "-o", root / "r2"],
            "--allow-partial-weights",
        ),
        ("text file as weights", ["train", small, "--weights", text, "-o", root / "r3"], "not a loadable weights file"),
        ("text file as checkpoint", ["evaluate", "--checkpoint", text, "--data", small], "not a loadable weights"),
        ("a file as run dir", ["train", small, "-o", text], f"--out {text} is a file; expected a folder"),
    ]


def test_bad_inputs_give_one_line_and_exit_2(small, tmp_path):
    for name, args, culprit in bad_inputs(tmp_path / "corpus", small):
        done = subprocess.run(lowmed(*args), capture_output=True, text=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (name, done.stderr)
        assert len(lines) == 1 and culprit in lines[0], (name, done.stderr)
    assert not (tmp_path / "corpus" / "o1").exists() and not (tmp_path / "corpus" / "r2").exists()
