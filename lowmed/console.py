"""The one place lowmed talks to the terminal: a stderr console and a progress bar."""

from __future__ import annotations

import re
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


MESSAGE_CHARACTERS = 1000  # an error or warning line at most (its head and its tail, which says what to do)


def one_line(message: str) -> str:
    """A message as one line of bounded length: a value quoted whole in a message (a YAML alias expands a few
    hundred bytes into megabytes) is cut in the middle, keeping where it starts and what it asks for."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", message.strip())
    if len(text) <= MESSAGE_CHARACTERS:
        return text
    head, tail = MESSAGE_CHARACTERS * 2 // 3, MESSAGE_CHARACTERS // 4
    return f"{text[:head]} … ({len(text) - head - tail} characters left out) … {text[-tail:]}"


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def warn_or_refuse(message: str, strict: bool) -> None:
    """A warning; with ``--strict``, bad input instead (exit 2)."""
    if strict:
        raise LowmedError(f"--strict: {message}")
    warn(message)
