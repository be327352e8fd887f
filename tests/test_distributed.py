"""``torchrun --nproc_per_node 2`` on this CPU (gloo): one run dir, the single-process result, resume; a study."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from lowmed import run_experiment

FLAGS = [
    "--image-size",
    "32",
    "--lr",
    "0.002",
    "--head",
    "linear",
    "--augment-strength",
    "0",
    "--patience",
    "100",
    "--seed",
    "3",
    "-q",
]


def torchrun(*args):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lowmed",
        *map(str, args),
    ]


def _stat(pid: int) -> list[str] | None:
    """A process's state, parent pid, ... from /proc (None once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def kill_launcher_and_workers(launcher: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers, as a pre-empted node loses them (torchrun starts each worker in a session
    of its own, so killing the launcher's process group would leave them running)."""
    workers = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (_stat(int(entry.name)) or [None, None])[1] == str(launcher.pid)
    ]
    assert workers, "torchrun has started no worker yet"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    launcher.kill()
    launcher.wait()
    deadline = time.time() + 20
    while any((_stat(pid) or ["Z"])[0] != "Z" for pid in workers):  # dead, or a zombie not yet reaped
        assert time.time() < deadline
        time.sleep(0.05)


def test_two_processes_match_one_with_the_same_global_batch(small, tmp_path):
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "lowmed",
            "train",
            small,
            "--epochs",
            "12",
            "--batch-size",
            "16",
            "--out",
            tmp_path / "one",
            *FLAGS,
        ],
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    started = time.time()
    double = subprocess.run(
        torchrun("train", small, "--epochs", "12", "--batch-size", "8", "--out", tmp_path / "two", *FLAGS),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (pd.read_csv(tmp_path / name / "history.csv") for name in ("one", "two"))
    assert list(two["epoch"]) == list(range(1, 13))  # one history, written once
    assert double.stdout.count("best epoch") == 1  # one summary table, from rank 0
    summary = json.loads((tmp_path / "two" / "train.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 16 and summary["status"] == "completed"
    # the same global batch and seed: validation loss within a small tolerance of the single-process run
    assert abs(two["val_loss"].iloc[-1] - one["val_loss"].iloc[-1]) < 0.15, (one["val_loss"], two["val_loss"])
    assert time.time() - started < 300


def test_resume_under_torchrun(small, tmp_path):
    process = subprocess.Popen(
        torchrun("train", small, "--epochs", "16", "--batch-size", "8", "--out", tmp_path / "run", *FLAGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = tmp_path / "run" / "history.csv"
    deadline = time.time() + 240
    while not (history.is_file() and len(pd.read_csv(history)) >= 2):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.1)
    kill_launcher_and_workers(process)
    done = subprocess.run(
        torchrun("train", "--resume", tmp_path / "run", "-q"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = pd.read_csv(history)
    assert list(resumed["epoch"]) == list(range(1, 17))


def test_study_under_torchrun_pretrains_together_and_shares_out_the_grid(small, chexpert, tmp_path):
    def study(out):
        path = tmp_path / f"{out}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "name": "spread",
                    "out": str(tmp_path / out),
                    "datasets": [{"name": "cxr", "data": str(small)}],
                    "arms": [
                        {"name": "A", "model": "simplecnn"},
                        {
                            "name": "C",
                            "model": "simplecnn",
                            "pretrain": {
                                "dataset": {"name": "cx", "data": str(chexpert)},
                                "epochs": 16,
                                "patience": 100,
                                "batch_size": 4,
                            },
                        },
                    ],
                    "per_class": [8],
                    "seeds": [0],
                    "train": {
                        "image_size": 32,
                        "batch_size": 8,
                        "epochs": 3,
                        "fine_tune_epochs": 1,
                        "lr": 0.002,
                        "head": "linear",
                        "augment_strength": 0,
                    },
                    "evaluate": {"bootstrap": 40},
                    "compare": {"resamples": 40},
                }
            )
        )
        return path

    out = tmp_path / "spread"
    pretrain_dir = run_experiment(study("spread"), dry_run=True).pretrain[0].run_dir  # simplecnn-on-cx-<hash>
    stopped = subprocess.Popen(
        torchrun("experiment", study("spread")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not ((pretrain_dir / "history.csv").is_file() and len(pd.read_csv(pretrain_dir / "history.csv")) >= 3):
        assert time.time() < deadline and stopped.poll() is None
        time.sleep(0.1)
    kill_launcher_and_workers(stopped)  # the whole study, in the middle of its pretrain stage
    assert json.loads((pretrain_dir / "train.json").read_text())["status"] == "running"

    spread = subprocess.run(torchrun("experiment", study("spread")), capture_output=True, text=True, timeout=400)
    assert spread.returncode == 0, spread.stderr[-3000:]
    pretrain = json.loads((pretrain_dir / "train.json").read_text())
    assert pretrain["processes"] == 2 and pretrain["status"] == "completed" and pretrain["resumed"]
    assert list(pd.read_csv(pretrain_dir / "history.csv")["epoch"]) == list(range(1, 17))
    names = [f"cxr-{arm}-simplecnn-n8-seed0" for arm in "ac"]
    for name in names:  # each grid run trained by one process, alone, and evaluated
        assert json.loads((out / "runs" / name / "train.json").read_text())["processes"] == 1
        assert (out / "runs" / name / "eval" / "test" / "metrics.json").is_file()
    assert spread.stderr.count(f"{pretrain_dir.name}: trained") == 2  # the pretrain stage: both processes, resumed
    assert all(spread.stderr.count(f"{name}: trained") == 1 for name in names)  # a grid run: whichever claimed it
    report = (out / "report.md").read_text()
    assert "3 of 3 completed" in report and "on up to 2 processes" in report and "## Conclusions" in report

    # a grid run trained by one of torchrun's processes is the run one process trains (with torchrun's one thread)
    single = subprocess.run(
        [sys.executable, "-m", "lowmed", "experiment", study("single"), "-q"],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for name in names[:1]:  # arm A (C starts from a stage pretrained on two processes in one study, one in the other)
        spread_history, single_history = (
            pd.read_csv(tmp_path / study_out / "runs" / name / "history.csv") for study_out in ("spread", "single")
        )
        assert spread_history["train_loss"].tolist() == single_history["train_loss"].tolist()
        assert spread_history["val_loss"].tolist() == single_history["val_loss"].tolist()

    again = subprocess.run(torchrun("experiment", study("spread")), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before") == 4  # the pretrain stage seen by both processes, the grid by one each
    assert not (out / ".claims").exists()
