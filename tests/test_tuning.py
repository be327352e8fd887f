"""Tuning fairly: the same budget per arm, chosen on validation only, resumable, with checked search spaces."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import PIL.Image
import pytest
import yaml

from lowmed import run_experiment, train
from lowmed.cli import main
from lowmed.config import TrainConfig
from lowmed.contracts import RunDir, TuningRecord
from lowmed.errors import LowmedError
from lowmed.training.features import SharedCaches
from lowmed.training.loop import TrialHooks
from lowmed.tuning import TuneSettings, TuningCell, cell_space, tune_cell
from tests.conftest import FAST

QUICK = {**FAST, "epochs": 3, "batch_size": 8}


def _space(tmp_path, tune: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tune))
    return path


def _tune_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def _test_paths(prepared: Path) -> set[str]:
    manifest = pd.read_csv(prepared / "manifest.csv")
    return {str((prepared / p).resolve()) for p in manifest.loc[manifest["split"] == "test", "path"]}


@pytest.fixture
def opened(monkeypatch):
    """Every image file PIL opens while recording is on."""
    real_open, seen = PIL.Image.open, {"on": False, "paths": set()}

    def recording_open(path, *args, **kwargs):
        if seen["on"] and isinstance(path, (str, os.PathLike)):
            seen["paths"].add(str(Path(path).resolve()))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    return seen


@pytest.mark.parametrize(
    "space, message",
    [
        ({"space": {"lrr": {"low": 0.001, "high": 0.01}}}, "space.lrr: unknown option; tunable options: "),
        ({"space": {"model": ["resnet18"]}}, "space.model: not tunable"),
        ({"space": {"lr": {"low": 0.01, "high": 0.001}}}, "space.lr: empty range [0.01, 0.001]; expected low < high"),
        ({"space": {"epochs": {"low": 1.5, "high": 4}}}, "space.epochs.low: 1.5; expected a whole number"),
        ({"space": {"head": []}}, "space.head: an empty list of choices"),
        ({"space": {"head": ["mlp", "conv"]}}, "space.head: 'conv' would not make a valid run: --head 'conv'"),
        ({"space": {"freeze_base": {"low": 0, "high": 1}}}, "space.freeze_base: a range for a bool option"),
        ({"space": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "a log range must start above 0"),
        ({"space": {"augment_strength": {"low": 0.0, "high": 2.0}}}, "2.0 would not make a valid run"),
        ({"space": {"lr": [0.001]}, "metric": "val_f1"}, "metric: 'val_f1'; expected one of val_loss"),
        ({"space": {"lr": [0.001]}, "trials": 0}, "trials: 0; expected a whole number of at least 1"),
        ({"space": {}}, "space: expected a mapping of options"),
        ({"space": {"lr": [0.001]}, "budget": 3}, "unknown key(s) budget"),
    ],
)
def test_a_bad_search_space_is_one_line_and_exit_2(space, message, separable, tmp_path, capsys):
    code, output = _tune_cli(capsys, separable, "--space", _space(tmp_path, space), "--out", tmp_path / "t")
    assert code == 2
    assert message in output and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "t").exists()  # refused before anything ran


def test_lowmed_tune_one_cell_resumes_and_writes_a_config_to_train(separable, tmp_path, capsys, opened):
    space = _space(tmp_path, {"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "head": ["mlp", "linear"]}})
    out = tmp_path / "cell"
    options = ["--per-class", 8, "--image-size", 32, "--trials", 3, "--out", out, "--quiet"]
    opened["on"] = True
    code, output = _tune_cli(capsys, separable, "--space", space, *options)
    opened["on"] = False
    assert code == 0, output
    assert opened["paths"] and not opened["paths"] & _test_paths(separable)  # trials never read the test split
    record = TuningRecord.read(out / "tuning.json")
    assert record.budget == 3 and [t["number"] for t in record.counted] == [0, 1, 2]
    assert set(record.chosen) == {"lr", "head"} and record.metric == "val_loss" and record.direction == "minimize"
    best = min(record.counted, key=lambda t: t["value"])
    assert record.best_trial == best["number"] and record.best_value == best["value"]
    assert "chosen: " in output and f"lowmed train --config {out / 'best-config.yaml'}" in output.replace("\n", "")
    for trial in record.trials:  # each trial a run dir of its own, its checkpoints removed afterwards
        run = RunDir(out / f"trial-{trial['number']:03d}")
        assert run.read_summary().tuning_trial == trial["number"] and not list(run.path.glob("*.pt"))
    config = TrainConfig.from_yaml(out / "best-config.yaml")
    assert (config.lr, config.head, config.monitor) == (record.chosen["lr"], record.chosen["head"], "val_loss")
    assert config.per_class == 8 and config.subset and config.out is None

    code, output = _tune_cli(capsys, separable, "--space", space, *options[:-5], "--trials", 4, "--out", out, "-q")
    assert code == 0, output
    again = TuningRecord.read(out / "tuning.json")  # a larger budget continues the same trials
    assert again.budget == 4 and again.trials[:3] == record.trials and len(again.counted) == 4
    assert again.trials[3].params["lr"] not in [t.params["lr"] for t in record.trials]  # new values, not trial 0's


def _tuning_stopped(separable, tmp_path, space: dict, when: str, stop: int) -> tuple[list[str], Path, subprocess.Popen]:
    """A `lowmed tune` of 3 trials in a subprocess, sent ``stop`` once the file ``when`` of the cell exists."""
    space = _space(tmp_path, {"space": space, "trials": 3})
    out = tmp_path / "cell"
    command = [sys.executable, "-m", "lowmed", "tune", str(separable), "--space", str(space), "--out", str(out)]
    command += ["--per-class", "8", "--image-size", "32", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / when).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(stop)
    return command, out, process


def test_a_killed_tuning_resumes_with_its_finished_trials_kept(separable, tmp_path):
    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    command, out, process = _tuning_stopped(separable, tmp_path, space, "trial-001/train.json", signal.SIGKILL)
    process.wait()
    first = RunDir(out / "trial-000").read_summary()
    assert first.completed and not (out / "tuning.json").exists()

    assert subprocess.run(command, capture_output=True).returncode == 0
    record = TuningRecord.read(out / "tuning.json")
    states = {t["number"]: (t["state"], t["counted"]) for t in record.trials}
    assert states[0] == ("complete", True) and states[1] == ("fail", False)
    assert [t["number"] for t in record.counted] == [0, 2, 3]
    assert record.trials[0]["value"] == first.best["value"]  # the finished trial was kept, not run again


def test_ctrl_c_stops_the_tuning_and_the_stopped_trial_is_not_counted(separable, tmp_path):
    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": [200]}
    # Ctrl-C once: the trial stops after its batch, and so does the tuning
    command, out, process = _tuning_stopped(separable, tmp_path, space, "trial-000/history.csv", signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert RunDir(out / "trial-000").read_summary().status == "interrupted"
    assert not (out / "trial-001").exists()

    assert subprocess.run(command, capture_output=True).returncode == 0
    record = TuningRecord.read(out / "tuning.json")
    assert (record.trials[0]["state"], record.trials[0]["counted"]) == ("fail", False)
    assert [t["number"] for t in record.counted] == [1, 2, 3]


def test_trials_reuse_the_frozen_features_and_train_as_without(trained_run, separable, tmp_path):
    """Two trials with the same values: the second reuses the first's caches and trains exactly as the first."""
    base = {**QUICK, "data": str(separable), "weights": str(trained_run), "fine_tune_epochs": 2, "fine_tune_layers": 2}
    settings = TuneSettings.from_dict({"space": {"lr": [0.001]}, "trials": 2, "pruner": "none"}, "tune")
    record = tune_cell(TuningCell("reuse", base, tmp_path / "reuse"), settings)
    assert [t["value"] for t in record.counted][0] == record.counted[1]["value"]
    first, second = (RunDir(tmp_path / "reuse" / f"trial-00{i}").read_summary() for i in (0, 1))
    assert not first.caches["frozen"]["reused"] and second.caches["frozen"]["reused"]
    assert second.caches["finetune"]["reused"] and second.caches["finetune"]["build_seconds"] == 0
    histories = [pd.read_csv(tmp_path / "reuse" / f"trial-00{i}" / "history.csv") for i in (0, 1)]
    columns = ["train_loss", "val_loss", "val_auroc"]
    pd.testing.assert_frame_equal(histories[0][columns], histories[1][columns])


def test_a_pruned_run_stops_there_and_is_no_run_to_compare(separable, tmp_path):
    hooks = TrialHooks(7, lambda row: row["epoch"] == 2, SharedCaches())
    summary = train(TrainConfig(data=str(separable), out=str(tmp_path / "t"), **QUICK), trial=hooks)
    assert summary.status == "pruned" and summary.epochs_run == 2 and summary.tuning_trial == 7
    assert "stopped after epoch 2" in summary.error


def _tuned_study(tmp_path, kermany, **changes) -> Path:
    """A study on the Kermany fixture at 6 images per class, with ``changes`` (arms, seeds, train, tune, ...)."""
    study = tmp_path / "study.yaml"
    values = {
        "name": "tuned",
        "out": str(tmp_path / "study"),
        "datasets": [{"name": "cxr", "data": str(kermany), "prepare": {"min_val_per_class": 4}}],
        "per_class": [6],
        **changes,
    }
    study.write_text(yaml.safe_dump(values))
    return study


def test_a_study_tunes_every_arm_with_the_same_budget_on_validation_only(kermany, tmp_path, opened, monkeypatch):
    study = _tuned_study(
        tmp_path,
        kermany,
        arms=[
            {"name": "A", "model": "simplecnn"},
            {"name": "A-linear", "model": "simplecnn", "options": {"head": "linear"}},
        ],
        seeds=[0, 1],
        train={**QUICK, "epochs": 2},
        tune={
            "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "fine_tune_lr": [1e-5, 1e-4]},
            "trials": 2,
        },
        evaluate={"bootstrap": 20},
        compare={"resamples": 20},
    )
    prepared = tmp_path / "study" / "data" / "cxr"

    def recording_tune_cell(*args, **kwargs):  # what the tuning reads, and only that
        opened["on"] = True
        try:
            return tune_cell(*args, **kwargs)
        finally:
            opened["on"] = False

    monkeypatch.setattr("lowmed.experiment.execute.tune_cell", recording_tune_cell)
    result = run_experiment(study)
    assert opened["paths"] and not opened["paths"] & _test_paths(prepared)
    assert [c.name for c in result.cells] == ["cxr-a-simplecnn-n6", "cxr-a-linear-simplecnn-n6"]
    records = [c.cell.record for c in result.cells]
    assert [len(r.counted) for r in records] == [2, 2]  # the same budget for every arm
    for record in records:  # scratch arms train in one phase: no fine-tuning value is searched or claimed
        assert list(record.space) == ["lr"] and list(record.chosen) == ["lr"]
    for run in result.runs:  # every seed takes its cell's values (tuned on seed 0), recorded in config.yaml
        record = next(c.cell.record for c in result.cells if c is run.tuning)
        config = TrainConfig.from_yaml(RunDir(run.run_dir).config)
        assert config.lr == record.chosen["lr"] and config.monitor == record.metric
        assert RunDir(run.run_dir).read_tuning() == record
    compare_md = (tmp_path / "study" / "compare.md").read_text()
    assert "Recipes: every arm tuned with the same budget (2 trials per cell, chosen by val_loss" in compare_md
    assert "tuned: lr=" in compare_md
    report = Path(result.report).read_text()
    assert "## Tuning" in report and "The test split was never read while tuning" in report
    assert len(result.comparison.runs) == 4  # the trials are no runs of the comparison

    again = run_experiment(study)  # resumed: nothing tuned or trained again
    assert {c.status for c in again.cells} == {"done before"} and {r.status for r in again.runs} == {"done before"}


@pytest.mark.parametrize(
    "base, searched",
    [
        ({"model": "resnet18", "weights": "imagenet"}, ["lr", "fine_tune_lr"]),
        ({"model": "simplecnn"}, ["lr"]),
        ({"model": "resnet18", "weights": "none"}, ["lr"]),
        ({"model": "resnet18", "weights": "imagenet", "freeze_base": False}, ["lr"]),
    ],
)
def test_a_one_phase_cell_searches_no_fine_tuning_option(base, searched):
    settings = TuneSettings.from_dict(
        {"space": {"lr": {"low": 1e-4, "high": 1e-2}, "fine_tune_lr": [1e-5, 1e-4]}}, "tune"
    )
    assert [p.name for p in cell_space(settings, base)] == searched


def test_a_bad_tune_mapping_in_a_study_names_the_field(kermany, tmp_path):
    study = tmp_path / "study.yaml"
    values = {
        "datasets": [{"name": "cxr", "data": str(kermany)}],
        "arms": [{"name": "A", "model": "simplecnn", "options": {"epochs": 5}}],
        "per_class": [6],
        "seeds": [0],
        "tune": {"space": {"epochs": {"low": 0, "high": 4}}},
    }
    study.write_text(yaml.safe_dump(values))
    with pytest.raises(LowmedError, match=r"study.yaml: tune.space.epochs: 0 would not make a valid run"):
        run_experiment(study, dry_run=True)


def test_a_shared_storage_url_holds_the_trials_and_hides_its_password(separable, tmp_path, capsys):
    import optuna

    shared = tmp_path / "shared.db"
    space = _space(tmp_path, {"space": {"lr": [0.001, 0.003]}, "trials": 2, "storage": f"sqlite:///{shared}"})
    code, output = _tune_cli(
        capsys, separable, "--space", space, "--per-class", 6, "--image-size", 32, "--out", tmp_path / "cell", "-q"
    )
    assert code == 0, output
    record = TuningRecord.read(tmp_path / "cell" / "tuning.json")
    assert record.storage == f"sqlite:///{shared}" and not (tmp_path / "cell" / "optuna.db").exists()
    trials = optuna.load_study(study_name=record.optuna_study, storage=record.storage).trials
    assert [t.params["lr"] for t in trials] == [t["params"]["lr"] for t in record.trials]

    url = "postgresql://lowmed:s3cret@127.0.0.1:1/lowmed"
    code, output = _tune_cli(capsys, separable, "--space", space, "--storage", url, "--out", tmp_path / "other")
    assert code == 2 and "tuning storage postgresql://lowmed:***@127.0.0.1:1/lowmed: cannot open it" in output
    assert "s3cret" not in output


def test_lowmed_tune_refuses_a_folder_that_is_not_a_tuning_folder(separable, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    space = _space(tmp_path, {"space": {"lr": [0.001]}, "trials": 1})
    code, output = _tune_cli(capsys, separable, "--space", space, "--out", tmp_path / "taken")
    assert code == 2 and "exists and is not a tuning folder" in output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_a_tuned_run_is_not_reported_under_values_its_cell_no_longer_chooses(kermany, tmp_path):
    """The cell is tuned again over another space and chooses another lr: the run trained with the old one is
    refused by name, not reported as if trained with the new."""

    def write(space: dict) -> Path:
        return _tuned_study(
            tmp_path,
            kermany,
            arms=[{"name": "A", "model": "simplecnn"}],
            seeds=[0],
            train={**QUICK, "epochs": 1},
            tune={"space": space, "trials": 1, "pruner": "none"},
            evaluate={"bootstrap": 0},
        )

    first = run_experiment(write({"lr": [0.001]}))
    assert first.runs[0].status == "trained" and first.cells[0].cell.record.chosen == {"lr": 0.001}
    with pytest.raises(LowmedError, match=r"cxr-a-simplecnn-n6-seed0 was trained with lr 0.001 \(now 0.002\)"):
        run_experiment(write({"lr": [0.002]}))


def test_a_tuned_study_continues_from_its_published_record_with_its_cells_tuned(kermany, tmp_path, monkeypatch):
    """On a machine with the record only, each cell's record comes back with its runs: nothing is tuned or trained
    again, and a seed added later takes the values the cell chose on the first machine."""
    values = {
        "arms": [{"name": "A", "model": "simplecnn"}],
        "seeds": [0],
        "train": {**QUICK, "epochs": 2},
        "tune": {"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 2},
        "evaluate": {"bootstrap": 20},
        "compare": {"resamples": 20},
        "publish": str(tmp_path / "published"),
    }
    study = _tuned_study(tmp_path, kermany, **values)
    first = run_experiment(study)
    chosen = first.cells[0].cell.record.chosen
    shutil.rmtree(tmp_path / "study")

    def refuse(*args, **kwargs):
        raise AssertionError("tuned or trained again")

    preview = run_experiment(study, dry_run=True)
    assert [(c.status, c.detail) for c in preview.cells] == [("done before", "in the published record")]
    monkeypatch.setattr("lowmed.tuning._run_trial", refuse)
    monkeypatch.setattr("lowmed.experiment.execute.train", refuse)
    again = run_experiment(study)
    assert [c.status for c in again.cells] == ["done before"] and [r.status for r in again.runs] == ["done before"]

    monkeypatch.undo()
    study.write_text(yaml.safe_dump({**yaml.safe_load(study.read_text()), "seeds": [0, 1]}))
    more = run_experiment(study)
    assert [r.status for r in more.runs] == ["done before", "trained"]
    assert TrainConfig.from_yaml(RunDir(more.runs[1].run_dir).config).lr == chosen["lr"]
