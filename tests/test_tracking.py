"""--track mlflow and a study's track: logged to a real local MLflow store and read back through MLflow's own
client — params, per-epoch history, metrics with intervals, artefacts, one MLflow run per lowmed run."""

import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lowmed.cli import main
from lowmed.contracts import RunDir
from tests.test_hostile_inputs import refused


def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def lowmed(*arguments) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(argument) for argument in arguments])
    assert exit_info.value.code == 0


def mlflow_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_trained_then_evaluated_run_is_one_mlflow_run_with_its_history_metrics_and_files(
    separable, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artefacts beside the working folder
    uri, run = store(tmp_path), tmp_path / "run"
    flags = ["--track", "mlflow", "--track-uri", uri, "--track-experiment", "pneumonia"]
    lowmed("train", separable, "--epochs", "3", "--image-size", "32", "--out", run, "-q", *flags)
    lowmed("evaluate", run, "--bootstrap", "50", "-q", *flags)
    (logged,) = mlflow_runs(uri, "pneumonia")
    client = MlflowClient(uri)
    summary = RunDir(run).read_summary()
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params["epochs"] == "3" and logged.data.params["model"] == "simplecnn"
    assert logged.data.tags["lowmed.arm"] == summary.arm and logged.data.tags["lowmed.status"] == "completed"
    history = client.get_metric_history(logged.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]  # logged twice (train, evaluate), kept once
    report = RunDir(run).evaluation("test").read_report()
    metrics = logged.data.metrics
    assert metrics["test/auroc"] == pytest.approx(report.metrics["auroc"])
    assert [metrics["test/auroc_ci95_low"], metrics["test/auroc_ci95_high"]] == pytest.approx(report.ci95["auroc"])
    files = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.yaml", "train.json", "history.csv", "eval"} <= files
    assert "eval/test/metrics.json" in {a.path for a in client.list_artifacts(logged.info.run_id, "eval/test")}


def test_a_run_trained_again_is_a_new_mlflow_run(trained_run, separable, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, run = store(tmp_path), shutil.copytree(trained_run, tmp_path / "run")
    lowmed("evaluate", run, "--bootstrap", "0", "-q", "--track", "mlflow", "--track-uri", uri)
    flags = ["--epochs", "1", "--image-size", "32", "--out", run, "--overwrite", "-q"]
    lowmed("train", separable, *flags, "--track", "mlflow", "--track-uri", uri)
    assert len(mlflow_runs(uri, "lowmed")) == 2


def test_a_study_logs_each_run_and_its_own_tables(kermany, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = store(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "tracked",
                "out": str(tmp_path / "out"),
                "datasets": [{"name": "cxr", "data": str(kermany), "prepare": {"min_val_per_class": 4}}],
                "arms": [{"name": "A", "model": "simplecnn"}],
                "per_class": [5],
                "seeds": [0, 1],
                "train": {"image_size": 32, "batch_size": 8, "epochs": 1},
                "evaluate": {"bootstrap": 20},
                "compare": {"resamples": 20},
                "track": {"to": "mlflow", "uri": uri},
            }
        )
    )
    lowmed("experiment", study, "-q")
    logged = {run.info.run_name: run for run in mlflow_runs(uri, "tracked")}  # the experiment: the study's name
    assert set(logged) == {"cxr-a-simplecnn-n5-seed0", "cxr-a-simplecnn-n5-seed1", "tracked"}
    assert all("test/auroc" in run.data.metrics for name, run in logged.items() if name != "tracked")
    tables = {a.path for a in MlflowClient(uri).list_artifacts(logged["tracked"].info.run_id)}
    assert {"report.md", "compare.csv", "compare.md"} <= tables


def test_tracking_settings_are_checked_before_any_work(separable, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    line = refused(capsys, ["train", separable, "--track-uri", store(tmp_path), "--out", out])
    assert line == "error: --track-uri and --track-experiment need --track mlflow"
    assert "--track 'wandb': expected mlflow" in refused(capsys, ["train", separable, "--track", "wandb", "--out", out])
    line = refused(capsys, ["train", separable, "--track", "mlflow", "--track-uri", "nosuch://store", "--out", out])
    assert "--track-uri nosuch://store: MLflow cannot open this store" in line
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    line = refused(capsys, ["evaluate", separable, "--track", "mlflow"])
    assert "pip install 'lowmed[track]'" in line
    assert not out.exists()
