"""``lowmed predict``: a trained run applied to new images, preprocessed exactly as in training (from the checkpoint),
with the decision threshold the run's own evaluation chose.

The output is a plain CSV (``pandas.read_csv(path)`` reads it, and ``lowmed predict`` takes it back as input), one
row per input file, in input order: ``path``, ``prob:<class>`` per class, ``predicted`` (binary and multi-class) or
``pred:<finding>`` (multi-label), ``threshold`` (binary), and ``error``: why a file could not be read (its other
cells empty). Where the numbers came from — run, checkpoint SHA-256, lowmed version, threshold and its source — is
in the sidecar beside it (``predictions.json``, ``lowmed.contracts.PredictionRecord``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import lowmed
from lowmed.console import progress_bar
from lowmed.contracts import ExplainRecord, PredictionRecord, RunDir
from lowmed.data.images import IMAGE_EXTENSIONS, inspect_image, list_files, refuse_undecodable_names
from lowmed.device import ACCELERATOR_INFERENCE_BATCH, inference_batch_size
from lowmed.errors import LowmedError
from lowmed.evaluation.metrics import probabilities
from lowmed.io import check_writable, read_csv_file, sha256_file, write_csv
from lowmed.models.forward import predict_files
from lowmed.models.trained import TrainedModel, run_status, saved_threshold
from lowmed.saliency.explain import explain_cases, input_cases
from lowmed.saliency.maps import check_method

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """What ``predict`` wrote: the table (also in ``out``), the threshold and where it came from, and counts."""

    out: Path
    table: pd.DataFrame
    task: str
    classes: list[str]
    threshold: float | list[float] | None  # None: multi-class (the most probable class)
    threshold_source: str
    unreadable: int
    images_per_s: float
    explanations: Path | None = None  # the saliency maps' folder, with --explain


def predict(
    run_dir: str | os.PathLike | None,
    inputs: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike = "predictions.csv",
    checkpoint: str = "best",
    threshold: float | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    amp: bool | None = None,
    path_column: str = "path",
    explain: str | None = None,
    explain_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Predictions:
    """Predict every image among ``inputs`` (files, folders searched recursively, or CSVs with a ``path_column``)
    with ``run_dir``'s checkpoint and write ``out``.

    ``threshold``: the binary / multi-label decision threshold; by default the one saved with the run's
    evaluation of this checkpoint (its Youden threshold when it has one), else 0.5. Files that cannot be read are
    listed with the reason and the rest go on; when none can be read it is an error.

    ``explain``: a saliency method (``lowmed.saliency.maps.METHODS``) applied to every readable image, for the
    positive class of a binary task, else the most probable class or finding; written to ``explain_dir`` (by
    default ``explain/`` beside ``out``) with the model-randomisation check.
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise LowmedError(f"--out {out}: expected a .csv file name")
    sidecar = PredictionRecord.beside(out)
    for path in (out, sidecar):
        if path.is_dir():
            raise LowmedError(f"--out {out}: {path} is a folder; expected a file name")
        if path.exists() and not overwrite:
            raise LowmedError(f"--out {out}: {path} exists; give another name, or --overwrite to replace it")
    check_writable(out, "--out")
    if threshold is not None and not 0 <= threshold <= 1:
        raise LowmedError(f"--threshold {threshold}: expected a probability between 0 and 1")
    explanations = Path(explain_dir) if explain_dir is not None else out.parent / "explain"
    if explain is not None:
        check_method(explain)
        if explanations.exists() and not overwrite:
            raise LowmedError(f"--explain-dir {explanations} exists; give another, or --overwrite to replace it")
        check_writable(explanations / ExplainRecord.FILE, "--explain-dir")
    paths = collect_inputs(inputs, path_column)
    trained = TrainedModel.load(run_dir, checkpoint, device, amp)
    status = run_status(trained.path, "applied")
    if threshold is not None and trained.task == "multiclass":
        raise LowmedError(
            "--threshold: multi-class predictions take the most probable class; "
            "thresholds apply to binary and multi-label tasks"
        )
    cut, source = (threshold, "--threshold") if threshold is not None else saved_threshold(trained)
    if batch_size is None:
        batch_size = inference_batch_size(trained.device, ACCELERATOR_INFERENCE_BATCH)
    if batch_size < 1:
        raise LowmedError(f"--batch-size {batch_size}: expected at least 1 image per forward pass")

    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("predicting", total=len(paths), status="")
        logits, readable = predict_files(
            trained.model,
            paths,
            trained.preprocessing.input_size,
            trained.normalize,
            trained.device,
            trained.precision,
            batch_size,
            tta,
            on_batch=lambda count: bar.advance(task, count),
        )
    seconds = time.perf_counter() - started
    if not readable:
        raise LowmedError(f"none of the {len(paths)} input files could be read as an image (e.g. {paths[0]})")
    probs = np.full((len(paths), len(trained.classes)), np.nan)
    probs[readable] = probabilities(logits, trained.task).cpu().numpy()
    table = _table(paths, readable, probs, trained, cut)
    unreadable = len(paths) - len(readable)
    if unreadable:
        log.warning(
            f"{unreadable} of {len(paths)} file(s) could not be read; their reasons are in the error column of {out}"
        )
    write_csv(out, table)
    _record(trained, out, cut, source, tta, len(paths), unreadable, status).write(sidecar)
    if explain is not None:
        cases = input_cases([paths[row] for row in readable], trained.task, probs[readable])
        explain_cases(trained, cases, explain, explanations)
    return Predictions(
        out=out,
        table=table,
        task=trained.task,
        classes=trained.classes,
        threshold=cut,
        threshold_source=source,
        unreadable=unreadable,
        images_per_s=round(len(readable) / seconds, 1) if seconds else 0.0,
        explanations=explanations if explain is not None else None,
    )


def collect_inputs(inputs: Sequence[str | os.PathLike], path_column: str = "path") -> list[Path]:
    """The image files ``inputs`` name, in order: files as given, folders' images (by extension, recursively),
    and a CSV's ``path_column`` (relative paths from the CSV's folder)."""
    if not inputs:
        raise LowmedError("no inputs: give image files, folders or a CSV with a path column")
    paths: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = [p for p in list_files(given) if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise LowmedError(f"{given}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
            paths += found
        elif given.suffix.lower() == ".csv":
            paths += _csv_paths(given, path_column)
        elif given.exists():
            paths.append(given)
        else:
            raise LowmedError(f"{given}: no such file or folder")
    refuse_undecodable_names(paths, ", ".join(map(str, inputs)))
    return paths


def _csv_paths(csv: Path, column: str) -> list[Path]:
    frame = read_csv_file(csv, str(csv), dtype=str, keep_default_na=False)
    if column not in frame.columns:
        raise LowmedError(
            f"{csv}: no column {column!r}; it has {', '.join(map(repr, frame.columns)) or 'none'} "
            "(name the column with --path-column)"
        )
    if frame.empty:
        raise LowmedError(f"{csv}: no rows")
    return [path if path.is_absolute() else csv.parent / path for path in map(Path, frame[column])]


def _table(paths: list[Path], readable: list[int], probs: np.ndarray, trained: TrainedModel, cut) -> pd.DataFrame:
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    ok = np.zeros(len(paths), dtype=bool)
    ok[readable] = True
    for k, name in enumerate(trained.classes):
        table[f"prob:{name}"] = probs[:, k]
    if trained.task == "multilabel":
        cuts = np.broadcast_to(np.asarray(cut, dtype=float), (len(trained.classes),))
        for k, name in enumerate(trained.classes):
            table[f"pred:{name}"] = pd.array(np.where(ok, probs[:, k] >= cuts[k], pd.NA), dtype="Int64")
    else:
        chosen = (probs[:, 1] >= cut).astype(int) if trained.task == "binary" else np.nan_to_num(probs).argmax(axis=1)
        table["predicted"] = [trained.classes[i] if fine else "" for i, fine in zip(chosen, ok)]
        if trained.task == "binary":
            table["threshold"] = cut
    table["error"] = [
        "" if fine else inspect_image(str(path)).get("reason", "could not be decoded") for path, fine in zip(paths, ok)
    ]
    return table


def _record(
    trained: TrainedModel, out: Path, cut, source: str, tta: bool, images: int, unreadable: int, status: str | None
) -> PredictionRecord:
    return PredictionRecord(
        lowmed_version=lowmed.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        table=out.name,
        run=str(trained.path.parent) if RunDir(trained.path.parent).summary.is_file() else None,
        checkpoint={"path": str(trained.path), "epoch": trained.epoch, "sha256": sha256_file(trained.path)},
        model=trained.config.model,
        task=trained.task,
        classes=trained.classes,
        input_size=trained.preprocessing.input_size,
        tta=tta,
        threshold=cut,
        threshold_source=source,
        images=images,
        unreadable=unreadable,
        run_status=status if status not in (None, "completed") else None,
    )
