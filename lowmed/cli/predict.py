"""lowmed predict: a trained run applied to new image files, folders or a CSV of paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lowmed.cli._options import Amp, BatchSize, Checkpoint, Device, Explain, Overwrite, Quiet, Tta, Verbose

SHOWN_ROWS = 10


def predict_command(
    run_dir: Annotated[Path, typer.Argument(help="Run dir from 'lowmed train'.", show_default=False)],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Image files, folders (searched recursively) or CSVs with a path column.", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV.")] = Path("predictions.csv"),
    checkpoint: Checkpoint = "best",
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Binary/multi-label decision threshold. \\[default: the one saved with the run's evaluation of this "
            "checkpoint (its Youden threshold when it has one), else 0.5]"
        ),
    ] = None,
    tta: Tta = False,
    batch_size: BatchSize = None,
    device: Device = "auto",
    amp: Amp = None,
    path_column: Annotated[str, typer.Option(help="The column of a CSV input that holds image paths.")] = "path",
    explain: Explain = None,
    explain_dir: Annotated[
        Optional[Path],
        typer.Option(help="Where --explain writes its maps. \\[default: explain/ beside --out]", show_default=False),
    ] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Probabilities and predicted labels for new images, preprocessed as the run was trained; unreadable files
    are listed with the reason and the rest go on. With --explain, a saliency map of every image (the positive class
    of a binary task, else the most probable class or finding)."""
    from rich.table import Table
    from rich.text import Text

    from lowmed.cli._render import render_explanations, stdout
    from lowmed.contracts import ExplainDir
    from lowmed.prediction import predict

    result = predict(
        run_dir,
        inputs,
        out=out,
        checkpoint=checkpoint,
        threshold=threshold,
        tta=tta,
        batch_size=batch_size,
        device=device,
        amp=amp,
        path_column=path_column,
        explain=explain,
        explain_dir=explain_dir,
        overwrite=overwrite,
    )
    shown = result.table.head(SHOWN_ROWS)
    table = Table(title=f"{len(result.table)} image(s) · threshold {result.threshold_source}", title_justify="left")
    for column in shown.columns:
        table.add_column(column, overflow="fold", justify="right" if column.startswith("prob:") else "left")
    for row in shown.itertuples(index=False):
        table.add_row(*(Text(f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row))  # paths are not markup
    stdout.print(table)
    stdout.print(
        f"{len(result.table) - result.unreadable} predicted, {result.unreadable} unreadable · "
        f"{result.images_per_s} images/s · wrote {result.out}"
    )
    if result.explanations is not None:
        render_explanations(ExplainDir(result.explanations))
