"""What each arm looks at (``lowmed compare --explain``): the same test images explained by every arm's run at one
seed, a grid per image with a row per N and a column per arm, and per arm the pointing game where lesion boxes are
known and the model-randomisation check."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lowmed.contracts import slug
from lowmed.data.lesions import LesionBox, lesion_mask
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError
from lowmed.io import staged_dir, write_csv
from lowmed.models.trained import TrainedModel
from lowmed.saliency.explain import Case, image_maps
from lowmed.saliency.figures import GridPanel, write_grid
from lowmed.saliency.maps import hits

if TYPE_CHECKING:
    from lowmed.comparison.runs import Run


def explain_arms(
    runs: list[Run],
    method: str,
    count: int,
    out: Path,
    boxes: dict[Path, list[LesionBox]] | None = None,
    seed: int = 0,
    device: str = "auto",
) -> list[dict]:
    """Explain ``count`` test images of each dataset by every arm at each N, at the dataset's lowest seed, into
    ``out`` (replaced whole): a grid PNG per image and ``arms.csv``; returns arms.csv's rows. ``boxes``
    (``lesions.read_lesions``): draw the images among those with lesion boxes, and score the pointing game."""
    rows = []
    with staged_dir(out) as staging:
        for dataset, compared in _by_dataset(runs).items():
            first_seed = min(run.summary.seed for run in compared)
            chosen = sorted(
                (run for run in compared if run.summary.seed == first_seed),
                key=lambda run: (run.summary.dataset.per_class or 0, run.entity),
            )
            paths, targets, labels = _test_images(chosen[0], count, boxes, seed)
            grids: list[dict[str, dict[str, GridPanel]]] = [defaultdict(dict) for _ in paths]
            images, outlines = None, None  # the grid shows the first run's input and its lesion masks
            for run in chosen:
                trained = TrainedModel.load(run.path, _evaluated_checkpoint(run), device)
                size = trained.preprocessing.input_size
                masks = np.stack([lesion_mask(p, boxes[p.resolve()], size) for p in paths]) if boxes else None
                probability = run.table.set_index("path")
                cases = [
                    Case(path, target, "test image", float(probability.loc[key, f"prob:{trained.classes[target]}"]))
                    for path, key, target in zip(paths, labels.index, targets)
                ]
                explained = image_maps(trained, cases, method, seed)
                if images is None:
                    images, outlines = explained.images, masks
                hit = None if masks is None else hits(explained.maps, masks)
                row_label = f"N={run.summary.dataset.per_class or 'all'}/class"
                for k, (case, saliency) in enumerate(zip(cases, explained.maps)):
                    caption = f"p={case.probability:.2f}" + ("" if hit is None else (" · hit" if hit[k] else " · miss"))
                    grids[k][row_label][run.entity] = GridPanel(saliency, caption)
                check = explained.record.randomisation
                rows.append(
                    {
                        "dataset": dataset,
                        "per_class": run.summary.dataset.per_class,
                        "arm": run.arm,
                        "model": run.summary.model,
                        "seed": run.summary.seed,
                        "method": method,
                        "images": len(cases),
                        "hits": None if hit is None else int(hit.sum()),
                        "pointing_game": None if hit is None else round(float(hit.mean()), 4),
                        "chance": None if masks is None else round(float(masks.mean()), 4),
                        "rank_correlation_randomised": check["correlation"],
                        "reference": check["reference"],
                        "flagged": check["flagged"],
                    }
                )
            assert images is not None  # chosen holds a run at least
            for k, (path, grid) in enumerate(zip(paths, grids), start=1):
                write_grid(
                    staging / f"{slug(dataset)}-{k:02d}-{slug(path.stem)}.png",
                    images[k - 1].permute(1, 2, 0).numpy(),
                    dict(grid),
                    f"{dataset} · {path.name} ({labels.iloc[k - 1]}) · {method} · seed {first_seed}",
                    None if outlines is None else outlines[k - 1],
                )
        write_csv(staging / "arms.csv", pd.DataFrame(rows))
    return rows


def _by_dataset(runs: list[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        grouped[run.dataset].append(run)
    return grouped


def _evaluated_checkpoint(run: Run) -> str:
    """The checkpoint file the compared evaluation used, in the run dir as it is now."""
    return str(run.path / Path(run.report.checkpoint.get("path", "best.pt")).name)


def _test_images(
    run: Run, count: int, boxes: dict[Path, list[LesionBox]] | None, seed: int
) -> tuple[list[Path], list[int], pd.Series]:
    """``count`` evaluated images that show a finding (with lesion boxes, when given), drawn with ``seed``: their
    files, the class each is explained for, and their labels (indexed by the predictions' path)."""
    table, classes, task = run.table, run.report.classes, run.report.task
    paths = PreparedDataset.load(run.report.dataset["prepared_dir"]).image_paths(table, prefer_cache=False)
    if task == "multilabel":
        truth = table[[f"true:{c}" for c in classes]].to_numpy(dtype=float) == 1
        targets = truth.argmax(axis=1)
        eligible = truth.any(axis=1)
        labels = pd.Series([classes[k] for k in targets], index=table["path"])
    else:
        targets = np.array([classes.index(label) for label in table["label"]])
        eligible = targets == 1 if task == "binary" else np.ones(len(table), dtype=bool)
        labels = pd.Series(table["label"].to_numpy(), index=table["path"])
    if boxes is not None:
        eligible &= np.array([path.resolve() in boxes for path in paths])
        if not eligible.any():
            raise LowmedError(f"--lesions: none of its images is among the evaluated images of {run.dataset}")
    rows = np.flatnonzero(eligible)
    drawn = np.sort(np.random.default_rng(seed).choice(rows, size=min(count, len(rows)), replace=False))
    return [paths[row] for row in drawn], [int(targets[row]) for row in drawn], labels.iloc[drawn]
