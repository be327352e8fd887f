"""lowmed experiment: the whole A/B/C study from one YAML file, resumable, ending in report.md."""

from pathlib import Path
from typing import Annotated

import typer

from lowmed.cli._options import Quiet, Verbose


def experiment_command(
    study: Annotated[Path, typer.Argument(help="Study YAML (see examples/).", show_default=False)],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help=(
                "Check the study, print the grid with what is done (here or in the published record) and the "
                "smallest difference it can detect; train nothing."
            ),
        ),
    ] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run datasets × named arms × per-class sizes × seeds under identical conditions, then compare and report.

    The whole study file is checked first (arm names, models, weights, data paths). With 'publish:' the report
    and each run's small files are copied there, with the comparison that 'lowmed compare' makes of them. Under
    torchrun, pretrain stages train across all processes and each process trains grid runs of its own.
    """
    from rich.markup import escape
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.experiment import run_experiment
    from lowmed.experiment.plan import PlannedJob, PlannedRun, PlannedTuning
    from lowmed.experiment.report import grouped_problems

    result = run_experiment(study, dry_run=dry_run)
    if not dry_run and result.report is None:
        return  # another of torchrun's processes: rank 0 shows the study
    spec = result.study
    grid = (
        f"{len(spec.datasets)} dataset(s) × {len(spec.arms)} arms × {len(spec.per_class)} sizes"
        f" × {len(spec.seeds)} seeds = {len(result.runs)} runs, + {len(result.pretrain)} pretrain stage(s)"
        + (f", + {len(result.cells)} tuning cell(s) of {spec.tune.trials} trials" if spec.tune else "")
    )
    table = Table(title=f"study {spec.name}: {grid}", title_justify="left")
    table.add_column("run", overflow="fold")
    table.add_column("arm", overflow="fold")
    table.add_column("weights", overflow="fold")
    table.add_column("status", overflow="fold")
    jobs: list[tuple[PlannedJob | PlannedTuning, dict, str]] = [(job, job.values, "") for job in result.pretrain]
    jobs += [(cell, cell.cell.base, "tuning: ") for cell in result.cells]
    jobs += [(job, job.values, "") for job in result.runs]
    shared = {key: names for key, names in grouped_problems(j for j, _, _ in jobs).items() if len(names) > 1}
    for job, values, kind in jobs:
        weights = values.get("weights", "none")
        detail = " (see below)" if (job.status, job.detail) in shared else f": {job.detail}"
        table.add_row(
            job.name,
            job.arm.name if isinstance(job, (PlannedRun, PlannedTuning)) else "(pretrain stage)",
            Path(weights).name if "/" in weights else weights,
            kind + job.status + (detail if job.detail else ""),
        )
    stdout.print(table)
    for (status, reason), names in shared.items():
        stdout.print(f"[yellow]{len(names)} runs {status}:[/] {escape(reason)}", highlight=False, soft_wrap=True)
    if result.restored and dry_run:
        stdout.print(
            f"{len(result.restored)} finished runs of the published record {spec.publish} would be taken as done "
            "(once their data, subsets and weights are checked)"
        )
    elif result.restored:
        stdout.print(f"{len(result.restored)} finished runs taken from the published record {spec.publish}")
    if result.power is not None:
        stdout.print(f"Sample size: {escape(result.power.sentence())}", highlight=False, soft_wrap=True)
    if not dry_run:
        stdout.print(f"Report: {result.report} ({result.wall_seconds / 60:.1f} min)")
        if result.published is not None:
            stdout.print(f"Published (report, comparison, each run's small files): {result.published}")
