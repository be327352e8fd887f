"""Rich tables shared by the commands' renderers."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from lowmed.contracts import ExplainDir

# Output that goes to a file or a pipe is not wrapped at 80 columns: a table row stays on one line, so that
# ``lowmed models | grep inception_v3`` finds it, and a name or path is never cut in two
PIPED_WIDTH = 1000
stdout = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def narrow() -> bool:
    """A terminal too narrow for a wide table: commands then show fewer columns."""
    return stdout.width < 100


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


def render_explanations(folder: ExplainDir) -> None:
    """Where the saliency maps went, and what the randomisation check says of them (a flagged method was warned of
    as the maps were made)."""
    record = folder.read()
    stdout.print(f"{record.method} maps of {record.images} image(s) · wrote {folder.path} (index.csv, one PNG each)")
    if not record.randomisation["flagged"]:
        stdout.print(f"[green]randomisation check:[/] {record.randomisation['verdict']}")
