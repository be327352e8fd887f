"""Where lowmed's pictures are drawn and saved: matplotlib without a display, PNG files a person can open."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_png", "saved_figure"]


def save_png(figure, path: Path) -> None:
    """Lay the figure out, write it as a PNG and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@contextmanager
def saved_figure(path: Path, figsize: tuple[float, float]) -> Iterator[plt.Figure]:
    """A new figure to draw on, saved to ``path`` as a PNG when the block ends (and closed either way)."""
    figure = plt.figure(figsize=figsize)
    try:
        yield figure
        save_png(figure, path)
    finally:
        plt.close(figure)
