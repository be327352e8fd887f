"""Synthetic chest-radiograph-like demo data, so the whole study runs offline on a fresh machine.

Two datasets, written in native layouts that ``prepare`` reads:

- ``target``: a Kaggle-style tree ``{train,val,test}/{NORMAL,PNEUMONIA}/`` of 64 px greyscale "radiographs"
  (a bright body, two dark lung fields with rib shadows); pneumonia adds soft opacities of varying contrast, some
  faint enough that a CNN trained from scratch on a few dozen images learns them only partly. Two images per
  patient, Kermany-style names, so splits and bootstraps work by patient.
- ``corpus``: a larger multi-label CSV dataset (opacity, nodule, effusion) of the same kind of images: the
  "broader medical corpus" a Model C backbone is pretrained on.

The data are random but deterministic for a seed. They carry no medical meaning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lowmed.data.formats import CsvColumns
from lowmed.data.lesions import LesionBox, write_lesions
from lowmed.data.manifest import PreparedDataset
from lowmed.io import check_writable

SIZE = 64
TARGET_COUNTS = {"train": 200, "val": 40, "test": 200}  # per class
CORPUS_IMAGES = 1200
CORPUS_FINDINGS = ["opacity", "nodule", "effusion"]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1, 1, size)
    return np.meshgrid(axis, axis)


def _anatomy(rng: np.random.Generator) -> dict:
    """What stays the same across one patient's images."""
    return {
        "lung_x": rng.uniform(0.38, 0.48),
        "lung_w": rng.uniform(0.26, 0.34),
        "lung_h": rng.uniform(0.55, 0.7),
        "heart": rng.uniform(0.18, 0.24),
        "ribs": rng.uniform(9, 13),
    }


def _radiograph(
    rng: np.random.Generator,
    anatomy: dict,
    opacities: int = 0,
    nodules: int = 0,
    effusion: bool = False,
    cardiomegaly: bool = False,
    size: int = SIZE,
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """One image in [0, 1] and its opacities' boxes (x, y, width, height in pixels: where each adds at least 1/e
    of its peak brightness)."""
    x, y = _grid(size)
    x = x + rng.normal(0, 0.03)
    y = y + rng.normal(0, 0.03)
    body = np.exp(-((x / 0.85) ** 8 + (y / 0.95) ** 8)) * 0.75
    lungs = np.zeros_like(x)
    for side in (-1, 1):
        lungs = np.maximum(
            lungs,
            np.exp(
                -(
                    (((x - side * anatomy["lung_x"]) / anatomy["lung_w"]) ** 2 + ((y + 0.05) / anatomy["lung_h"]) ** 2)
                    ** 2
                )
            ),
        )
    image = body - 0.45 * lungs
    image += 0.05 * lungs * np.sin(y * anatomy["ribs"] * np.pi + rng.uniform(0, np.pi)) ** 2
    heart = anatomy["heart"] * (1.5 if cardiomegaly else 1.0)
    image += 0.35 * np.exp(-(((x + 0.08) / heart) ** 2 + ((y - 0.25) / (heart * 1.3)) ** 2))
    inside = np.argwhere(lungs > 0.6)
    boxes = []
    for _ in range(opacities):
        cy, cx = inside[rng.integers(len(inside))]
        radius = rng.uniform(0.12, 0.3)
        image += rng.uniform(0.06, 0.3) * np.exp(-((x - x[cy, cx]) ** 2 + (y - y[cy, cx]) ** 2) / radius**2)
        pixels = radius * (size - 1) / 2  # the grid spans [-1, 1]; pixel i covers [i, i + 1)
        boxes.append((cx + 0.5 - pixels, cy + 0.5 - pixels, 2 * pixels, 2 * pixels))
    for _ in range(nodules):
        cy, cx = inside[rng.integers(len(inside))]
        image += rng.uniform(0.15, 0.35) * np.exp(-((x - x[cy, cx]) ** 2 + (y - y[cy, cx]) ** 2) / 0.004)
    if effusion:
        image += 0.3 * lungs * (1 / (1 + np.exp(-(y - rng.uniform(0.25, 0.45)) * 25)))
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05) + rng.normal(0, 0.04, image.shape)
    return np.clip(image, 0, 1), boxes


def _save(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(path)
    return path.name


def make_target(root: str | Path, seed: int = 0) -> Path:
    """The pneumonia-like binary task in the Kaggle folder layout, and ``lesions.csv``: where each opacity is (the
    pointing game's ground truth; ``lowmed compare --lesions``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    patient = 0
    lesions = []
    for split, per_class in TARGET_COUNTS.items():
        for label in ("NORMAL", "PNEUMONIA"):
            for index in range(per_class):
                if index % 2 == 0:
                    patient += 1
                    anatomy = _anatomy(rng)
                opacities = int(rng.integers(1, 4)) if label == "PNEUMONIA" else 0
                image, boxes = _radiograph(rng, anatomy, opacities=opacities)
                name = (
                    f"person{patient}_bacteria_{index}.png"
                    if label == "PNEUMONIA"
                    else f"IM-{patient:04d}-{index % 2 + 1:04d}.png"
                )
                _save(root / split / label / name, image)
                lesions += [LesionBox(f"{split}/{label}/{name}", *box) for box in boxes]
    write_lesions(root / "lesions.csv", lesions)
    return root


def make_corpus(root: str | Path, seed: int = 1, images: int = CORPUS_IMAGES) -> Path:
    """The multi-label pretraining corpus: ``labels.csv`` (path, patient, one 0/1 column per finding) + images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(images):
        if index % 3 == 0:
            anatomy = _anatomy(rng)
        findings = {name: int(rng.random() < 0.35) for name in CORPUS_FINDINGS}
        image, _ = _radiograph(
            rng,
            anatomy,
            opacities=2 * findings["opacity"],
            nodules=findings["nodule"],
            effusion=bool(findings["effusion"]),
            cardiomegaly=rng.random() < 0.2,
        )
        name = _save(root / "images" / f"{index:05d}.png", image)
        rows.append({"path": f"images/{name}", "patient": f"P{index // 3:05d}", **findings})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def prepare_demo_dataset(kind: str, raw: str | Path, out: str | Path) -> PreparedDataset:
    """Write one demo dataset (``target`` or ``corpus``) into ``raw`` and prepare it into ``out``."""
    from lowmed.data.prepare import prepare

    if kind == "target":
        return prepare(make_target(raw), out)
    columns = CsvColumns(path="path", labels=CORPUS_FINDINGS, group="patient")
    return prepare(make_corpus(raw) / "labels.csv", out, format="csv", csv_columns=columns)


def prepare_demo(root: str | Path) -> dict[str, PreparedDataset]:
    """Both demo datasets: raw under ``root/raw/``, prepared into ``root/target`` and ``root/corpus``."""
    root = Path(root)
    check_writable(root, "--out")
    return {kind: prepare_demo_dataset(kind, root / "raw" / kind, root / kind) for kind in ("target", "corpus")}
