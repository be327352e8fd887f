"""The one place lowmed talks to the terminal: a stderr console, the ``lowmed`` loggers' handler, progress bars.

Core modules log through ``logging.getLogger(__name__)`` (children of ``lowmed``) and show progress with
``progress_bar``/``track``; neither takes a ``quiet`` flag. The level of the ``lowmed`` logger decides what shows:
WARNING (``--quiet``) shows warnings only, INFO (the default of the command line) adds progress lines and bars,
DEBUG (``-v``) adds the lines of the runs a study or a tuning cell runs inside its own bar. The command line installs
the handler (``log_to_terminal``); a Python user sees lowmed's warnings through ``logging``'s own last resort, and
calls ``log_to_terminal()`` for the rest.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lowmed.errors import LowmedError

T = TypeVar("T")

console = Console(stderr=True)
log = logging.getLogger("lowmed")
_inside = {"depth": 0}  # how many nested() blocks are open: their progress bars stay hidden


class ConsoleHandler(logging.Handler):
    """lowmed's records on the stderr console (above any progress bar): warnings and errors marked and on one line,
    debug lines dimmed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                mark = "[bold red]error:[/]" if record.levelno >= logging.ERROR else "[yellow]warning:[/]"
                text = f"{mark} {escape(one_line(message))}"
            else:
                text = escape(message) if record.levelno >= logging.INFO else f"[dim]{escape(message)}[/]"
            console.print(text, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def log_to_terminal(level: int = logging.INFO) -> None:
    """Show lowmed's records at ``level`` and above on the console (installed once; called again, it sets the
    level)."""
    if not any(isinstance(handler, ConsoleHandler) for handler in log.handlers):
        log.addHandler(ConsoleHandler())
        log.propagate = False  # not a second time through the root logger's handlers
    log.setLevel(level)


@contextmanager
def nested(speaker: logging.Logger | None = None) -> Iterator[None]:
    """Inside a caller that shows its own progress (a study, a tuning cell): what it calls shows no bars, and its
    progress lines only at DEBUG (``-v``); the ``speaker`` (the caller's logger) goes on at its level. Without a
    speaker (a torchrun process other than the first), only warnings show."""
    level, own = log.level, speaker.level if speaker else logging.NOTSET
    _inside["depth"] += 1
    if speaker is None or not log.isEnabledFor(logging.DEBUG):
        if speaker is not None:
            speaker.setLevel(speaker.getEffectiveLevel())
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        _inside["depth"] -= 1
        log.setLevel(level)
        if speaker is not None:
            speaker.setLevel(own)


def progress_bar(transient: bool = True, disable: bool = False) -> Progress:
    """A progress bar on stderr; it shows nothing (the same calls work) below INFO, inside ``nested``, or with
    ``disable`` (another process shows it)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable or _inside["depth"] > 0 or not log.isEnabledFor(logging.INFO),
    )


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar on stderr."""
    with progress_bar() as bar:
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


_warned: set[str] = set()  # the warnings given once per process


def warn_or_refuse(message: str, strict: bool, once: bool = False) -> None:
    """A warning; with ``--strict``, bad input instead (exit 2). ``once``: not again in this process, for a warning
    that a study's every run or a tuning cell's every trial would repeat word for word."""
    if strict:
        raise LowmedError(f"--strict: {message}")
    if once:
        if message in _warned:
            return
        _warned.add(message)
    log.warning(message)
