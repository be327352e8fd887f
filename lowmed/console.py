"""The one place lowmed talks to the terminal: a stderr console and a progress bar."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lowmed.errors import LowmedError

T = TypeVar("T")

console = Console(stderr=True)


def progress_bar(transient: bool = True, disable: bool = False) -> Progress:
    """A progress bar on stderr; ``disable`` (for --quiet) keeps the same calls but shows nothing."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


def track(items: Iterable[T], total: int, description: str, quiet: bool = False) -> Iterator[T]:
    """Iterate with a progress bar on stderr (none when ``quiet``)."""
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.advance(task)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warn_or_refuse(message: str, strict: bool) -> None:
    """A warning; with ``--strict``, bad input instead (exit 2)."""
    if strict:
        raise LowmedError(f"--strict: {message}")
    warn(message)
