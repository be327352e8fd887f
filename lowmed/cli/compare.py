"""lowmed compare: runs side by side, aggregated over seeds, with paired tests between arms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lowmed.cli._options import Device, Explain, ExplainCount, Quiet, Seed, Verbose

if TYPE_CHECKING:
    from lowmed.contracts import Comparison


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Run dirs, or folders searched for run dirs.", show_default=False)],
    split: Annotated[str, typer.Option(help="The evaluation split compared.")] = "test",
    external: Annotated[
        Optional[str],
        typer.Option(
            help="Compare the runs' evaluations on this external test set instead (the name of its prepared folder, "
            "as 'lowmed evaluate RUN --data DIR' wrote them).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="auroc (the task's headline AUROC), accuracy, or any metric of metrics.json.")
    ] = "auroc",
    by: Annotated[
        str, typer.Option(help="Fields that define a group for aggregation over seeds.")
    ] = "dataset,arm,model,per_class",
    baseline: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Arm the others are set against (difference = arm − baseline). \\[default: the one arm trained from "
                "scratch, if there is exactly one; else every pair as it sorts]"
            )
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output dir. \\[default: the first RUNS path]")
    ] = None,
    evaluate_missing: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Evaluate runs that lack an evaluation.")
    ] = True,
    resamples: Annotated[int, typer.Option(help="Patient (lesion) bootstrap resamples of the test set.")] = 1000,
    families: Annotated[
        Optional[Path],
        typer.Option(
            help="A study's families.json: the comparisons Holm's correction runs over. \\[default: the one beside "
            "the runs, else the pairs found]",
            show_default=False,
        ),
    ] = None,
    power: Annotated[
        bool,
        typer.Option(
            "--power",
            help="Also the minimum difference each primary comparison can detect at 80 % power, at its seeds and "
            "at 3, 5, 10 and 20 seeds (power.csv).",
        ),
    ] = False,
    seed: Seed = 0,
    explain: Explain = None,
    explain_count: ExplainCount = 4,
    lesions: Annotated[
        Optional[Path],
        typer.Option(
            help="CSV of lesion boxes (path, x, y, width, height in pixels) for --explain's pointing game; the demo "
            "data write raw/target/lesions.csv.",
            show_default=False,
        ),
    ] = None,
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Each arm over seeds with intervals from seeds and the test set, paired tests between arms (Holm within
    pre-specified families), learning curves.

    The primary test of two arms is the mean over seeds of their per-seed difference, with the variance between seeds
    and the test set's bootstrap variance together (t, Satterthwaite df). Runs are grouped by dataset, arm, model, N
    and seed; two runs in one such place are an error. With --explain, --explain-count test images of each dataset
    explained by every arm at each N (lowest seed): a grid per image."""
    from lowmed.comparison.compare import compare_runs

    result = compare_runs(
        runs,
        split=split,
        metric=metric,
        by=tuple(by.split(",")),
        baseline=baseline,
        out=out,
        evaluate_missing=evaluate_missing,
        resamples=resamples,
        seed=seed,
        families=families,
        power=power,
        explain=explain,
        explain_count=explain_count,
        lesions=lesions,
        device=device,
        external=external,
    )
    render_comparison(result, power)


def render_comparison(result: Comparison, power: bool = False) -> None:
    from lowmed.cli._render import stdout
    from lowmed.comparison.compare import power_rows
    from lowmed.comparison.render import (
        attention_table,
        groups_table,
        method_sentence,
        power_table,
        runs_table,
        tests_table,
    )
    from lowmed.contracts import PRIMARY, SECONDARY

    stdout.print(runs_table(result).rich())
    stdout.print(groups_table(result).rich())
    for note in (result.recipes, result.overlap, result.learning):
        if note:
            stdout.print(note, highlight=False)
    if result.tests(PRIMARY) or result.tests(SECONDARY):
        stdout.print(f"Primary test: {method_sentence(result)}.", highlight=False)
    for family in (PRIMARY, SECONDARY):
        if result.tests(family):
            stdout.print(tests_table(result.tests(family), family, result.unit).rich())
    if power:
        rows = power_rows(result)
        if rows:
            stdout.print(power_table(rows).rich())
        else:
            stdout.print("Power: no comparison has two or more seeds, so the variance between seeds is not known.")
    if result.attention:
        stdout.print(attention_table(result.attention).rich())
    written = "compare.csv, groups.csv, stats.csv, compare.json, compare.md" + (", power.csv" if power else "")
    stdout.print(f"Wrote {written} and learning curves to {result.out}; per-seed DeLong and McNemar in stats.csv")
