"""Rich tables shared by the commands' renderers."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

stdout = Console()


def counts_table(title: str, counts: dict[str, dict[str, int]], images: dict[str, int]) -> Table:
    """Classes (or findings) as rows, one column per entry of ``counts``, and a row of image totals."""
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    for name in counts:
        table.add_column(name, justify="right")
    classes = list(dict.fromkeys(c for per_column in counts.values() for c in per_column))
    for name in classes:
        table.add_row(name, *(str(counts[column].get(name, 0)) for column in counts))
    table.add_section()
    table.add_row("[bold]images", *(f"[bold]{images.get(column, 0)}" for column in counts))
    return table
