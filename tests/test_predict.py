"""lowmed predict: new images through a run's own preprocessing, with its saved threshold, a plain CSV and its
provenance beside it."""

import shutil

import numpy as np
import pandas as pd
import pytest

from lowmed import evaluate, predict
from lowmed.contracts import PredictionRecord
from lowmed.data.manifest import PreparedDataset
from lowmed.io import sha256_file
from tests.factory import write_broken_files
from tests.test_cli import run_cli


@pytest.fixture
def run(trained_run, tmp_path):
    """A copy of the session's trained run, so that evaluations written here stay here."""
    return shutil.copytree(trained_run, tmp_path / "run")


@pytest.fixture
def test_images(separable):
    dataset = PreparedDataset.load(separable)
    return dataset.image_paths(dataset.split("test"))


def _read(path):
    return pd.read_csv(path, dtype={"error": str, "predicted": str}).fillna({"error": "", "predicted": ""})


def test_files_folders_and_a_csv_match_evaluate_and_a_broken_file_is_listed(run, test_images, tmp_path, capsys):
    report = evaluate(run, bootstrap=0)  # threshold 0.5, saved with eval/test
    broken = write_broken_files(tmp_path / "broken")
    pd.DataFrame({"path": [str(p) for p in test_images[2:]]}).to_csv(tmp_path / "list.csv", index=False)
    out = tmp_path / "p.csv"
    code, stdout, err = run_cli(
        capsys, "predict", str(run), str(test_images[0]), str(tmp_path / "broken"), str(tmp_path / "list.csv"),
        "--out", str(out), "-q",
    )  # fmt: skip
    assert code in (0, None), err
    table = _read(out)
    assert len(table) == 1 + 3 + len(test_images) - 2
    failed = table[table["error"] != ""]
    assert sorted(failed["path"]) == sorted(str(p) for p in broken.values())
    assert "3 of" in err and "could not be read" in err
    assert (failed["predicted"] == "").all()

    evaluated = pd.read_csv(f"{report.out}/predictions.csv").set_index("path")["prob:PNEUMONIA"]
    predicted = table[table["error"] == ""].set_index("path")["prob:PNEUMONIA"]
    assert len(predicted) == len(test_images) - 1
    for path, probability in predicted.items():  # the manifest's paths are relative to the prepared dir
        key = next(k for k in evaluated.index if path.endswith(k))
        assert probability == pytest.approx(evaluated[key], abs=1e-5)

    assert list(pd.read_csv(out).columns)[:2] == ["path", "prob:NORMAL"]  # a plain CSV, pandas' defaults read it
    record = PredictionRecord.read(PredictionRecord.beside(out))
    assert record.checkpoint["sha256"] == sha256_file(run / "best.pt") and record.table == out.name
    assert record.threshold == 0.5 and record.threshold_source == "fixed; saved with run/eval/test"
    assert record.images == len(table) and record.unreadable == 3
    assert "predicted, 3 unreadable" in stdout
    again = predict(run, [out], out=out.with_name("again.csv"))  # its own output back as input
    assert list(again.table["path"]) == list(table["path"])


def test_the_saved_youden_threshold_is_used_and_a_given_one_wins(run, test_images, tmp_path):
    report = evaluate(run, threshold="youden", bootstrap=0)
    result = predict(run, test_images, out=tmp_path / "a.csv")
    assert result.threshold == pytest.approx(report.threshold)
    assert result.threshold_source.startswith("youden on the val split")
    table = _read(tmp_path / "a.csv")
    expected = np.where(table["prob:PNEUMONIA"] >= report.threshold, "PNEUMONIA", "NORMAL")
    assert (table["predicted"] == expected).all()
    assert table["threshold"].to_numpy() == pytest.approx(np.full(len(table), report.threshold))

    given = predict(run, test_images, out=tmp_path / "b.csv", threshold=0.9)
    assert given.threshold == 0.9 and given.threshold_source == "--threshold"


def test_without_a_saved_evaluation_the_threshold_is_one_half_and_says_so(run, test_images, tmp_path):
    shutil.rmtree(run / "eval", ignore_errors=True)
    result = predict(run, test_images[:3], out=tmp_path / "p.csv")
    assert result.threshold == 0.5 and "no saved evaluation of best.pt" in result.threshold_source


@pytest.mark.parametrize(
    "case, message",
    [
        ("nothing readable", "none of the 3 input files could be read"),
        ("output exists", "exists; give another name, or --overwrite"),
        ("csv without the column", "no column 'path'; it has 'file'"),
        ("missing input", "no such file or folder"),
        ("bad threshold", "--threshold 1.5: expected a probability"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, message, run, test_images, tmp_path, capsys):
    out = tmp_path / "p.csv"
    args = [str(test_images[0])]
    if case == "nothing readable":
        args = [str(p) for p in write_broken_files(tmp_path / "broken").values()]
    elif case == "output exists":
        out.write_text("mine")
    elif case == "csv without the column":
        pd.DataFrame({"file": [str(test_images[0])]}).to_csv(tmp_path / "list.csv", index=False)
        args = [str(tmp_path / "list.csv")]
    elif case == "missing input":
        args = [str(tmp_path / "nowhere.png")]
    elif case == "bad threshold":
        args += ["--threshold", "1.5"]
    code, _, err = run_cli(capsys, "predict", str(run), *args, "--out", str(out), "-q")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or out.read_text() == "mine"


def test_a_multi_label_run_calls_each_finding_at_its_own_youden_threshold(chexpert, tmp_path, capsys):
    from lowmed import prepare, train
    from lowmed.config import TrainConfig
    from tests.conftest import FAST

    data = prepare(chexpert, tmp_path / "prepared").root
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), epochs=1, out=str(run), **FAST))
    report = evaluate(run, threshold="youden", bootstrap=0)
    dataset = PreparedDataset.load(data)
    images = dataset.image_paths(dataset.split("test"))[:6]
    code, stdout, err = run_cli(capsys, "predict", str(run), *map(str, images), "--out", str(tmp_path / "p.csv"))
    assert code in (0, None), err
    table = _read(tmp_path / "p.csv")
    for finding, cut in zip(report.classes, report.threshold):
        assert (table[f"pred:{finding}"] == (table[f"prob:{finding}"] >= cut).astype(int)).all()
    assert "youden per finding" in stdout


def test_a_moved_run_still_finds_its_saved_threshold(run, test_images, tmp_path):
    report = evaluate(run, threshold="youden", bootstrap=0)
    moved = shutil.move(run, tmp_path / "moved")
    result = predict(moved, test_images[:3], out=tmp_path / "p.csv")
    assert result.threshold == pytest.approx(report.threshold)
