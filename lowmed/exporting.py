"""``lowmed export``: a run's model as ONNX or TorchScript for use outside lowmed, checked against PyTorch.

The exported model takes what any image library gives: float32 RGB in [0, 1], shape (batch, 3, S, S), the whole
image resized to S×S; the normalisation the weights expect (grey for one-channel weights, mean/std) and the
softmax / sigmoid are inside the graph, so it returns probabilities. The batch size is dynamic. Beside it:
``preprocessing.json`` (size, channels, mean/std, classes, task, threshold) and ``MODEL_CARD.md`` (data, N per class,
arm, weights with SHA-256, test metrics with 95 % intervals, intended use, limits, and the parity figure).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lowmed
from lowmed.console import progress_bar
from lowmed.contracts import RunDir, TrainSummary
from lowmed.data.loading import decoded_batches
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError, RunFailed
from lowmed.io import check_writable, sha256_file, staged_dir, write_json, write_text
from lowmed.models.trained import TrainedModel, evaluated_with, run_status, saved_threshold

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
PREPROCESSING, MODEL_CARD = "preprocessing.json", "MODEL_CARD.md"  # beside the model: what marks a lowmed export
PARITY_TOLERANCE = 1e-4  # the largest difference of probabilities an export may show against PyTorch
PARITY_IMAGES = 16


class ProbabilityModel(nn.Module):
    """[0, 1] RGB in, probabilities out: the run's normalisation, network and output activation in one module."""

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.network = trained.model
        self.normalize = trained.normalize  # loaded on the CPU, as the export is
        self.multilabel = trained.task == "multilabel"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.network(self.normalize(image))
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


@dataclass
class Exported:
    out: Path
    model: Path
    format: str
    parity: float  # max |p_export − p_pytorch| over the parity images
    parity_images: int


def export(
    run_dir: str | os.PathLike,
    format: str = "onnx",
    *,
    out: str | os.PathLike | None = None,
    checkpoint: str = "best",
    overwrite: bool = False,
) -> Exported:
    """Write ``model.onnx`` or ``model.pt`` (TorchScript), ``preprocessing.json`` and ``MODEL_CARD.md`` to ``out``
    (default ``RUN_DIR/export-<format>``), after checking the export against PyTorch on real images of the run's
    dataset; an export that differs by more than ``PARITY_TOLERANCE`` is not written (exit 1)."""
    if format not in FORMATS:
        raise LowmedError(f"--format {format!r}: expected {' or '.join(FORMATS)}")
    trained = TrainedModel.load(run_dir, checkpoint, device="cpu", amp=False)
    out = Path(out) if out else trained.path.parent / f"export-{format}"
    if out.exists() and not overwrite:
        raise LowmedError(f"--out {out} exists; give another folder, or --overwrite to replace it")
    if out.exists() and not is_export(out):  # --overwrite replaces an earlier export, nothing else
        raise LowmedError(
            f"--out {out}: not an earlier lowmed export (no {PREPROCESSING} and {MODEL_CARD}); --overwrite replaces "
            "only those; remove the folder yourself or choose another --out"
        )
    check_writable(out / PREPROCESSING, "--out")
    run_status(trained.path, "exported")
    wrapped = ProbabilityModel(trained).eval()
    images = parity_images(trained)
    with progress_bar() as bar:
        bar.add_task(f"exporting {format}", total=None, status="")
        with staged_dir(out) as staging:
            model_path = staging / FORMATS[format]
            _write_model(wrapped, format, model_path, trained.preprocessing.input_size)
            difference = parity(model_path, format, wrapped, images)
            if difference > PARITY_TOLERANCE:
                raise RunFailed(
                    f"the {format} export differs from PyTorch by {difference:.2e} in probability on "
                    f"{len(images)} images (allowed {PARITY_TOLERANCE:g}); nothing was written"
                )
            threshold, source = saved_threshold(trained)
            write_json(staging / PREPROCESSING, _preprocessing(trained, threshold, source))
            write_text(staging / MODEL_CARD, model_card(trained, format, difference, len(images), threshold, source))
    return Exported(out, out / FORMATS[format], format, difference, len(images))


def is_export(folder: Path) -> bool:
    """A folder ``lowmed export`` wrote (which ``--overwrite`` may replace)."""
    return (folder / PREPROCESSING).is_file() and (folder / MODEL_CARD).is_file()


def parity_images(trained: TrainedModel) -> torch.Tensor:
    """Up to ``PARITY_IMAGES`` real images of the run's dataset (test split first), as [0, 1] float."""
    assert trained.config.data is not None  # a trained run names its data
    dataset = PreparedDataset.load(trained.config.data)
    frame = dataset.manifest.sort_values("split", key=lambda s: s.map({"test": 0, "val": 1, "train": 2}))
    paths = dataset.image_paths(frame.head(PARITY_IMAGES * 2))
    size = trained.preprocessing.input_size
    batches = [images for images, rows in decoded_batches(paths, size, PARITY_IMAGES) if rows]
    if not batches:
        raise LowmedError(f"{dataset.root}: no readable image to check the export against")
    return torch.cat(batches)[:PARITY_IMAGES].float().div(255)


def parity(model_path: Path, format: str, reference: nn.Module, images: torch.Tensor) -> float:
    """The largest difference of probabilities between the exported file and ``reference`` on ``images``."""
    with torch.inference_mode():
        expected = reference(images).numpy()
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": images.numpy()})[0]
    else:
        with warnings.catch_warnings():  # torch.jit is deprecated, and TorchScript files are what the format is
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(model_path))
        with torch.inference_mode():
            got = loaded(images).numpy()
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def _write_model(model: nn.Module, format: str, path: Path, size: int) -> None:
    example = torch.rand(2, 3, size, size)
    if format == "torchscript":  # deprecated by PyTorch in favour of torch.export, and still what many tools load
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(model, example).save(str(path))
        return
    try:
        import onnx  # noqa: F401 (the exporter needs it)
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise LowmedError(f"--format onnx needs {exc.name}: pip install 'lowmed[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
        )


def _preprocessing(trained: TrainedModel, threshold, source: str) -> dict:
    preprocessing = trained.preprocessing
    return {
        "input": "float32 RGB in [0, 1], shape (batch, 3, S, S): the whole image resized to S x S (bilinear)",
        "input_size": preprocessing.input_size,
        "inside_the_model": "grey (channels 1) or not, then (x - mean) / std, then softmax (sigmoid for multilabel)",
        "channels": preprocessing.channels,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "output": "probabilities, one per class (per finding for multilabel)",
        "task": trained.task,
        "classes": trained.classes,
        "threshold": threshold,
        "threshold_source": source,
        "lowmed_version": lowmed.__version__,
    }


def model_card(trained: TrainedModel, format: str, difference: float, images: int, threshold, source: str) -> str:
    """MODEL_CARD.md from the run's train.json and its test evaluation of this checkpoint."""
    run = RunDir(trained.path.parent)
    summary = run.read_summary() if run.summary.is_file() else None
    evaluation = run.evaluation("test")
    report = evaluation.read_report() if evaluation.exists() else None
    lines = [
        f"# Model card: {trained.config.model} for {trained.task} {', '.join(trained.classes)}",
        "",
        f"Exported by lowmed {lowmed.__version__} as {format} from {trained.path} (epoch {trained.epoch}, "
        f"SHA-256 {sha256_file(trained.path)}).",
        "",
        "## Training",
        "",
    ]
    if summary is not None:
        lines += _training_lines(summary)
    else:
        lines.append("- No train.json beside the checkpoint: the training record is not known.")
    lines += ["", "## Test performance", ""]
    if report is not None and evaluated_with(report, trained):
        lines.append(
            f"On the test split ({report.n} images; threshold {report.threshold} — {report.threshold_source}):"
        )
        lines.append("")
        lines += ["| metric | value | 95 % CI |", "|---|---|---|"]
        for name, value in report.metrics.items():
            low, high = report.ci95.get(name) or [None, None]
            interval = f"[{low:.3f}, {high:.3f}]" if low is not None and not np.isnan(low) else ""
            lines.append(
                f"| {name} | {value:.3f} | {interval} |" if isinstance(value, float) else f"| {name} | {value} | |"
            )
    else:
        lines.append(f"Not evaluated on the test split with this checkpoint: run `lowmed evaluate {run.path}`.")
    lines += [
        "",
        "## Use",
        "",
        f"- Input and output: see preprocessing.json. Decision threshold {threshold} ({source}).",
        "- Intended use: research on transfer learning with small labelled medical image sets; not a medical device,"
        " not validated for clinical decisions.",
        "",
        "## Limits",
        "",
        "- Trained on a small training set; its test intervals say how uncertain its performance is, and it has not"
        " been validated on other sites' images unless stated above.",
        "- Performance holds for data like its training data (source, devices, population, image size); check it on"
        " your own data before use.",
    ]
    if summary is not None and summary.pretraining_overlap and summary.pretraining_overlap.get("status") == "possible":
        lines.append(f"- Pretraining overlap: {summary.pretraining_overlap}.")
    lines += [
        "",
        "## Export check",
        "",
        f"Max absolute difference of probabilities between this {format} file and PyTorch on {images} real images of"
        f" the run's dataset: {difference:.2e} (allowed {PARITY_TOLERANCE:g}).",
    ]
    return "\n".join(lines) + "\n"


def _training_lines(summary: TrainSummary) -> list[str]:
    dataset = summary.dataset
    weights = summary.weights
    counts = ", ".join(f"{name} {count}" for name, count in (dataset.train_counts or {}).items())
    return [
        f"- Data: {dataset.name} ({dataset.task}), manifest SHA-256 {dataset.manifest_sha256}; "
        f"N per class {dataset.per_class or 'all'}; training images per class: {counts or 'not recorded'}.",
        f"- Arm {summary.arm}; model {summary.model}; weights {weights.source}"
        + (f" {weights.name or weights.path} (SHA-256 {weights.sha256})" if weights.source != "none" else "")
        + f"; seed {summary.seed}.",
        (
            f"- Best epoch {summary.best_epoch.epoch} of {summary.epochs_run}, by {summary.best_epoch.monitor}; status "
            f"{summary.status_label}."
            if summary.completed
            else f"- The run did not finish ({summary.status_label}, {summary.epochs_run} epoch(s) recorded): the "
            "checkpoint is exported as it stood; finish the run with lowmed train --resume first."
        ),
        f"- Trained on {summary.device} ({summary.device_name}), precision {summary.precision or 'float32'}; lowmed "
        f"{summary.versions.get('lowmed', '?')}, torch {summary.versions.get('torch', '?')}.",
    ]
