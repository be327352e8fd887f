"""Option aliases shared by several commands, so each is spelt and documented once."""

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from lowmed.console import log


def _output_level(level: int):
    """An option's callback that sets what lowmed shows as the option is read (its value is not used further)."""

    def chosen(value: bool) -> bool:
        if value:
            log.setLevel(level)
        return value

    return chosen


Seed = Annotated[int, typer.Option("--seed", help="Random seed (recorded in every output).")]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Warnings and errors only: no progress bars or lines.",
        callback=_output_level(logging.WARNING),
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also the lines of every run a study or tuning cell runs (debug level).",
        callback=_output_level(logging.DEBUG),
    ),
]
Strict = Annotated[bool, typer.Option("--strict", help="Make warnings errors (exit 2; nothing is written).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output instead of refusing.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, help="Worker processes (default: all cores).")]
OutDir = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder.")]
Checkpoint = Annotated[str, typer.Option("--checkpoint", help="best | last | PATH to a lowmed checkpoint.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (a GPU by index) | mps")]
Amp = Annotated[
    Optional[bool],
    typer.Option(
        "--amp/--no-amp", help="Mixed precision. \\[default: as the run was trained, where this device has it]"
    ),
]
BatchSize = Annotated[
    Optional[int], typer.Option("--batch-size", help="Images per forward pass. \\[default: 16 on a CPU, 64 on a GPU]")
]
Tta = Annotated[bool, typer.Option("--tta", help="Average each image's prediction with its mirror image's.")]
Explain = Annotated[
    Optional[str],
    typer.Option(
        "--explain",
        help="Saliency maps: gradcam | gradcam++ | occlusion | integrated-gradients (needs lowmed\\[explain]), with "
        "the model-randomisation check.",
    ),
]
ExplainCount = Annotated[
    int, typer.Option("--explain-count", help="Images explained per kind (see the command's help).")
]
Track = Annotated[
    Optional[str],
    typer.Option(
        "--track", help="Log the run to an experiment tracker: mlflow (needs lowmed\\[track]).", metavar="mlflow"
    ),
]
TrackUri = Annotated[
    Optional[str],
    typer.Option(
        "--track-uri", help="MLflow tracking URI. \\[default: MLFLOW_TRACKING_URI, else MLflow's: ./mlflow.db]"
    ),
]
TrackExperiment = Annotated[
    Optional[str], typer.Option("--track-experiment", help="MLflow experiment name. \\[default: lowmed]")
]
