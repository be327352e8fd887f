"""lowmed models: the registry as a table, or (--weights) the weight sources lowmed knows."""

from pathlib import Path
from typing import Annotated, Optional

import typer


def models_command(
    weights: Annotated[
        bool,
        typer.Option(
            "--weights",
            help="List the weight sources instead: ImageNet per model, timm, torchxrayvision (xrv:<name>), with "
            "their input contract, training data and whether the file is here.",
        ),
    ] = False,
    weights_dir: Annotated[
        Optional[Path],
        typer.Option(help="Where xrv: weight files are looked for. \\[default: torchxrayvision's cache]"),
    ] = None,
) -> None:
    """List the registered models: parameters, default input size, ImageNet weights.

    Every model also takes --weights none, a weights file or a lowmed run dir."""
    from rich.table import Table

    from lowmed.cli._render import narrow, stdout

    if weights:
        from lowmed.models.weights import weight_sources

        rows = weight_sources(str(weights_dir) if weights_dir else None)
        if narrow():  # plain lines: no name or path cut or wrapped
            for row in rows:
                stdout.print(" · ".join(row.values()), highlight=False, markup=False)
            return
        table = Table(title="weight sources (--weights)", title_justify="left")
        sources = ("weights", "model", "input", "trained_on", "file")
        for column in sources:
            table.add_column(column.replace("_", " "), no_wrap=column in ("weights", "model", "file"))
        for row in rows:
            table.add_row(*(row[column] for column in sources))
        stdout.print(table)
        return
    from lowmed.models.registry import MODELS, count_parameters

    table = Table(title="lowmed models (also timm:<name> when timm is installed)", title_justify="left")
    columns = ["name", "backbone params", "input px", "ImageNet weights", "Grad-CAM layer", "description"]
    if narrow():  # a narrow terminal: plain lines, so that no name is cut or wrapped
        for spec in MODELS.values():
            stdout.print(
                f"{spec.name} · {count_parameters(spec.build_backbone()) / 1e6:.1f} M · "
                f"{spec.preprocessing.input_size} px · ImageNet {'yes' if spec.imagenet_weights else 'no'}",
                highlight=False,
                markup=False,
            )
        return
    for column in columns:
        text = column in ("name", "Grad-CAM layer", "description")
        table.add_column(column, justify="left" if text else "right", no_wrap=column != "description")
    for spec in MODELS.values():
        cells = [
            spec.name,
            f"{count_parameters(spec.build_backbone()) / 1e6:.1f} M",
            str(spec.preprocessing.input_size),
            "yes" if spec.imagenet_weights else "no",
            spec.cam_layer,
            spec.description,
        ]
        table.add_row(*cells)
    stdout.print(table)
