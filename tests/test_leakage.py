"""No test image shapes a pretrained model: a study's pretraining data and the run behind --weights RUN_DIR are
compared with the target image by image (the self-supervised corpus: tests/test_selfsupervised.py)."""

import shutil

import pytest
import yaml

from lowmed import prepare, train
from lowmed.cli import main
from lowmed.config import TrainConfig
from lowmed.contracts import TrainSummary
from lowmed.data.leakage import CHECKED_NONE
from tests.conftest import FAST
from tests.test_hostile_inputs import refused


@pytest.fixture(scope="module")
def on_its_test_images(separable, tmp_path_factory):
    """A run trained on a dataset made of the separable set's test folder: it has seen every target test image."""
    root = tmp_path_factory.mktemp("leaky")
    source = shutil.copytree(separable.parent / "src" / "test", root / "src")
    dataset = prepare(source, root / "prepared", min_val_per_class=2, test_fraction=0.2)
    run = root / "run"
    train(TrainConfig(data=str(dataset.root), epochs=1, out=str(run), **FAST))
    return run


def test_weights_from_a_run_that_trained_on_the_targets_test_images_are_refused(
    separable, on_its_test_images, tmp_path, capsys
):
    out = tmp_path / "finetuned"
    line = refused(capsys, ["train", separable, "--weights", on_its_test_images, "--out", out, "--epochs", "1"])
    assert f"--weights {on_its_test_images} saw images of the val or test split of" in line
    assert not out.exists()


def test_weights_from_a_run_on_the_same_dataset_are_checked_and_kept(separable, trained_run, tmp_path):
    """Its val split chose checkpoints in both stages, as a val split does: no leak."""
    out = tmp_path / "finetuned"
    config = TrainConfig(data=str(separable), weights=str(trained_run), epochs=1, out=str(out), **FAST)
    summary = train(config)
    assert summary.pretraining_overlap["status"] == CHECKED_NONE
    assert TrainSummary.read(out / "train.json").pretraining_overlap["kept_from_train"] > 0


def _study(path, out, target, pretraining):
    path.write_text(
        yaml.safe_dump(
            {
                "name": "leaky",
                "out": str(out),
                "datasets": [{"name": "cxr", "data": str(target), "prepare": {"min_val_per_class": 4}}],
                "arms": [
                    {"name": "A", "model": "simplecnn"},
                    {
                        "name": "C",
                        "model": "simplecnn",
                        "pretrain": {
                            "dataset": {"name": "site", "data": str(pretraining), "prepare": {"min_val_per_class": 2}},
                            "epochs": 1,
                        },
                    },
                ],
                "per_class": [5],
                "seeds": [0],
                "train": {"image_size": 32, "batch_size": 8, "epochs": 1},
            }
        )
    )
    return path


def test_a_study_that_pretrains_on_its_targets_test_folder_is_refused_before_anything_trains(kermany, tmp_path, capsys):
    study = _study(tmp_path / "study.yaml", tmp_path / "out", kermany, kermany / "test")
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", str(study), "--dry-run"])
    assert exit_info.value.code == 0
    assert "share folders" in " ".join(capsys.readouterr().err.split())  # said, and checked when it runs
    line = refused(capsys, ["experiment", study])
    assert "arm C's pretraining data (site) saw images of the val or test split" in line
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "pretrain").exists()
    line = refused(capsys, ["experiment", study, "--dry-run"])  # prepared now: the dry run checks it too
    assert "arm C's pretraining data (site) saw images" in line
