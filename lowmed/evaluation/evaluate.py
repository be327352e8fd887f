"""``lowmed evaluate``: a trained model on a split, with bootstrap intervals, calibration, plots and reports."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

import lowmed
from lowmed.config import check_seed
from lowmed.console import warn_or_refuse
from lowmed.contracts import EvalDir, EvalReport, RunDir
from lowmed.data.loading import label_tensors
from lowmed.data.manifest import PreparedDataset
from lowmed.data.subsample import load_or_prepare
from lowmed.device import ACCELERATOR_INFERENCE_BATCH, inference_batch_size
from lowmed.errors import LowmedError
from lowmed.evaluation.metrics import compute_metrics, counted_labels, expected_calibration_error, probabilities
from lowmed.evaluation.plots import plot_confusion, plot_pr, plot_reliability, plot_roc
from lowmed.evaluation.stats import bootstrap_ci
from lowmed.io import check_writable, staged_dir, write_csv
from lowmed.locking import own_run_dir
from lowmed.models.checkpoint import trained_model_name
from lowmed.models.forward import predict_files
from lowmed.models.trained import TrainedModel, run_status
from lowmed.saliency.explain import confident_cases, explain_cases
from lowmed.saliency.maps import check_method
from lowmed.tracking import TrackSettings, open_tracker


def evaluate(
    run_dir: str | os.PathLike | None = None,
    *,
    split: str = "test",
    data: str | os.PathLike | None = None,
    checkpoint: str = "best",
    threshold: str | float = 0.5,
    bootstrap: int = 2000,
    tta: bool = False,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    amp: bool | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    explain: str | None = None,
    explain_count: int = 5,
    class_map: dict[str, str] | None = None,
    strict: bool = False,
    track: TrackSettings | None = None,
) -> EvalReport:
    """Evaluate a run's checkpoint on ``split`` of its own prepared dataset (or of ``data``: external
    validation) and write ``metrics.json``, ``metrics.csv``, ``predictions.csv`` and PNG plots.

    ``data``: a prepared dataset, or a raw folder, prepared then as an external test set (every image a test image;
    ``./lowmed-data/<name>-external``). Its classes are matched to the model's by name, ignoring case, or by
    ``class_map`` (its class → the model's); a set that lacks some of the model's classes is evaluated over those
    it has (``absent_classes`` in metrics.json). ``split``: test, val, train, or all (every image).

    ``explain``: a saliency method (``lowmed.saliency.maps.METHODS``) applied to the ``explain_count`` most confident
    true positives, false positives and false negatives per class, written under ``explain/`` with the
    model-randomisation check. A run that did not finish is evaluated as it stands, with a warning (``strict``:
    refused, as are images lost since prepare). ``track``: the run, this evaluation included, is logged to MLflow
    (``lowmed.tracking``).

    ``threshold``: a number, or ``"youden"`` — chosen on the run's own validation split, never on the split
    being evaluated (unless that split is val itself, which the report then says). ``amp``: mixed precision;
    by default as the run was trained, where this device has it. ``batch_size``: by default 16 on a CPU (faster
    there than larger batches, benchmarks/cpu_precision.py) and 64 elsewhere. Returns metrics.json's record.
    """
    started = time.perf_counter()
    if split not in ("test", "val", "train", "all"):
        raise LowmedError(f"--split {split!r}: expected test, val, train or all")
    if bootstrap < 0:
        raise LowmedError(f"--bootstrap {bootstrap}: expected 0 (no intervals) or more resamples")
    check_seed(seed)
    if explain is not None:
        check_method(explain, explain_count)
    tracker = open_tracker(track)
    trained = TrainedModel.load(run_dir, checkpoint, device, amp)
    task, classes, config = trained.task, trained.classes, trained.config
    run = RunDir(trained.path.parent)
    assert config.data is not None  # a trained run names its data
    if data:
        dataset = load_or_prepare(Path(data).expanduser(), None, role="test")
    else:
        dataset = PreparedDataset.load(config.data)
    external = dataset.root != Path(config.data).resolve()
    eval_dir = EvalDir(Path(out)) if out else run.evaluation(split, dataset.root.name if external else None)
    check_writable(eval_dir.path, "--out")
    names, absent = match_classes(classes, task, dataset, class_map or {})
    torch_device, precision = trained.device, trained.precision
    if batch_size is None:
        batch_size = inference_batch_size(torch_device, ACCELERATOR_INFERENCE_BATCH)
    if batch_size < 1:
        raise LowmedError(f"--batch-size {batch_size}: expected at least 1 image per forward pass")
    model, preprocessing, normalize = trained.model, trained.preprocessing, trained.normalize

    def predict(source: PreparedDataset, name: str):
        frame = source.split(name)
        if source is dataset:
            frame = _in_model_names(frame, names, task, absent)
        if frame.empty:
            raise LowmedError(f"{source.manifest_path}: no {name} rows to evaluate")
        targets, mask = label_tensors(frame, task, classes, source.info.uncertain_policy)
        paths = source.image_paths(frame)
        logits, readable = predict_files(
            model, paths, preprocessing.input_size, normalize, torch_device, precision, batch_size, tta
        )
        if not readable:
            raise LowmedError(f"{source.manifest_path}: none of the {len(paths)} {name} images could be read")
        if len(readable) < len(paths):
            unreadable = sorted(set(range(len(paths))) - set(readable))
            warn_or_refuse(
                f"{len(unreadable)} {name} image(s) could not be read and are left out (e.g. {paths[unreadable[0]]})",
                strict,
            )
            frame = frame.iloc[readable].reset_index(drop=True)
            if task != "multilabel":
                left = set(targets[readable].tolist())
                lost = [c for i, c in enumerate(classes) if i not in left and c not in absent]
                if lost:
                    warn_or_refuse(f"no readable {name} image of class(es) {', '.join(lost)} is left", strict)
        return (
            frame,
            targets[readable].numpy(),
            None if mask is None else mask[readable].numpy(),
            probabilities(logits, task).cpu().numpy(),
        )

    with own_run_dir(run.path, "evaluate", enabled=run.summary.is_file()):  # not while it trains
        status = run_status(trained.path, "evaluated", strict)
        frame, targets, mask, probs = predict(dataset, split)

        def own_val():  # a chosen threshold comes from the run's own val split (loaded again only for external data)
            return predict(PreparedDataset.load(config.data) if external else dataset, "val")

        cut, cut_source = _threshold(threshold, task, split, own_val)
        result = compute_metrics(task, classes, targets, probs, mask, cut)
        intervals, resampling = _intervals(
            task, classes, frame, dataset.info.group_unit, targets, probs, mask, cut, bootstrap, seed
        )
        seconds = time.perf_counter() - started
        report = EvalReport(
            task=task,
            split=split,
            n=int(len(frame)),
            classes=classes,
            positive_class=classes[1] if task == "binary" else None,
            threshold=_plain(cut),
            threshold_source=cut_source,
            metrics=result.metrics,
            ci95={k: v for k, v in intervals.items() if "/" not in k},
            per_class={
                name: {
                    **values,
                    **{
                        f"{key}_ci95": intervals[f"{name}/{key}"]
                        for key in values
                        if f"{name}/{key}" in intervals and key in ("auroc", "auprc")
                    },
                }
                for name, values in result.per_class.items()
            },
            confusion_matrix=result.confusion_matrix,
            bootstrap=resampling,
            checkpoint={
                "path": str(trained.path),
                "epoch": trained.epoch,
                "model": config.model,
                "run_status": status,
            },
            dataset={"prepared_dir": str(dataset.root), "external": external},
            absent_classes=absent,
            class_map=class_map or {},
            tta=tta,
            device=str(torch_device),
            precision=precision.describe(),
            seconds=round(seconds, 2),
            images_per_s=round(len(frame) / seconds, 1),
            lowmed_version=lowmed.__version__,
        )
        with staged_dir(eval_dir.path) as staging:
            written = EvalDir(staging)
            report.write(written.metrics)
            write_csv(written.metrics_table, _metrics_table(result.flat(), intervals))
            write_csv(written.predictions, _predictions(frame, task, classes, probs, cut))
            _plots(written, task, classes, targets, probs, mask, result, report)
            if explain is not None:
                cases = confident_cases(
                    dataset.image_paths(frame), task, classes, targets, probs, mask, cut, explain_count
                )
                explain_cases(trained, cases, explain, written.explanations.path, seed)
        report.out = str(eval_dir.path)
    if tracker is not None and run.summary.is_file():
        tracker.log_run(run.path)
    return report


def _intervals(
    task: str,
    classes: list[str],
    frame: pd.DataFrame,
    group_unit: str,
    targets: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None,
    cut,
    resamples: int,
    seed: int,
) -> tuple[dict, dict]:
    """95 % intervals of every metric by a bootstrap over the manifest's groups (``group_unit``: patients, or
    lesions for HAM10000; images where the layout knows none), stratified by class; and how they were drawn
    (metrics.json's ``bootstrap``)."""
    # the stratum: the class, or for multi-label data whether any counted finding is positive
    strata = targets if task != "multilabel" else ((targets > 0) & (mask > 0 if mask is not None else True)).any(axis=1)
    groups_known = bool((frame["group"] != frame["path"]).any())
    groups = frame["group"].to_numpy() if groups_known else np.arange(len(frame))
    intervals = {}
    if resamples:

        def statistic(indices: np.ndarray) -> dict[str, float]:
            return compute_metrics(
                task, classes, targets[indices], probs[indices], None if mask is None else mask[indices], cut
            ).flat()

        intervals = bootstrap_ci(statistic, groups, np.asarray(strata), resamples, seed)
    resampling = {
        "resamples": resamples,
        "unit": group_unit if groups_known else "image",
        "groups": int(len(np.unique(groups))),
        "stratified_by": "class",
        "seed": seed,
        "level": 0.95,
    }
    return intervals, resampling


def match_classes(
    model_classes: list[str], model_task: str, dataset: PreparedDataset, class_map: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The model's name for each of ``dataset``'s classes (by ``class_map``, else the same name in any case), and
    the model's classes the dataset lacks. A class the model does not know is an error that lists both sets."""
    theirs = ", ".join(dataset.classes)
    if (model_task == "multilabel") != (dataset.task == "multilabel"):
        raise LowmedError(f"--data {dataset.root}: a {dataset.task} dataset ({theirs}); the model is {model_task}")
    for given, target in class_map.items():
        if given not in dataset.classes:
            raise LowmedError(f"--class-map {given}={target}: {dataset.root.name} has no class {given!r} ({theirs})")
        if target not in model_classes:
            raise LowmedError(
                f"--class-map {given}={target}: the model has no class {target!r} ({', '.join(model_classes)})"
            )
    by_lower = {name.lower(): name for name in model_classes}
    matched = {name: class_map.get(name) or by_lower.get(name.lower()) for name in dataset.classes}
    names = {name: ours for name, ours in matched.items() if ours is not None}
    unknown = [name for name in matched if name not in names]
    if unknown:
        raise LowmedError(
            f"--data {dataset.root}: class(es) {', '.join(unknown)} are not among the model's "
            f"({', '.join(model_classes)}); the dataset has {theirs}. Name the model's class for each with "
            f"--class-map {unknown[0]}=<model class>"
        )
    if len(set(names.values())) < len(names):
        raise LowmedError(f"--data {dataset.root}: two of its classes map to one of the model's ({names})")
    return names, [name for name in model_classes if name not in names.values()]


def parse_class_map(text: str | None) -> dict[str, str]:
    """``--class-map normal=NORMAL,pneumonia=PNEUMONIA`` as a dict."""
    if not text:
        return {}
    pairs = [item.split("=") for item in text.split(",")]
    if any(len(pair) != 2 or not all(part.strip() for part in pair) for pair in pairs):
        raise LowmedError(f"--class-map {text!r}: expected THEIRS=OURS pairs separated by commas")
    return {theirs.strip(): ours.strip() for theirs, ours in pairs}


def _in_model_names(frame: pd.DataFrame, names: dict[str, str], task: str, absent: list[str]) -> pd.DataFrame:
    """Rows of another dataset with their labels in the model's class names; absent findings unmentioned."""
    if task != "multilabel":
        return frame.assign(label=frame["label"].map(names))
    return frame.rename(columns=names).assign(**{name: np.nan for name in absent})


def evaluate_model(
    model_path: str | os.PathLike,
    dataset_root: str | os.PathLike | None = None,
    model_name: str | None = None,
    split: str = "test",
    **options: Any,
) -> EvalReport:
    """The seed project's call: ``evaluate_model(model_path=".../best.pt", dataset_root="./dataset",
    model_name="vgg19", split="test")``; returns metrics.json's content (``["metrics"]["f1"]`` and all)."""
    trained_as = trained_model_name(Path(model_path))
    if model_name and trained_as and model_name != trained_as:
        raise LowmedError(f"{model_path}: trained as {trained_as}, not {model_name}")
    return evaluate(None, checkpoint=str(model_path), data=dataset_root, split=split, **options)


def _threshold(requested, task: str, split: str, predict_val) -> tuple[float | np.ndarray, str]:
    if str(requested) == "youden":
        if task == "multiclass":
            raise LowmedError(
                "--threshold youden: multi-class predictions take the most probable class; "
                "thresholds apply to binary and multi-label tasks"
            )
        _, targets, mask, probs = predict_val()
        where = "val split (the evaluated split itself)" if split == "val" else "val split, applied unchanged"
        if task == "binary":
            return _youden(targets, probs[:, 1]), f"youden on the {where}"
        cuts = [_youden(*counted_labels(targets, probs, mask, k)) for k in range(targets.shape[1])]
        return np.asarray(cuts), f"youden per finding on the {where}"
    try:
        value = float(requested)
    except ValueError:
        raise LowmedError(f"--threshold {requested!r}: expected a probability, or youden") from None
    if not 0 <= value <= 1:
        raise LowmedError(f"--threshold {value}: expected a probability between 0 and 1")
    if task == "multiclass" and value != 0.5:
        raise LowmedError(
            "--threshold: multi-class predictions take the most probable class; "
            "thresholds apply to binary and multi-label tasks"
        )
    return value, "fixed"


def _youden(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity − 1 (0.5 when one outcome is missing)."""
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, score)
    finite = np.isfinite(thresholds)
    best = np.argmax((tpr - fpr)[finite])
    return float(min(thresholds[finite][best], 1.0))


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _metrics_table(flat: dict[str, float], intervals: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {
            "metric": name,
            "value": value,
            "ci_low": intervals.get(name, [np.nan])[0],
            "ci_high": intervals.get(name, [np.nan, np.nan])[1],
        }
        for name, value in flat.items()
    ]
    return pd.DataFrame(rows)


def _predictions(frame: pd.DataFrame, task: str, classes: list[str], probs: np.ndarray, cut) -> pd.DataFrame:
    label_columns = classes if task == "multilabel" else ["label"]
    table = frame[["path", "group", *label_columns]].copy()
    if task == "multilabel":
        table = table.rename(columns={c: f"true:{c}" for c in classes})
        for k, name in enumerate(classes):
            table[f"prob:{name}"] = probs[:, k]
            table[f"pred:{name}"] = (probs[:, k] >= np.broadcast_to(cut, (len(classes),))[k]).astype(int)
        return table
    for k, name in enumerate(classes):
        table[f"prob:{name}"] = probs[:, k]
    predicted = (probs[:, 1] >= cut).astype(int) if task == "binary" else probs.argmax(axis=1)
    table["predicted"] = [classes[i] for i in predicted]
    return table


def _plots(folder: EvalDir, task: str, classes, targets, probs, mask, result, report) -> None:
    plot_roc(
        folder.plot("roc"),
        task,
        classes,
        targets,
        probs,
        mask,
        result.metrics,
        report.ci95,
        report.threshold if task == "binary" else None,
    )
    plot_pr(folder.plot("pr"), task, classes, targets, probs, mask)
    if result.confusion_matrix is not None:
        plot_confusion(folder.plot("confusion"), classes, result.confusion_matrix)
    if task == "binary":
        plot_reliability(
            folder.plot("reliability"),
            probs[:, 1],
            targets == 1,
            f"predicted probability of {classes[1]}",
            result.metrics["ece"],
        )
    elif task == "multiclass":
        plot_reliability(
            folder.plot("reliability"),
            probs.max(axis=1),
            probs.argmax(axis=1) == targets,
            "confidence (top-class probability)",
            result.metrics["ece"],
        )
    else:
        counted = mask > 0 if mask is not None else np.ones_like(targets, dtype=bool)
        confidence, observed = probs[counted], targets[counted] > 0.5
        plot_reliability(
            folder.plot("reliability"),
            confidence,
            observed,
            "predicted probability (all findings)",
            expected_calibration_error(confidence, observed),
        )
