"""Which images to explain, and their maps written for a person: a PNG per image, an index, the raw maps, and the
randomisation check (``lowmed evaluate --explain``, ``lowmed predict --explain``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import lowmed
from lowmed.console import progress_bar
from lowmed.contracts import ExplainDir, ExplainRecord, slug
from lowmed.data.loading import decode_square
from lowmed.errors import LowmedError
from lowmed.io import sha256_file, staged_dir, write_csv
from lowmed.models.registry import get_model_spec
from lowmed.models.trained import TrainedModel
from lowmed.saliency.figures import write_overlay
from lowmed.saliency.maps import check_method, peak, randomisation_check, saliency_maps

log = logging.getLogger(__name__)

LAYER_METHODS = ("gradcam", "gradcam++")  # the methods that explain a backbone layer rather than the input


@dataclass
class Case:
    """One image to explain, the class whose logit is explained, and why the image was chosen."""

    path: Path
    target: int
    case: str  # true positive | false positive | false negative | input
    probability: float  # the model's probability of the target class
    label: str = ""  # the image's true label, where known


@dataclass
class ImageMaps:
    """Saliency maps of decoded images: what ``explain_cases`` computed, for callers that draw their own figures."""

    images: torch.Tensor  # float (N, 3, H, W) in [0, 1], on the CPU
    maps: np.ndarray  # (N, H, W), non-negative
    correlations: np.ndarray  # per image: Spearman ρ with the re-initialised network's map
    record: ExplainRecord


def confident_cases(
    paths: list[Path],
    task: str,
    classes: list[str],
    targets: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None,
    threshold,
    count: int,
) -> list[Case]:
    """The ``count`` most confident true positives, false positives and false negatives per class (the positive
    class of a binary task; each class one-vs-rest; each finding), by the call made at ``threshold``."""
    explained = [1] if task == "binary" else range(len(classes))
    cases = []
    for k in explained:
        if task == "multilabel":
            truth = targets[:, k] > 0.5
            called = probs[:, k] >= np.broadcast_to(np.asarray(threshold, dtype=float), (len(classes),))[k]
            counted = mask[:, k] > 0 if mask is not None else np.ones(len(paths), dtype=bool)
        else:
            truth = targets == k
            called = probs[:, 1] >= threshold if task == "binary" else probs.argmax(axis=1) == k
            counted = np.ones(len(paths), dtype=bool)
        for name, chosen, most_confident_first in (
            ("true positive", truth & called, -probs[:, k]),
            ("false positive", ~truth & called, -probs[:, k]),
            ("false negative", truth & ~called, probs[:, k]),
        ):
            rows = np.flatnonzero(chosen & counted)
            for row in rows[np.argsort(most_confident_first[rows], kind="stable")][:count]:
                label = classes[k] if truth[row] else ("" if task == "multilabel" else classes[int(targets[row])])
                cases.append(Case(paths[row], k, name, float(probs[row, k]), label))
    return cases


def input_cases(paths: list[Path], task: str, probs: np.ndarray) -> list[Case]:
    """What ``predict --explain`` explains for each image: the positive class of a binary task, else the most
    probable class or finding."""
    targets = np.ones(len(paths), dtype=int) if task == "binary" else probs.argmax(axis=1)
    return [Case(path, int(k), "input", float(p[k])) for path, k, p in zip(paths, targets, probs)]


def image_maps(trained: TrainedModel, cases: list[Case], method: str, seed: int = 0) -> ImageMaps:
    """The maps of ``cases`` by ``method`` and the randomisation check on the same images."""
    started = time.perf_counter()
    size = trained.preprocessing.input_size
    model_name = trained.config.model
    layer = get_model_spec(model_name).cam_layer  # once: a timm entry builds its network to know it
    images = torch.stack([decode_square(case.path, size) for case in cases]).float().div(255)
    targets = torch.tensor([case.target for case in cases])
    on_device = images.to(trained.device)
    with progress_bar() as bar:
        task = bar.add_task(f"{method} maps", total=3, status="trained network")
        maps = saliency_maps(trained.model, layer, trained.normalize, on_device, targets, method)
        bar.update(task, advance=1, status="re-initialised networks")
        check = randomisation_check(trained.model, layer, trained.normalize, on_device, targets, method, maps, seed)
        bar.update(task, advance=2, status="")
    record = ExplainRecord(
        method=method,
        layer=layer if method in LAYER_METHODS else None,
        model=model_name,
        checkpoint={"path": str(trained.path), "epoch": trained.epoch, "sha256": sha256_file(trained.path)},
        images=len(cases),
        randomisation={
            "correlation": round(check.correlation, 4),
            "reference": round(check.reference, 4),
            "flagged": check.flagged,
            "verdict": check.verdict(method),
            "seed": seed,
        },
        seconds=round(time.perf_counter() - started, 2),
        lowmed_version=lowmed.__version__,
    )
    return ImageMaps(images, maps, check.per_image, record)


def explain_cases(trained: TrainedModel, cases: list[Case], method: str, out: Path, seed: int = 0) -> ExplainRecord:
    """Explain ``cases`` into ``out`` (replaced whole): a PNG per image (image, heat map, overlay), ``index.csv``,
    ``maps.npz`` and ``explain.json``. A randomisation check that flags the method is also said on screen."""
    check_method(method)
    if not cases:
        raise LowmedError(f"no images to explain in {out}")
    explained = image_maps(trained, cases, method, seed)
    rows = []
    with staged_dir(out) as staging:
        written = ExplainDir(staging)
        for number, (case, image, saliency, correlation) in enumerate(
            zip(cases, explained.images, explained.maps, explained.correlations), start=1
        ):
            name = trained.classes[case.target]
            png = f"{number:03d}-{slug(case.case)}-{slug(name)}-{slug(case.path.stem)}.png"
            title = f"{case.path.name} · {method} of {name} (p = {case.probability:.2f})"
            if case.case != "input":
                title += f" · {case.case}" + (f", labelled {case.label}" if case.label else "")
            write_overlay(staging / png, image.permute(1, 2, 0).numpy(), saliency, title)
            row, column = peak(saliency)
            rows.append(
                {
                    "png": png,
                    "path": str(case.path),
                    "explained": name,
                    "case": case.case,
                    "probability": case.probability,
                    "label": case.label,
                    "peak_row": row,
                    "peak_column": column,
                    "rank_correlation_randomised": correlation,
                }
            )
        write_csv(written.index, pd.DataFrame(rows))
        np.savez_compressed(written.maps, maps=explained.maps.astype(np.float16), png=[r["png"] for r in rows])
        explained.record.write(written.record)
    if explained.record.randomisation["flagged"]:
        log.warning(explained.record.randomisation["verdict"])
    return explained.record
