"""Faults survived and bad inputs refused: real processes killed, interrupted, fed broken files."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import torch
import yaml

from lowmed import prepare, subsample, train
from lowmed.cli import main
from lowmed.config import TrainConfig
from lowmed.contracts import RunDir, TrainSummary
from lowmed.errors import LowmedError, RunFailed
from lowmed.locking import LOCK_FILE, in_use_by_another, own_run_dir, owner, owner_alive
from lowmed.training.train import resume_run
from tests.conftest import FAST
from tests.factory import make_kermany, write_image

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
    train(TrainConfig(data=str(small), epochs=epochs, patience=100, out=str(tmp_path / "whole"), **FAST))
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
    assert resume_run(tmp_path / "run")["epochs_run"] == 40


def test_truncated_checkpoint_is_detected_and_reported(small, tmp_path):
    train(TrainConfig(data=str(small), epochs=2, out=str(tmp_path / "run"), **FAST))
    summary = TrainSummary.read(tmp_path / "run" / "train.json")
    summary.status = "interrupted"  # as if stopped after epoch 2, and its last.pt then damaged
    summary.write(tmp_path / "run" / "train.json")
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    done = subprocess.run(lowmed("train", "--resume", tmp_path / "run"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "last.pt is damaged and cannot be resumed" in done.stderr and "Traceback" not in done.stderr


def _sixty_per_class(tmp_path):
    """A prepared dataset of 60 training images per class: one lost image is under 1 %, twenty are far more."""
    src = make_kermany(
        tmp_path / "src", {"train": {"NORMAL": 60, "PNEUMONIA": 60}, "test": {"NORMAL": 4, "PNEUMONIA": 4}}
    )
    return prepare(src, tmp_path / "p", min_val_per_class=4)


def test_images_deleted_after_prepare_are_skipped_with_a_warning(tmp_path):
    data = _sixty_per_class(tmp_path)
    victim = data.split("train")["path"].iloc[0]
    os.remove(victim)
    summary = train(TrainConfig(data=str(data.root), epochs=1, out=str(tmp_path / "run"), **FAST))
    assert summary["unreadable_files"] == {"train": [victim]}
    for path in data.split("train")["path"].iloc[1:20]:  # far more than 1 %: the run refuses to go on
        os.remove(path)
    with pytest.raises(RunFailed, match="unreadable — too many to go on"):
        train(TrainConfig(data=str(data.root), epochs=1, out=str(tmp_path / "run2"), **FAST))
    assert not (tmp_path / "run2").exists()  # stopped before it wrote anything: no run dir left to read as killed
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(RunFailed, match="too many to go on"):  # an --overwrite that stops keeps the old run
        train(TrainConfig(data=str(data.root), epochs=1, out=str(tmp_path / "run"), **FAST), overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_a_strict_overwrite_refused_for_unreadable_images_keeps_the_old_run(tmp_path):
    data = _sixty_per_class(tmp_path)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data.root), epochs=1, out=str(run), **FAST))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    os.remove(data.split("train")["path"].iloc[0])
    done = subprocess.run(
        lowmed("train", data.root, "--epochs", 1, "--out", run, "--overwrite", "--strict", "--image-size", 32),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--strict: 1 train image(s) could not be read" in done.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # the old run is untouched


def test_unwritable_run_dir_is_refused_before_training(small, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LowmedError, match="a-file is a file; expected a folder"):
        train(TrainConfig(data=str(small), epochs=1, out=str(tmp_path / "a-file" / "run"), **FAST))


def test_not_enough_disk_space_is_refused_before_training(small, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(LowmedError, match="MB free, but the checkpoints of this model need about"):
        train(TrainConfig(data=str(small), epochs=1, out=str(tmp_path / "run"), **FAST))


UNWRITABLE = Path("/sys/lowmed-corpus")  # refused even to root, as CI runs: /sys is not writable by anyone


class BadInput(NamedTuple):
    name: str
    args: list
    culprit: str  # text the one-line error must contain
    untouched: Path  # an output that must not appear, or an input that must not change
    cwd: Path | None = None  # the folder the command is typed in


def bad_inputs(root, small, trained_run) -> list[BadInput]:
    """A corpus of broken inputs, across every command."""
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
    header_only = root / "header-only.csv"
    header_only.write_text("path,label\n")
    images = root / "images"
    for index in range(60):
        write_image(images / f"{index}.png", index)
    cased = root / "cased.csv"
    cased.write_text(
        "path,label\n" + "".join(f"images/{i}.png,{['NORMAL', 'normal', 'NORMAL '][i % 3]}\n" for i in range(60))
    )
    tiny = root / "tiny.csv"
    tiny.write_text("path,label\n" + "".join(f"images/{i}.png,{'AB'[i % 2]}\n" for i in range(60)))
    latin1 = make_kermany(root / "latin1", {"train": {"A": 6, "B": 6}, "test": {"A": 2, "B": 2}})
    write_image(latin1 / "train" / "A" / os.fsdecode(b"caf\xe9.png"), 7)
    lost_class = make_kermany(root / "lost", {"train": {"A": 12, "B": 12}, "test": {"A": 3, "B": 3}})
    for path in (lost_class / "test" / "B").iterdir():
        path.write_text("no longer an image")
    unknown_key = root / "unknown.yaml"
    unknown_key.write_text("epochs: 3\nlearning-rate: 0.1\n")
    wrong_type = root / "wrong.yaml"
    wrong_type.write_text("epochs: many\n")
    negative = root / "negative.yaml"
    negative.write_text(f"data: {small}\nepochs: -2\n")
    other = root / "other"
    prepare(make_kermany(root / "other-src", {"train": {"A": 6, "B": 6}}), other, min_val_per_class=1)
    foreign_subset = root / "foreign.csv"
    pd.read_csv(other / "manifest.csv").to_csv(foreign_subset, index=False)
    (root / "foreign.yaml").write_text(yaml.safe_dump({"prepared_dir": str(small)}))
    drawn_elsewhere = subsample(other, 2, out=root / "drawn-elsewhere.csv").path
    incompatible = root / "simple.pth"
    from lowmed.models.registry import build_model, get_model_spec

    torch.save(build_model(get_model_spec("simplecnn"), 2).backbone.state_dict(), incompatible)
    text = root / "notes.txt"
    text.write_text("these are not weights\n")
    unfinished = root / "unfinished-run"
    shutil.copytree(trained_run, unfinished, ignore=shutil.ignore_patterns("eval"))
    summary = TrainSummary.read(unfinished / "train.json")
    summary.status = "interrupted"
    summary.write(unfinished / "train.json")
    ambiguous = root / "ambiguous"
    for seed in (1, 2):
        subsample(small, 4, seed=seed, out=ambiguous / "lowmed-data" / "small" / "subsets" / f"s{seed}.csv")
    rows = [
        (
            "duplicated image ids",
            ["prepare", ham_like, "--format", "ham10000", "-o", root / "o1"],
            "image_id 'I1' appears more than once",
            root / "o1",
        ),
        ("misspelled column", ["prepare", misspelled, "-o", root / "o2"], "missing column(s) 'path'", root / "o2"),
        ("path escaping the root", ["prepare", outside, "-o", root / "o3"], "points outside", root / "o3"),
        (
            "bad CheXpert value",
            ["prepare", root / "chex", "-o", root / "o4"],
            "value '2' is not 1, 0, -1 or empty",
            root / "o4",
        ),
        ("a header and no rows", ["prepare", header_only, "-o", root / "o5"], "a header and no rows", root / "o5"),
        ("file name not UTF-8", ["prepare", latin1, "-o", root / "o6"], "not valid UTF-8 (e.g. b'", root / "o6"),
        ("labels differing by case", ["prepare", cased, "-o", root / "o7"], "'normal' (20)", root / "o7"),
        (
            "a class lost to exclusions",
            ["prepare", lost_class, "-o", root / "o8"],
            "no images of 'B' in test",
            root / "o8",
        ),
        (
            "made splits far from the fractions",
            ["prepare", tiny, "-o", root / "o9", "--strict"],
            "--strict: val split",
            root / "o9",
        ),
        ("prepare into an unwritable folder", ["prepare", tiny, "-o", UNWRITABLE], "cannot write in /sys", UNWRITABLE),
        ("demo into an unwritable folder", ["prepare", "--demo", "-o", UNWRITABLE], "cannot write in /sys", UNWRITABLE),
        ("negative seed", ["subsample", small, "-n", 4, "--seed", -1], "--seed -1: expected a whole number", small),
        ("seed beyond 64 bits", ["train", small, "--seed", 2**70, "-o", root / "r4"], f"--seed {2**70}", root / "r4"),
        (
            "subset into an unwritable folder",
            ["subsample", small, "-n", 4, "-o", UNWRITABLE / "s.csv"],
            "cannot write in /sys",
            small,
        ),
        ("unknown config key", ["train", small, "--config", unknown_key], "unknown key(s) learning-rate", small),
        ("wrong config type", ["train", small, "--config", wrong_type], "epochs: 'many' is not a valid int", small),
        ("negative epochs", ["train", "--config", negative], "--epochs -2: expected at least 1", small),
        (
            "subset of another dataset",
            ["train", foreign_subset, "-o", root / "r1"],
            "label(s) ['A', 'B'] are not in",
            root / "r1",
        ),
        (
            "DATA and a subset of another dataset",
            ["train", small, "--subset", drawn_elsewhere, "-o", root / "r5"],
            "was drawn from",
            root / "r5",
        ),
        (
            "incompatible weights",
            ["train", small, "--model", "resnet18", "--weights", incompatible, "-o", root / "r2"],
            "--allow-partial-weights",
            root / "r2",
        ),
        (
            "text file as weights",
            ["train", small, "--weights", text, "-o", root / "r3"],
            "not a loadable weights file",
            root / "r3",
        ),
        (
            "predict a folder with a file name not UTF-8",
            ["predict", trained_run, latin1, "-o", root / "predictions.csv"],
            "not valid UTF-8",
            root / "predictions.csv",
        ),
        (
            "text file as checkpoint",
            ["evaluate", "--checkpoint", text, "--data", small],
            "not a loadable weights",
            small,
        ),
        ("a file as run dir", ["train", small, "-o", text], f"run dir {text} is a file; expected a folder", text),
        (
            "an image size no memory holds",
            ["train", small, "--image-size", 100000, "-o", root / "r6"],
            "training needs about",
            root / "r6",
        ),
        ("no DATA and several subsets", ["train"], "2 subsets below", ambiguous, ambiguous),
        (
            "evaluate into an unwritable folder",
            ["evaluate", trained_run, "-o", UNWRITABLE],
            "cannot write in /sys",
            trained_run / "eval",
        ),
        (
            "compare into an unwritable folder",
            ["compare", trained_run, "-o", UNWRITABLE],
            "cannot write in /sys",
            trained_run,
        ),
        (
            "evaluate an unfinished run, strictly",
            ["evaluate", unfinished, "--strict", "--bootstrap", 0],
            "did not finish (interrupted",
            unfinished,
        ),
    ]
    return [BadInput(*row) for row in rows]


def snapshot(path: Path) -> dict | None:
    """Every file below ``path`` with its size and modification time; None where nothing is there."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def test_bad_inputs_give_one_line_and_exit_2_and_write_nothing(small, trained_run, tmp_path, capsys, monkeypatch):
    """Each case through ``main``, the console script's entry point (in this process: 30 interpreters would take a
    minute and a half to start)."""
    for case in bad_inputs(tmp_path / "corpus", small, trained_run):
        monkeypatch.chdir(case.cwd or tmp_path)
        before = snapshot(case.untouched)
        with pytest.raises(SystemExit) as exit:
            main([str(arg) for arg in case.args])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert exit.value.code == 2, (case.name, err)
        assert len(lines) == 1 and case.culprit in lines[0], (case.name, err)
        assert snapshot(case.untouched) == before, case.name


def test_a_run_dir_has_one_owner_and_a_killed_run_says_so(small, tmp_path, capsys):
    """A training process owns its run dir; this test's process, a second one, is refused, then takes over."""
    run = tmp_path / "run"
    process = subprocess.Popen(
        lowmed("train", small, "--epochs", 6, "--out", run, *TRAIN_FLAGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_epochs(run, 2, process)
    process.send_signal(signal.SIGSTOP)  # alive, holding the lock, and not finishing while the others try
    assert owner(run)["pid"] == process.pid and RunDir(run).read_summary().status == "running"
    for args in (["train", "--resume", run], ["evaluate", run, "--bootstrap", "0"]):
        with pytest.raises(SystemExit) as refused:
            main([str(arg) for arg in args])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and f"is in use by process {process.pid}" in err, err
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = RunDir(run).read_summary()
    assert (killed.status, killed.status_label) == ("killed", "failed (killed)") and "--resume" in killed.error
    assert RunDir(run).state() == "resumable"
    assert resume_run(run).completed
    assert f"took over the lock of process {process.pid}" in capsys.readouterr().err
    assert RunDir(run).read_summary().status == "completed" and owner(run) is None


def test_a_damaged_lock_is_stale_and_one_from_another_host_is_respected(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text('{"pid": 12')  # a write cut short, a minute ago
    os.utime(run / LOCK_FILE, (time.time() - 60, time.time() - 60))
    with own_run_dir(run, "train"):
        assert owner(run)["pid"] == os.getpid() and not in_use_by_another(run)
    assert "took over the lock" in capsys.readouterr().err and owner(run) is None
    (run / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "command": "train", "since": "now"}))
    with pytest.raises(LowmedError, match="is in use by process 1 on another-host \\(train, since now\\)"):
        with own_run_dir(run, "evaluate"):
            pass
    assert in_use_by_another(run) and owner(run)["host"] == "another-host"  # left as it was
    assert not (tmp_path / "new").exists()
    with pytest.raises(LowmedError, match="bad input"):  # a refusal inside the block removes a folder it made
        with own_run_dir(tmp_path / "new", "train"):
            raise LowmedError("bad input")
    assert not (tmp_path / "new").exists()


@pytest.fixture
def live_process():
    """Another process, alive for the test: the owner of a lock that must be respected."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_two_processes_finding_one_stale_lock_do_not_both_take_it(tmp_path, monkeypatch, capsys, live_process):
    """B reads a dead process's lock; before B removes it, A takes it over and writes its own. B must see that
    and be refused, not remove A's lock and go on beside A."""
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_FILE
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "command": "train", "since": "then"}))
    a = live_process
    judged = []

    def a_takes_over_after_b_judged(record):
        alive = owner_alive(record)
        if not judged:  # B's first look: A's takeover lands right after it
            judged.append(alive)
            lock.write_text(
                json.dumps({"pid": a.pid, "host": socket.gethostname(), "command": "train", "since": "now"})
            )
        return alive

    monkeypatch.setattr("lowmed.locking.owner_alive", a_takes_over_after_b_judged)
    with pytest.raises(LowmedError, match=f"is in use by process {a.pid}"):
        with own_run_dir(run, "evaluate"):
            pass
    assert judged == [False] and owner(run)["pid"] == a.pid  # A's lock stands
    assert "took over" not in capsys.readouterr().err


def test_a_lock_still_being_written_is_waited_for(tmp_path, monkeypatch, live_process):
    """An empty lock made this instant belongs to a process between creating it and writing its record."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    waits = []

    def record_written_meanwhile(seconds):
        waits.append(seconds)
        record = {"pid": live_process.pid, "host": socket.gethostname(), "command": "train"}
        (run / LOCK_FILE).write_text(json.dumps(record))

    monkeypatch.setattr("lowmed.locking.time.sleep", record_written_meanwhile)
    with pytest.raises(LowmedError, match=f"is in use by process {live_process.pid}"):
        with own_run_dir(run, "evaluate"):
            pass
    assert len(waits) == 1


def test_resume_of_a_completed_run_says_so_and_touches_nothing(small, tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(data=str(small), epochs=1, out=str(run), **FAST))
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit:
        main(["train", "--resume", str(run)])
    said = capsys.readouterr().out.strip()
    assert exit.value.code == 0 and said == f"{run}: already completed; nothing to resume (its files are untouched)"
    assert snapshot(run) == before
    assert resume_run(run).completed and snapshot(run) == before


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(small, tmp_path, monkeypatch):
    monkeypatch.setattr("lowmed.training.memory.free_memory", lambda device: 2**20)
    with pytest.raises(
        LowmedError, match=r"training needs about .* \(images .*, model .*, one batch .*\), but cpu has 1 MiB"
    ):
        train(TrainConfig(data=str(small), epochs=1, out=str(tmp_path / "run"), **FAST))
    assert not (tmp_path / "run").exists()


def test_the_memory_estimate_grows_with_the_pixels_and_the_batch():
    from lowmed.models.registry import build_model, get_model_spec
    from lowmed.training.memory import estimate_training_memory

    model = build_model(get_model_spec("simplecnn"), 2)
    cpu = torch.device("cpu")
    small_batch = estimate_training_memory(model, 64, 8, images=100, device=cpu)
    larger = estimate_training_memory(model, 128, 8, images=100, device=cpu)
    assert larger.batch == pytest.approx(4 * small_batch.batch, rel=0.05)
    assert estimate_training_memory(model, 64, 16, images=100, device=cpu).batch == 2 * small_batch.batch
    parameters = sum(p.numel() for p in model.parameters())
    assert small_batch.images == 100 * 3 * 64 * 64 and small_batch.model == 16 * parameters
    # two copies of weights + Adam's two moments in host memory; on a GPU they are not the device's memory
    assert small_batch.checkpoints == 2 * 3 * 4 * parameters and "checkpoint copies" in small_batch.describe()
    on_gpu = estimate_training_memory(model, 64, 8, images=100, device=torch.device("cuda"))
    assert on_gpu.checkpoints == 0 and on_gpu.total == small_batch.total - small_batch.checkpoints
