"""Images and labels as tensors for training: decode once, keep uint8 in memory, batch by index."""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lowmed.data.images import load_image

IN_MEMORY_LIMIT_BYTES = 4 * 2**30  # above this, images are decoded per batch by DataLoader workers
# A few files that vanished or broke after prepare are skipped with a warning; more than this share fails the run.
MAX_UNREADABLE_SHARE = 0.01


def decode_square(path: Path, size: int) -> torch.Tensor:
    """One file → uint8 (3, size, size): greyscale copied to three channels, resized to a square
    (the whole field of view is kept; nothing is cropped)."""
    image = load_image(path, size_hint=size).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _decode_or_none(path: Path, size: int) -> torch.Tensor | None:
    """The decoded image, or None for a file that is not one a run can use (broken, vanished, a decompression bomb:
    ``inspect_image`` says why)."""
    try:
        return decode_square(path, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


@dataclass
class LabelledImages:
    """One split: decoded images (or their paths, when too big for memory), targets and loss mask."""

    paths: list[Path]
    targets: torch.Tensor  # class index (long) or multi-label 0/1 (float)
    mask: torch.Tensor | None  # multi-label: 1 where the label counts in the loss
    size: int
    pixels: torch.Tensor | None = None  # uint8 (N, 3, size, size) when held in memory
    unreadable: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def part(self, rows: slice) -> "LabelledImages":
        """The images in ``rows`` (for one process's share of a split)."""
        return LabelledImages(
            self.paths[rows],
            self.targets[rows],
            None if self.mask is None else self.mask[rows],
            self.size,
            None if self.pixels is None else self.pixels[rows],
        )

    def batches(self, chunks: list[torch.Tensor], workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, row indices) for each chunk of row indices (see ``index_chunks``)."""
        if self.pixels is not None:
            for rows in chunks:
                yield self.pixels[rows], rows
            return
        loader = torch.utils.data.DataLoader(
            _FileImages(self.paths, self.size),
            batch_sampler=[rows.tolist() for rows in chunks],
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader


def index_chunks(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    """``order`` cut into batches; with ``drop_last`` a short final batch is dropped (unless it is the only one)."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


class _FileImages(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = _decode_or_none(self.paths[index], self.size)
        if image is None:  # gone since loading started: a black image keeps the batch shape
            image = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        return image, index


def load_split(
    paths: list[Path], targets: torch.Tensor, mask: torch.Tensor | None, size: int, workers: int | None = None
) -> LabelledImages:
    """Decode every image once into memory (threads; Pillow releases the GIL while decoding).

    Files that vanished or broke since ``prepare`` are dropped and listed in ``unreadable``.
    """
    if len(paths) * 3 * size * size > IN_MEMORY_LIMIT_BYTES:
        return LabelledImages(paths, targets, mask, size)
    pixels = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)  # filled in place: one copy in memory

    def decode_into(index: int) -> bool:
        image = _decode_or_none(paths[index], size)
        if image is not None:
            pixels[index] = image
        return image is not None

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        readable = list(pool.map(decode_into, range(len(paths))))
    if all(readable):
        return LabelledImages(list(paths), targets, mask, size, pixels, [])
    keep = torch.tensor([i for i, ok in enumerate(readable) if ok], dtype=torch.long)
    return LabelledImages(
        [paths[i] for i in keep.tolist()],
        targets[keep],
        None if mask is None else mask[keep],
        size,
        pixels[keep],
        [str(paths[i]) for i, ok in enumerate(readable) if not ok],
    )


def decoded_batches(
    paths: list[Path], size: int, batch_size: int, ahead: int = 2
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Decode ``paths`` batch by batch on background threads, ``ahead`` batches ahead of the caller (Pillow
    releases the GIL while it decodes), so decoding overlaps the model's work and memory holds only a few batches.

    Yields (uint8 images of the readable files, their row numbers); the rows missing from every batch are the
    files that could not be read.
    """

    def decode(rows: range) -> tuple[torch.Tensor, list[int]]:
        decoded = {row: _decode_or_none(paths[row], size) for row in rows}
        images = {row: image for row, image in decoded.items() if image is not None}
        pixels = torch.stack(list(images.values())) if images else torch.empty(0, 3, size, size)
        return pixels.to(torch.uint8), list(images)

    chunks = [range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending = deque(pool.submit(decode, rows) for rows in chunks[:ahead])
        for index in range(len(chunks)):
            if index + ahead < len(chunks):
                pending.append(pool.submit(decode, chunks[index + ahead]))
            yield pending.popleft().result()  # the batch is the caller's now


def too_many_unreadable(split: LabelledImages) -> bool:
    total = len(split) + len(split.unreadable or [])
    return len(split.unreadable or []) > max(1, math.floor(MAX_UNREADABLE_SHARE * total))


def label_tensors(
    frame: pd.DataFrame, task: str, classes: list[str], uncertain: str = "ignore"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets and loss mask. Multi-label: blank (not mentioned) counts as negative; uncertain (-1)
    is masked out (``ignore``, U-Ignore), or counted as 0 (``zeros``) or 1 (``ones``)."""
    if task != "multilabel":
        index = {name: i for i, name in enumerate(classes)}
        return torch.tensor(frame["label"].map(index).to_numpy(), dtype=torch.long), None
    raw = frame[classes].to_numpy(dtype=float, na_value=0.0)
    uncertain_cells = raw == -1
    values = np.where(uncertain_cells, 1.0 if uncertain == "ones" else 0.0, raw)
    mask = ~uncertain_cells if uncertain == "ignore" else np.ones_like(raw, dtype=bool)
    return torch.tensor(values, dtype=torch.float32), torch.tensor(mask, dtype=torch.float32)
