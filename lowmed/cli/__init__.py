"""The ``lowmed`` command line: one module per command, each a thin wrapper over a core function.

Nothing heavy is imported here or at the top of a command module: ``lowmed --help`` and ``--version`` answer at
once, and each command imports its core module (torch, pandas, matplotlib) when it runs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape

import lowmed
from lowmed.cli.compare import compare_command
from lowmed.cli.evaluate import evaluate_command
from lowmed.cli.experiment import experiment_command
from lowmed.cli.export import export_command
from lowmed.cli.models import models_command
from lowmed.cli.predict import predict_command
from lowmed.cli.prepare import prepare_command
from lowmed.cli.pretrain import pretrain_command
from lowmed.cli.subsample import subsample_command
from lowmed.cli.train import finetune_command, train_command
from lowmed.cli.tune import tune_command
from lowmed.console import console, log_to_terminal, one_line
from lowmed.errors import LowmedError, RunFailed

app = typer.Typer(
    name="lowmed",
    help="Does transfer learning help at 100-200 labelled images per class? A controlled, reproducible study.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _paragraphs(docstring: str | None) -> str:
    """A command's docstring as its help: each paragraph one line for the terminal to wrap (Typer keeps the source's
    line breaks after the first paragraph, and a terminal narrower than the source then breaks each line twice)."""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(docstring or "").split("\n\n"))


_COMMANDS: dict[str, Callable[..., None]] = {
    "prepare": prepare_command,
    "subsample": subsample_command,
    "train": train_command,
    "finetune": finetune_command,
    "pretrain": pretrain_command,
    "tune": tune_command,
    "evaluate": evaluate_command,
    "predict": predict_command,
    "compare": compare_command,
    "experiment": experiment_command,
    "export": export_command,
    "models": models_command,
}
for _name, _command in _COMMANDS.items():
    app.command(_name, help=_paragraphs(_command.__doc__))(_command)

_debug = {"on": False}  # set by --debug or LOWMED_DEBUG=1 for the current invocation


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lowmed {lowmed.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    _debug["on"] = debug or bool(os.environ.get("LOWMED_DEBUG"))
    log_to_terminal(logging.INFO)  # a command's --quiet or -v changes it as its options are read


def _leave_process_group() -> None:
    """Only a command that imported lowmed.distributed can have joined torchrun's process group."""
    distributed = sys.modules.get("lowmed.distributed")
    if distributed is not None:
        distributed.leave_process_group()


def _usage_errors() -> tuple[type[Any], ...]:  # click's exceptions: exit_code, ctx, format_message
    """The exception Typer raises for a usage error: click's, from the copy Typer vendors (0.2x) or click itself."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except ImportError:
            continue
    return tuple(found)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 2 for bad input (a usage error included, in one line), 1 for a failed run, 130 for Ctrl-C;
    tracebacks only with --debug."""
    _debug["on"] = bool(os.environ.get("LOWMED_DEBUG"))
    try:
        code = app(args=argv, prog_name="lowmed", standalone_mode=False)
        if code == 130:  # click turned a Ctrl-C no command made a resumable stop of into this code
            raise KeyboardInterrupt
    except _usage_errors() as exc:  # an unknown option, a value of the wrong type, a missing argument
        code = exc.exit_code
        if type(exc).__name__ != "NoArgsIsHelpError":  # bare 'lowmed': the help was shown
            where = f" ({exc.ctx.command_path} -h lists the options)" if getattr(exc, "ctx", None) else ""
            message = one_line(exc.format_message())
            console.print(f"[bold red]error:[/] {escape(message)}{where}", highlight=False, soft_wrap=True)
    except KeyboardInterrupt:  # Ctrl-C where no command turned it into a resumable stop of its own
        if _debug["on"]:
            traceback.print_exc()
        console.print("[bold red]error:[/] interrupted (Ctrl-C); nothing half-written was left", highlight=False)
        code = 130
    except (LowmedError, RunFailed) as exc:
        if _debug["on"]:
            traceback.print_exc()
        console.print(f"[bold red]error:[/] {escape(one_line(str(exc)))}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except Exception as exc:  # an unforeseen failure during a run
        hint = ""
        if _debug["on"]:
            traceback.print_exc()
        else:
            hint = " (run with --debug for the traceback)"
        console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {escape(one_line(str(exc)))}{hint}",
            highlight=False,
            soft_wrap=True,
        )
        code = 1
    _leave_process_group()
    sys.exit(code if isinstance(code, int) else 0)
