"""Where the lesions are: boxes from a CSV, and masks of them at a model's input size.

``lesions.csv`` holds one box per lesion: ``path`` (the image, relative to the CSV's folder or absolute), ``x``,
``y``, ``width``, ``height`` in the original image's pixels (the top-left corner, pixel i covering [i, i + 1)), as
RSNA's pneumonia boxes are given. The demo data write one; a user's own boxes work the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lowmed.data.images import image_size
from lowmed.errors import LowmedError
from lowmed.io import read_csv_file, write_csv

COLUMNS = ["path", "x", "y", "width", "height"]


@dataclass(frozen=True)
class LesionBox:
    path: str
    x: float
    y: float
    width: float
    height: float


def write_lesions(path: Path, boxes: list[LesionBox]) -> None:
    write_csv(path, pd.DataFrame([asdict(box) for box in boxes], columns=COLUMNS))


def read_lesions(csv: str | os.PathLike) -> dict[Path, list[LesionBox]]:
    """The boxes of ``csv`` by the resolved path of their image."""
    csv = Path(csv)
    frame = read_csv_file(csv, f"--lesions {csv}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LowmedError(f"--lesions {csv}: no column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    numbers = frame[COLUMNS[1:]].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().any(axis=1) | (numbers["width"] <= 0) | (numbers["height"] <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LowmedError(
            f"--lesions {csv}: row {row + 2} is not a box (x, y numbers; width, height positive numbers of pixels)"
        )
    boxes: dict[Path, list[LesionBox]] = {}
    for path, values in zip(frame["path"].astype(str), numbers.itertuples(index=False)):
        image = Path(path) if Path(path).is_absolute() else csv.parent / path
        boxes.setdefault(image.resolve(), []).append(LesionBox(path, *map(float, values)))
    return boxes


def lesion_mask(image: Path, boxes: list[LesionBox], size: int) -> np.ndarray:
    """The boxes on the (size, size) grid the model sees: lowmed resizes the whole image to a square."""
    width, height = image_size(image)
    columns = (np.arange(size) + 0.5) * width / size
    rows = (np.arange(size) + 0.5) * height / size
    mask = np.zeros((size, size), dtype=bool)
    for box in boxes:
        inside_x = (columns >= box.x) & (columns <= box.x + box.width)
        inside_y = (rows >= box.y) & (rows <= box.y + box.height)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask
