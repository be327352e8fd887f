"""No test image shapes a pretrained model: a study's pretraining data and the run behind --weights RUN_DIR are
compared with the target image by image (the self-supervised corpus: tests/test_selfsupervised.py)."""

import shutil

import pytest
import yaml

from lowmed import prepare, subsample, train
from lowmed.cli import main
from lowmed.config import TrainConfig
from lowmed.contracts import TrainSummary
from lowmed.data.leakage import CHECKED_NONE, guard_pretraining
from lowmed.errors import LowmedError
from tests.conftest import FAST
from tests.factory import make_kermany, write_image
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


def test_weights_from_a_run_on_the_same_dataset_are_checked_and_kept(
    separable, trained_run, tmp_path, capsys, monkeypatch
):
    """Its val split chose checkpoints in both stages, as a val split does: no leak. The train images it shares are
    said once per process, as a study's runs from one stage would repeat it."""
    monkeypatch.setattr("lowmed.console._warned", set())  # whatever an earlier test in this process was told
    for name in ("finetuned", "again"):
        config = TrainConfig(data=str(separable), weights=str(trained_run), epochs=1, out=str(tmp_path / name), **FAST)
        summary = train(config)
        assert summary.pretraining_overlap["status"] == CHECKED_NONE
        assert TrainSummary.read(tmp_path / name / "train.json").pretraining_overlap["kept_from_train"] > 0
    assert capsys.readouterr().err.count(f"--weights {trained_run} holds") == 1


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


def test_a_patient_id_the_targets_own_folders_reuse_is_no_leak_but_a_foreign_image_with_it_is(tmp_path):
    """Kermany's Kaggle folders reuse ``personN`` between train and test. The target's own train and val images,
    choosing a pretraining's checkpoint as they choose the target run's, add nothing the target does not already do;
    an image from elsewhere under a test patient's id is refused."""
    source = make_kermany(tmp_path / "chest_xray")
    reused = [
        path.name.split("_")[0] for split in ("val", "train") for path in (source / split / "PNEUMONIA").iterdir()
    ]
    for k, patient in enumerate(reused[:12]):  # e.g. person12: test images under val and train patients' ids
        write_image(source / "test" / "PNEUMONIA" / f"{patient}_virus_{9000 + k}.jpeg", 9000 + k, 32, label=1)
    target = prepare(source, tmp_path / "prepared", min_val_per_class=4)
    assert set(target.split("val")["group"]) & set(target.split("test")["group"])  # the folders' own reuse
    monitored = guard_pretraining(
        target.manifest.iloc[:0], target, "a stage monitored on the target", selected=target.split("val")
    )
    assert monitored.kept_from_train == 0
    subset = subsample(target.root, 2, seed=0).dataset  # a study's target: train images it left out chose too
    guard_pretraining(
        target.manifest.iloc[:0],
        subset,
        "a stage monitored on the whole dataset",
        selected=target.manifest[target.manifest["split"] != "test"],
    )

    elsewhere = target.split("val").assign(sha1="0" * 40)  # same patient ids, other images
    with pytest.raises(LowmedError, match="its checkpoint was chosen with"):
        guard_pretraining(target.manifest.iloc[:0], target, "a run on other images", selected=elsewhere)
