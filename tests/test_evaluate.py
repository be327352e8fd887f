"""Evaluation: numbers agree with scikit-learn, intervals behave, thresholds never see the test set."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as sk

from lowmed import evaluate, evaluate_model, prepare, train
from lowmed.config import TrainConfig
from lowmed.data.loading import decode_square, decoded_batches
from lowmed.errors import LowmedError
from lowmed.evaluation.evaluate import _youden
from lowmed.evaluation.metrics import (
    auroc,
    average_precision,
    binary_auroc,
    compute_metrics,
    expected_calibration_error,
    resampled_auroc,
    resampled_ece,
    resampled_recalls,
)
from lowmed.evaluation.stats import bootstrap_ci, group_bootstrap_indices
from tests.conftest import FAST
from tests.factory import make_kermany, write_broken_files, write_image


def random_binary(n, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
    score = np.round(score, 2)  # ties, as real models produce
    return y, np.stack([1 - score, score], axis=1)


def test_binary_metrics_match_scikit_learn():
    y, probs = random_binary(400)
    result = compute_metrics("binary", ["neg", "pos"], y, probs, threshold=0.4)
    m = result.metrics
    predicted = (probs[:, 1] >= 0.4).astype(int)
    tn, fp, fn, tp = sk.confusion_matrix(y, predicted).ravel()
    assert m["auroc"] == pytest.approx(sk.roc_auc_score(y, probs[:, 1]))
    assert m["auprc"] == pytest.approx(sk.average_precision_score(y, probs[:, 1]))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, predicted))
    assert m["sensitivity"] == pytest.approx(sk.recall_score(y, predicted))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(sk.precision_score(y, predicted))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["f1"] == pytest.approx(sk.f1_score(y, predicted))
    assert m["brier"] == pytest.approx(sk.brier_score_loss(y, probs[:, 1]))
    assert result.confusion_matrix == [[tn, fp], [fn, tp]]


def test_multiclass_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (300, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = compute_metrics("multiclass", list("abcd"), y, probs)
    predicted = probs.argmax(axis=1)
    m = result.metrics
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, predicted))
    assert m["macro_auroc"] == pytest.approx(sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for average in ("macro", "weighted"):
        assert m[f"{average}_f1"] == pytest.approx(sk.f1_score(y, predicted, average=average))
        assert m[f"{average}_precision"] == pytest.approx(sk.precision_score(y, predicted, average=average))
        assert m[f"{average}_recall"] == pytest.approx(sk.recall_score(y, predicted, average=average))
    per_class_f1 = sk.f1_score(y, predicted, average=None)
    assert [result.per_class[c]["f1"] for c in "abcd"] == pytest.approx(per_class_f1)
    assert result.confusion_matrix == sk.confusion_matrix(y, predicted).tolist()


def test_multilabel_metrics_leave_out_masked_labels():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, (200, 3)).astype(float)
    probs = np.clip(targets * 0.6 + rng.uniform(0, 0.5, (200, 3)), 0, 1)
    mask = (rng.random((200, 3)) > 0.2).astype(float)
    garbage = targets.copy()
    garbage[mask == 0] = 1 - garbage[mask == 0]  # what sits under the mask must not matter
    result = compute_metrics("multilabel", ["x", "y", "z"], garbage, probs, mask)
    for k, name in enumerate("xyz"):
        keep = mask[:, k] > 0
        assert result.per_class[name]["auroc"] == pytest.approx(sk.roc_auc_score(targets[keep, k], probs[keep, k]))
        assert result.per_class[name]["auprc"] == pytest.approx(
            sk.average_precision_score(targets[keep, k], probs[keep, k])
        )
    assert result.metrics["mean_auroc"] == pytest.approx(np.mean([result.per_class[c]["auroc"] for c in "xyz"]))


@pytest.mark.parametrize("task, classes", [("binary", 2), ("multiclass", 4)])
def test_metrics_on_all_resamples_at_once_are_each_resamples_own(task, classes):
    """The comparison scores every resample at once; each value must be the one that resample alone gives: the AUROC
    bit for bit (ties, a resample short of a class, one holding a single class), the recalls and calibration too."""
    rng = np.random.default_rng(1)
    targets = rng.integers(0, classes, 60)
    probs = rng.dirichlet(np.ones(classes), 60).round(1)  # coarse: many tied scores
    predicted = probs.argmax(axis=1)
    counts = rng.poisson(1.0, (40, 60))
    counts[0, targets != 0] = 0  # one class only
    counts[1, targets == classes - 1] = 0  # a class missing
    counts[2] = 1  # the whole set
    for row, value in zip(counts, resampled_auroc(task, targets, probs, counts)):
        drawn = np.repeat(np.arange(60), row)
        expected = auroc(task, targets[drawn], probs[drawn])
        assert value == expected or (np.isnan(value) and np.isnan(expected))
    recalls = resampled_recalls(targets, predicted, classes, counts)
    ece = resampled_ece(probs.max(axis=1), predicted == targets, counts)
    for row, row_recalls, row_ece in zip(counts, recalls, ece):
        drawn = np.repeat(np.arange(60), row)
        t, p = targets[drawn], predicted[drawn]
        expected = [np.mean(p[t == k] == k) if np.any(t == k) else np.nan for k in range(classes)]
        np.testing.assert_array_equal(row_recalls, expected)
        assert row_ece == pytest.approx(expected_calibration_error(probs[drawn].max(axis=1), p == t), abs=1e-12)


def test_auroc_and_ap_undefined_without_both_outcomes():
    assert np.isnan(binary_auroc(np.ones(5, dtype=int), np.linspace(0, 1, 5)))
    assert np.isnan(average_precision(np.zeros(5, dtype=int), np.linspace(0, 1, 5)))


def test_group_bootstrap_draws_whole_groups_per_stratum():
    groups = np.repeat([f"p{i}" for i in range(30)], 3)  # 30 patients, 3 images each
    strata = np.repeat(np.arange(30) % 2, 3)
    for indices in group_bootstrap_indices(groups, strata, 20, seed=0):
        drawn = pd.Series(groups[indices]).value_counts()
        assert (drawn % 3 == 0).all()  # every drawn patient comes with all three images
        assert len(indices) == 90  # 15 patients per stratum, drawn 15 times each
        assert sum(int(g[1:]) % 2 for g in groups[indices]) == 45  # 15 odd patients x 3 images: strata kept


def test_intervals_contain_the_estimate_and_narrow_as_n_grows():
    widths = []
    for n in (100, 1600):
        y, probs = random_binary(n, seed=3)
        point = binary_auroc(y, probs[:, 1])
        ci = bootstrap_ci(
            lambda idx, y=y, probs=probs: {"auroc": binary_auroc(y[idx], probs[idx, 1])}, np.arange(n), y, 400, seed=0
        )
        low, high = ci["auroc"]
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) = 1/4


def test_youden_threshold():
    y = np.array([0, 0, 1, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.7, 0.9])
    assert _youden(y, score) == pytest.approx(0.4)  # sensitivity 3/4, specificity 1: J = 0.75 is the maximum


def test_evaluate_a_trained_run_end_to_end(trained_run):
    before = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    report = evaluate(trained_run, bootstrap=200)
    folder = trained_run / "eval" / "test"
    assert {p.name for p in folder.iterdir()} == {
        "metrics.json",
        "metrics.csv",
        "predictions.csv",
        "roc.png",
        "pr.png",
        "confusion.png",
        "reliability.png",
    }
    saved = json.loads((folder / "metrics.json").read_text())
    assert {"task", "split", "n", "classes", "threshold", "metrics", "ci95", "per_class", "confusion_matrix"} <= set(
        saved
    )
    assert saved["n"] == 20 and saved["threshold"] == 0.5 and saved["bootstrap"]["unit"] == "patient"
    predictions = pd.read_csv(folder / "predictions.csv")
    y = (predictions["label"] == "PNEUMONIA").astype(int)
    assert report["metrics"]["auroc"] == pytest.approx(sk.roc_auc_score(y, predictions["prob:PNEUMONIA"]))
    assert report["metrics"]["accuracy"] == pytest.approx(
        sk.accuracy_score(predictions["label"], predictions["predicted"])
    )
    for name, (low, high) in saved["ci95"].items():
        value = saved["metrics"][name]
        if value is not None:  # undefined metrics (e.g. precision with no positive call) are null
            assert low - 1e-9 <= value <= high + 1e-9, name
    for png in folder.glob("*.png"):
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG"
    evaluate(trained_run, bootstrap=10)  # a re-run replaces its own outputs
    assert {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()} == before  # training files untouched


def test_youden_threshold_comes_from_val_only(trained_run, tmp_path):
    report = evaluate(trained_run, threshold="youden", bootstrap=0, out=tmp_path / "test")
    evaluate(trained_run, split="val", bootstrap=0, out=tmp_path / "val")
    val = pd.read_csv(tmp_path / "val" / "predictions.csv")
    expected = _youden((val["label"] == "PNEUMONIA").to_numpy().astype(int), val["prob:PNEUMONIA"].to_numpy())
    assert report["threshold"] == pytest.approx(expected)
    assert report["threshold_source"] == "youden on the val split, applied unchanged"


def test_multiclass_and_multilabel_runs_evaluate(ham, chexpert, tmp_path):
    for name, source in (("ham", ham), ("cx", chexpert)):
        data = prepare(source, tmp_path / name).root
        train(TrainConfig(data=str(data), epochs=1, out=str(tmp_path / f"run-{name}"), **FAST))
        report = evaluate(tmp_path / f"run-{name}", bootstrap=50)
        folder = tmp_path / f"run-{name}" / "eval" / "test"
        assert (folder / "roc.png").is_file() and (folder / "reliability.png").is_file()
        assert report.bootstrap["unit"] == {"ham": "lesion", "cx": "patient"}[name]  # what the resampled groups are
        if name == "ham":
            assert "macro_auroc" in report["ci95"] and (folder / "confusion.png").is_file()
        else:
            assert "mean_auroc" in report["metrics"] and not (folder / "confusion.png").exists()
            assert "auroc_ci95" in next(iter(report["per_class"].values()))


def test_seed_project_evaluate_model(trained_run, separable):
    results = evaluate_model(
        model_path=trained_run / "best.pt",
        dataset_root=separable,
        model_name="simplecnn",
        split="test",
        bootstrap=20,
    )
    assert 0 <= results["metrics"]["accuracy"] <= 1 and "f1" in results["metrics"]
    assert "metrics" in results and "ci95" in results and dict(results)["split"] == "test"
    assert {"task", "n", "classes", "threshold"} <= set(results.keys())
    with pytest.raises(LowmedError, match="trained as simplecnn, not vgg19"):
        evaluate_model(model_path=trained_run / "best.pt", dataset_root=separable, model_name="vgg19")


def test_external_data_must_share_the_classes(trained_run, ham, tmp_path):
    other = prepare(ham, tmp_path / "ham").root
    with pytest.raises(LowmedError, match=r"are not among the model.s \(NORMAL, PNEUMONIA\)"):
        evaluate(trained_run, data=other)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"threshold": "1.5"}, "--threshold 1.5: expected a probability between 0 and 1"),
        ({"threshold": "median"}, "--threshold 'median': expected a probability, or youden"),
        ({"split": "holdout"}, "--split 'holdout': expected test, val, train or all"),
        ({"checkpoint": "/no/such.pt"}, "/no/such.pt: no such checkpoint"),
        ({"batch_size": 0}, "--batch-size 0: expected at least 1 image per forward pass"),
    ],
)
def test_bad_evaluate_options(trained_run, options, message):
    with pytest.raises(LowmedError, match=message):
        evaluate(trained_run, **options)


def test_cpu_evaluation_batches_default_to_16(trained_run, tmp_path, monkeypatch):
    from lowmed.evaluation import evaluate as evaluate_module

    sizes = []
    real = evaluate_module.predict_files
    monkeypatch.setattr(evaluate_module, "predict_files", lambda *a: sizes.append(a[6]) or real(*a))
    evaluate(trained_run, out=tmp_path / "default", bootstrap=0, device="cpu")
    evaluate(trained_run, out=tmp_path / "given", bootstrap=0, device="cpu", batch_size=8)
    assert sizes == [16, 8]


def test_decoded_batches_keep_order_and_leave_out_unreadable_files(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(7)]
    broken = write_broken_files(tmp_path / "broken")
    paths[3] = broken["text"]
    paths[5] = tmp_path / "gone.png"
    batches = list(decoded_batches(paths, 32, batch_size=3))
    assert [rows for _, rows in batches] == [[0, 1, 2], [4], [6]]
    assert [tuple(images.shape) for images, _ in batches] == [(3, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32)]
    assert torch.equal(batches[2][0][0], decode_square(paths[6], 32))


def test_evaluation_leaves_out_test_images_gone_since_training(tmp_path, capsys):
    counts = {"train": {"NORMAL": 12, "PNEUMONIA": 12}, "test": {"NORMAL": 5, "PNEUMONIA": 5}}
    source = make_kermany(tmp_path / "src", counts)
    prepared = prepare(source, tmp_path / "prepared", min_val_per_class=3)
    train(TrainConfig(data=str(prepared.root), epochs=1, out=str(tmp_path / "run"), **FAST))
    gone = prepared.image_paths(prepared.split("test"))[2]
    gone.unlink()
    report = evaluate(tmp_path / "run", bootstrap=0)
    assert "1 test image(s) could not be read and are left out" in " ".join(capsys.readouterr())
    assert report["n"] == 9
    predictions = pd.read_csv(tmp_path / "run" / "eval" / "test" / "predictions.csv")
    assert len(predictions) == 9 and gone.name not in {Path(p).name for p in predictions["path"]}
