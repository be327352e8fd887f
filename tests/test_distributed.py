"""``torchrun --nproc_per_node 2`` on this CPU (gloo): one run dir, the single-process result, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

FLAGS = ["--image-size", "32", "--lr", "0.002", "--head", "linear", "--augment-strength", "0", "--patience", "100",
         "--seed", "3", "-q"]


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "lowmed", *map(str, args)]


def test_two_processes_match_one_with_the_same_global_batch(small, tmp_path):
    single = subprocess.run([sys.executable, "-m", "lowmed", "train", small, "--epochs", "12", "--batch-size", "16",
                             "--out", tmp_path / "one", *FLAGS], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    started = time.time()
    double = subprocess.run(torchrun("train", small, "--epochs", "12", "--batch-size", "8", "--out", tmp_path / "two",
                                     *FLAGS), capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (pd.read_csv(tmp_path / name / "history.csv") for name in ("one", "two"))
    assert list(two["epoch"]) == list(range(1, 13))  # one history, written once
    summary = json.loads((tmp_path / "two" / "train.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 16 and summary["status"] == "completed"
    # the same global batch and seed: validation loss within a small tolerance of the single-process run
    assert abs(two["val_loss"].iloc[-1] - one["val_loss"].iloc[-1]) < 0.15, (one["val_loss"], two["val_loss"])
    assert time.time() - started < 300


def test_resume_under_torchrun(small, tmp_path):
    process = subprocess.Popen(torchrun("train", small, "--epochs", "40", "--batch-size", "8", "--out",
                                        tmp_path / "run", *FLAGS), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    history = tmp_path / "run" / "history.csv"
    deadline = time.time() + 240
    while not (history.is_file() and len(pd.read_csv(history)) >= 2):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, as a pre-empted node loses them
    process.wait()
    done = subprocess.run(torchrun("train", "--resume", tmp_path / "run", "-q"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = pd.read_csv(history)
    assert list(resumed["epoch"]) == list(range(1, 41))
