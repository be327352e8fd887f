"""lowmed tune: one cell's training options searched with a budget of trials, chosen on the validation split."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from lowmed.cli._options import Quiet, Verbose

if TYPE_CHECKING:
    from lowmed.contracts import TuningRecord


def tune_command(
    space: Annotated[
        Path,
        typer.Option(
            help=(
                "YAML of the search: space (option: {low, high, log} or \\[choices]), and optionally trials, metric, "
                "pruner, seed, storage — a study's tune: mapping."
            ),
            show_default=False,
        ),
    ],
    data: Annotated[
        Optional[Path],
        typer.Argument(help="Prepared dir, subset manifest (.csv) or raw dataset folder.", show_default=False),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", help="YAML of the fixed training options (as 'lowmed train --config'); flags win."),
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="Registry name or timm:<name>. \\[default: simplecnn]")] = None,
    weights: Annotated[
        Optional[str], typer.Option(help="none | imagenet | PATH | RUN_DIR, as for 'lowmed train'. \\[default: auto]")
    ] = None,
    subset: Annotated[Optional[Path], typer.Option(help="Subset manifest from 'lowmed subsample'.")] = None,
    per_class: Annotated[
        Optional[int], typer.Option(help="Subsample N train images per class (once, for every trial).")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="The cell's seed (subset, training). \\[default: 0]")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input size in px. \\[default: the model's]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N | mps. \\[default: auto]")] = None,
    trials: Annotated[
        Optional[int], typer.Option(help="Trials that finish (completed or pruned). \\[default: the file's, or 12]")
    ] = None,
    metric: Annotated[
        Optional[str],
        typer.Option(help="val_loss | val_auroc | val_accuracy of each trial's best epoch. \\[default: val_loss]"),
    ] = None,
    storage: Annotated[
        Optional[str],
        typer.Option(
            envvar="LOWMED_TUNE_STORAGE",
            help=(
                "Optuna storage URL shared by several machines (e.g. postgresql://user@host/db). \\[default: an "
                "SQLite file in --out]"
            ),
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Tuning folder; an existing one resumes. \\[default: runs/tune-<data>-<model>-n<N>-seed<K>]",
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Search training options for one (data, model, weights, N, seed) with a budget of trials.

    Each trial is a lowmed run chosen by its validation metric; the test split is never read. Writes tuning.json,
    the trials, and best-config.yaml for 'lowmed train --config'.
    """
    from lowmed.cli.train import train_config
    from lowmed.tuning import TuneSettings, settings_from_file, tune

    options: dict[str, Any] = {"data": data, "config": config, "model": model, "weights": weights, "subset": subset}
    options |= {"per_class": per_class, "seed": seed, "image_size": image_size, "device": device}
    run_config = train_config(options)
    given = settings_from_file(space)
    given |= {k: v for k, v in {"trials": trials, "metric": metric, "storage": storage}.items() if v is not None}
    settings = TuneSettings.from_dict(given, f"--space {space}", base=run_config.to_dict())
    record, best_config = tune(run_config, settings, out)
    render_tuning(record, best_config)


def render_tuning(record: "TuningRecord", best_config: Path) -> None:
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.contracts import short_value

    names = list(record.space)
    table = Table(
        title=f"tuning {record.cell}: {record.budget} trials, {record.metric} on the validation split",
        title_justify="left",
    )
    for column in ("trial", "state", record.metric, *names, "epochs"):
        table.add_column(column, overflow="fold")
    for trial in record.trials:
        mark = " ★" if trial.number == record.best_trial else ""
        table.add_row(
            str(trial.number),
            trial.state + ("" if trial.counted else " (not counted)"),
            ("—" if trial.value is None else f"{trial.value:.4f}") + mark,
            *(short_value(trial.params.get(name, "—")) for name in names),
            str(trial.epochs or "—"),
        )
    stdout.print(table)
    stdout.print(f"chosen: {record.chosen_text()} ({record.metric} {record.best_value:.4f}, trial {record.best_trial})")
    stdout.print(f"train it: lowmed train --config {best_config}")
