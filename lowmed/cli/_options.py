"""Option aliases shared by several commands, so each is spelt and documented once."""

from pathlib import Path
from typing import Annotated, Optional

import typer

Seed = Annotated[int, typer.Option("--seed", help="Random seed (recorded in every output).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output instead of refusing.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, help="Worker processes (default: all cores).")]
OutDir = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder.")]
