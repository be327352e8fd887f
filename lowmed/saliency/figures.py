"""Saliency pictures a person opens: one image with its map (image, heat map, overlay), and the per-arm grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowmed.figures import saved_figure

COLOURMAP = "inferno"
OVERLAY_ALPHA = 0.45
UNIT = (0.0, 1.0, 1.0, 0.0)  # left, right, bottom, top: row 0 at the top, as images are shown


def _scaled(saliency: np.ndarray) -> np.ndarray:
    """A map in [0, 1] for display (its own maximum at 1)."""
    top = float(saliency.max())
    return saliency / top if top > 0 else saliency


def _show(axis, image: np.ndarray, saliency: np.ndarray | None = None, lesions: np.ndarray | None = None) -> None:
    """``image`` with ``saliency`` over it and ``lesions`` outlined, each stretched over the same unit square (the
    arms of a grid may see the image at different sizes)."""
    axis.imshow(image, interpolation="bilinear", extent=UNIT)
    if saliency is not None:
        axis.imshow(
            _scaled(saliency),
            cmap=COLOURMAP,
            alpha=OVERLAY_ALPHA,
            vmin=0,
            vmax=1,
            interpolation="bilinear",
            extent=UNIT,
        )
    if lesions is not None:
        rows, columns = ((np.arange(n) + 0.5) / n for n in lesions.shape)
        axis.contour(columns, rows, lesions.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    axis.set_xticks([])
    axis.set_yticks([])


def write_overlay(path: Path, image: np.ndarray, saliency: np.ndarray, title: str) -> None:
    """Image, heat map, and both: ``image`` (H, W, 3) in [0, 1], ``saliency`` (H, W)."""
    with saved_figure(path, figsize=(7.5, 2.9)) as figure:
        axes = figure.subplots(1, 3)
        _show(axes[0], image)
        axes[0].set_title("image", fontsize=9)
        axes[1].imshow(_scaled(saliency), cmap=COLOURMAP, vmin=0, vmax=1, interpolation="bilinear")
        axes[1].set_xticks([])
        axes[1].set_yticks([])
        axes[1].set_title("heat map", fontsize=9)
        _show(axes[2], image, saliency)
        axes[2].set_title("overlay", fontsize=9)
        figure.suptitle(title, fontsize=9)


@dataclass
class GridPanel:
    """One arm's map of the grid's image at one N."""

    saliency: np.ndarray
    caption: str


def write_grid(
    path: Path,
    image: np.ndarray,
    rows: dict[str, dict[str, GridPanel]],
    title: str,
    lesions: np.ndarray | None = None,
) -> None:
    """One image explained by every arm: a row per N (``rows``: row label → arm → cell), a column per arm, the
    image itself first (lesion boxes outlined where known)."""
    arms = list(dict.fromkeys(arm for cells in rows.values() for arm in cells))
    with saved_figure(path, figsize=(2.1 * (len(arms) + 1), 2.3 * len(rows) + 0.4)) as figure:
        axes = np.atleast_2d(figure.subplots(len(rows), len(arms) + 1, squeeze=False))
        for r, (label, cells) in enumerate(rows.items()):
            _show(axes[r, 0], image, lesions=lesions)
            axes[r, 0].set_ylabel(label, fontsize=9)
            for c, arm in enumerate(arms, start=1):
                axis = axes[r, c]
                if arm in cells:
                    _show(axis, image, cells[arm].saliency, lesions)
                    axis.set_title(f"{arm}\n{cells[arm].caption}", fontsize=8)
                else:
                    axis.axis("off")
        figure.suptitle(title, fontsize=9)
