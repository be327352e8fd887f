"""lowmed export: a run's model as ONNX or TorchScript, with its preprocessing, a model card and a parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lowmed.cli._options import Checkpoint, Overwrite, Quiet, Verbose


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="Run dir from 'lowmed train'.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="onnx | torchscript")] = "onnx",
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output folder. \\[default: RUN_DIR/export-<format>]")
    ] = None,
    checkpoint: Checkpoint = "best",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """[0, 1] RGB in, probabilities out (normalisation and softmax inside), dynamic batch size; checked against
    PyTorch on real images of the run's dataset before anything is written."""
    from lowmed.cli._render import stdout
    from lowmed.exporting import PARITY_TOLERANCE, export

    result = export(run_dir, format, out=out, checkpoint=checkpoint, overwrite=overwrite)
    stdout.print(
        f"Wrote {result.model} with preprocessing.json and MODEL_CARD.md · parity against PyTorch on "
        f"{result.parity_images} images: max |Δp| {result.parity:.2e} (allowed {PARITY_TOLERANCE:g})"
    )
