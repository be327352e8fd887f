"""Model D: self-supervised pretraining on unlabelled images — the corpus kind, the leakage guard, the stage, its
monitor, resume after kill -9, and the arm in a study."""

import builtins
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import PIL.Image
import pytest
import torch
import yaml

from lowmed import prepare, run_experiment
from lowmed.cli import main
from lowmed.config import PretrainConfig
from lowmed.contracts import RunDir, SelfSupervisedRecord, TrainSummary
from lowmed.errors import LowmedError
from lowmed.training.selfsupervised import pretrain
from tests.factory import write_image
from tests.test_reliability import lowmed, wait_for_epochs

QUICK = {"image_size": 32, "batch_size": 16, "epochs": 2}


@pytest.fixture(scope="module")
def target(tmp_path_factory, kermany):
    return prepare(kermany, tmp_path_factory.mktemp("target") / "cxr", min_val_per_class=4)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, kermany):
    """A clinic's archive: the target's train images without their labels, and more images of its own."""
    folder = tmp_path_factory.mktemp("archive") / "images"
    for k, path in enumerate(sorted((kermany / "train").rglob("*.jpeg"))):
        shutil.copy(path, folder / f"{k:04d}.jpeg" if folder.exists() else _made(folder) / f"{k:04d}.jpeg")
    for k in range(40):
        write_image(folder / f"extra-{k:03d}.png", 5000 + k, label=k % 2)
    return folder


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _test_paths(target) -> set[str]:
    return {str(path.resolve()) for path in target.image_paths(target.split("test"), prefer_cache=False)}


def test_a_folder_or_a_csv_of_images_without_labels_is_an_unlabelled_corpus(archive, tmp_path):
    corpus = prepare(archive, tmp_path / "folder")  # no class folders: detected
    assert corpus.role == "unlabelled" and corpus.task == "unlabelled" and len(corpus.manifest) == 120
    assert set(corpus.manifest["split"]) == {"train"} and "label" not in corpus.manifest
    assert corpus.info.counts == {"train": {"(unlabelled)": 120}}
    paths = pd.DataFrame({"path": [f"images/{p.name}" for p in sorted(archive.iterdir())][:30]})
    paths["group"] = [f"g{k // 3}" for k in range(30)]
    paths.to_csv(archive.parent / "archive.csv", index=False)
    listed = prepare(archive.parent / "archive.csv", tmp_path / "csv")  # no label column: detected
    assert listed.role == "unlabelled" and listed.info.groups == {"train": 10}
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "csv"), "--epochs", "1"])
    assert exit_info.value.code == 2  # nothing to learn labels from


def _corpus_csv(archive, folder, extra=None, group_of_own=None):
    """The archive as a CSV corpus in ``folder`` (``extra``: one more image copied in; ``group_of_own``: the group
    of one of the archive's own images, not one of the target's)."""
    shutil.copytree(archive, folder / "images")
    if extra is not None:
        shutil.copy(extra, folder / "images" / "copied-test-image.jpeg")  # same bytes
    rows = [
        {"path": f"images/{p.name}", "group": f"archive-{k}"} for k, p in enumerate(sorted(folder.glob("images/*")))
    ]
    if group_of_own is not None:
        rows[-1]["group"] = group_of_own  # extra-039.png
    pd.DataFrame(rows).to_csv(folder / "corpus.csv", index=False)
    return folder / "corpus.csv"


@pytest.mark.parametrize("planted", ["a copy of a test image", "another image of a test patient"])
def test_a_corpus_that_holds_the_targets_test_images_is_refused_by_content_or_by_group(
    target, archive, tmp_path, capsys, monkeypatch, planted
):
    monkeypatch.chdir(tmp_path)  # a raw corpus is prepared once into ./lowmed-data
    test_rows = target.split("test")
    if planted == "a copy of a test image":
        corpus = _corpus_csv(archive, tmp_path / "corpus", extra=test_rows["path"].iloc[0])
    else:
        corpus = _corpus_csv(archive, tmp_path / "corpus", group_of_own=test_rows["group"].iloc[-1])
    out = tmp_path / "ssl"
    arguments = ["pretrain", str(corpus), "--target", str(target.root), "--out", str(out), "--epochs", "1", "-q"]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--image-size", "32"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "saw images of the val or test split" in err and not out.exists()


def test_a_corpus_that_holds_the_targets_train_images_is_kept_and_said(target, archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = _corpus_csv(archive, tmp_path / "corpus")
    summary = pretrain(PretrainConfig(data=str(corpus), target=str(target.root), out=str(tmp_path / "ssl"), **QUICK))
    record = SelfSupervisedRecord.read(RunDir(tmp_path / "ssl").self_supervised)
    assert record.leakage.by_hash["test"] == record.leakage.by_group["test"] == 0
    assert record.leakage.kept_from_train == 80 and record.corpus["used"] == record.corpus["images"] == 120
    assert summary.kind == "self-supervised" and summary.status == "completed"
    with pytest.raises(LowmedError, match="--strict: the corpus .* holds 80 of the train images"):
        pretrain(
            PretrainConfig(data=str(corpus), target=str(target.root), out=str(tmp_path / "strict"), **QUICK),
            strict=True,
        )


def test_a_two_epoch_stage_trains_an_arm_and_its_monitor_never_opens_a_test_image(
    target, archive, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a raw corpus is prepared once into ./lowmed-data
    real_open, opened = PIL.Image.open, set()

    def recording_open(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)):
            opened.add(str(Path(path).resolve()))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    out = tmp_path / "simclr"
    summary = pretrain(PretrainConfig(data=str(archive), target=str(target.root), out=str(out), **QUICK))
    monkeypatch.setattr(PIL.Image, "open", real_open)
    assert opened and not opened & _test_paths(target)
    record = SelfSupervisedRecord.read(RunDir(out).self_supervised)
    assert [row["epoch"] for row in record.monitor["curve"]] == [0, 1, 2]  # 0: the starting weights
    assert record.best_epoch == summary.best["epoch"] and record.views == {
        "crop_min": 0.5,
        "rotation": 10.0,
        "intensity": 0.2,
        "flip": False,
    }
    assert record.corpus["manifest_sha256"] and record.target["monitor_split"] == "val"
    best = torch.load(out / "best.pt", weights_only=True)
    assert any(k.startswith("backbone.") for k in best["model"]) and best["config"]["method"] == "simclr"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                str(target.root),
                "--weights",
                str(out),
                "--per-class",
                "10",
                "--epochs",
                "2",
                "--fine-tune-epochs",
                "1",
                "--image-size",
                "32",
                "--out",
                str(tmp_path / "d"),
                "-q",
            ]
        )
    assert exit_info.value.code == 0
    trained = TrainSummary.read(tmp_path / "d" / "train.json")
    assert trained.arm == "D self-supervised" and trained.weights.matched == trained.weights.backbone_tensors


def test_kill_9_during_pretraining_then_resume_continues_the_same_run(target, archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = [
        "--target",
        target.root,
        "--method",
        "moco",
        "--queue",
        "64",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "4",
        "-q",
    ]
    whole = subprocess.run(
        lowmed("pretrain", archive, *flags, "--out", tmp_path / "whole"), capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen(
        lowmed("pretrain", archive, *flags, "--out", tmp_path / "killed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_epochs(tmp_path / "killed", 3, process)  # the start and two epochs
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert RunDir(tmp_path / "killed").read_summary().status == "killed"
    done = subprocess.run(lowmed("pretrain", "--resume", tmp_path / "killed", "-q"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed, uninterrupted = (pd.read_csv(tmp_path / name / "history.csv") for name in ("killed", "whole"))
    assert list(resumed["epoch"]) == list(range(5))  # no gap, no duplicate
    columns = ["epoch", "train_loss", "knn_auroc"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns], rtol=1e-4)


def test_a_study_arm_pretrains_on_unlabelled_images_and_is_reported(kermany, archive, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "model-d",
                "out": str(tmp_path / "out"),
                "publish": str(tmp_path / "published"),
                "datasets": [{"name": "cxr", "data": str(kermany), "prepare": {"min_val_per_class": 4}}],
                "arms": [
                    {"name": "A", "model": "simplecnn", "weights": "none"},
                    {
                        "name": "D",
                        "model": "simplecnn",
                        "pretrain": {
                            "method": "moco",
                            "dataset": {"name": "archive", "data": str(archive), "prepare": {"role": "unlabelled"}},
                            "init": "none",
                            "epochs": 2,
                            "batch_size": 16,
                            "queue": 64,
                        },
                    },
                ],
                "per_class": [5],
                "seeds": [0],
                "train": {"image_size": 32, "batch_size": 8, "epochs": 2, "fine_tune_epochs": 1, "lr": 0.001},
                "evaluate": {"bootstrap": 20},
                "compare": {"resamples": 20},
            }
        )
    )
    result = run_experiment(study)
    (stage,) = result.pretrain
    assert stage.status == "trained" and stage.self_supervised and stage.name.startswith("simplecnn-moco-on-archive")
    assert {run.status for run in result.runs} == {"trained"}
    d_run = next(run for run in result.runs if run.arm.name == "D")
    assert TrainSummary.read(d_run.run_dir / "train.json").weights.path == str(stage.run_dir.resolve())
    report = (tmp_path / "out" / "report.md").read_text()
    assert "pretrained self-supervised (moco) by lowmed on archive" in report
    assert "no image or patient/lesion group shared with its val or test split" in report
    published = tmp_path / "published" / "pretrain" / stage.name
    assert (published / "pretrain.json").is_file() and (published / "stage.json").is_file()
    assert json.loads((published / "pretrain.json").read_text())["method"] == "moco"


def test_a_missing_lightly_names_the_extra_in_one_line(target, archive, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_import = builtins.__import__

    def without_lightly(name, *args, **kwargs):
        if name.startswith("lightly"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_lightly)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", str(archive), "--target", str(target.root), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pip install 'lowmed[ssl]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_study_with_a_self_supervised_arm_is_refused_before_anything_runs_without_lightly(
    kermany, archive, tmp_path, monkeypatch
):
    import importlib.util

    from lowmed.errors import LowmedError
    from lowmed.experiment import load_study

    study = tmp_path / "study.yaml"
    arm = {
        "name": "D",
        "model": "simplecnn",
        "pretrain": {"method": "simclr", "dataset": {"name": "archive", "data": str(archive)}},
    }
    study.write_text(
        yaml.safe_dump(
            {
                "name": "d",
                "datasets": [{"name": "cxr", "data": str(kermany)}],
                "arms": [arm],
                "per_class": [5],
                "seeds": [0],
            }
        )
    )
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lightly" else real_find_spec(name, *a)
    )
    with pytest.raises(LowmedError, match=r"arm 'D': .*pip install 'lowmed\[ssl\]'"):
        load_study(study)


def test_a_stage_that_never_beats_its_starting_weights_says_its_arm_starts_from_them(
    target, archive, tmp_path, monkeypatch, capsys
):
    from lowmed.experiment.report import _stage_outcome
    from lowmed.training import selfsupervised

    real_monitor = selfsupervised._monitor

    def worse_every_epoch(run, val, task, epoch):
        return {**real_monitor(run, val, task, epoch), "knn_auroc": 0.9 - 0.1 * epoch}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(selfsupervised, "_monitor", worse_every_epoch)
    out = tmp_path / "ssl"
    summary = pretrain(PretrainConfig(data=str(archive), target=str(target.root), out=str(out), **QUICK))
    assert summary.best.epoch == 0 and "no epoch beat the starting weights" in capsys.readouterr().err
    assert "no epoch beat the starting weights, so the arm's runs start from them" in _stage_outcome(RunDir(out))
