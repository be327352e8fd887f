"""lowmed models: the registry as a table."""


def models_command() -> None:
    """List the registered models: parameters, default input size, ImageNet weights.

    Every model also takes --weights none, a weights file or a lowmed run dir."""
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.models.registry import MODELS, count_parameters

    table = Table(title="lowmed models (also timm:<name> when timm is installed)", title_justify="left")
    for column in ("name", "backbone params", "input px", "ImageNet weights", "description"):
        table.add_column(column, justify="left" if column in ("name", "description") else "right")
    for spec in MODELS.values():
        table.add_row(
            spec.name,
            f"{count_parameters(spec.build_backbone()) / 1e6:.1f} M",
            str(spec.preprocessing.input_size),
            "yes" if spec.imagenet_weights else "no",
            spec.description,
        )
    stdout.print(table)
