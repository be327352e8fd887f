"""lowmed compare: runs side by side, aggregated over seeds, with paired tests between arms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lowmed.cli._options import Device, Explain, ExplainCount, Quiet, Seed

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
    resamples: Annotated[int, typer.Option(help="Paired-bootstrap resamples per comparison.")] = 1000,
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
) -> None:
    """Tables with 95 % intervals, seed aggregates, DeLong / McNemar / paired-bootstrap tests (Holm), learning curves.

    Runs are grouped by dataset, arm, model, N and seed; two runs in one such place are an error. With --explain,
    --explain-count test images of each dataset explained by every arm at each N (lowest seed): a grid per image."""
    from lowmed.compare import compare_runs

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
        explain=explain,
        explain_count=explain_count,
        lesions=lesions,
        device=device,
        quiet=quiet,
        external=external,
    )
    render_comparison(result)


def _number(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def render_comparison(result: Comparison) -> None:
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.compare import PRIMARY_TEST, format_p

    evaluated_on = f"external {result.external}" if result.external else result.split
    runs = Table(
        title=f"runs · {evaluated_on} · {result.runs[0]['metric']} (★ best per dataset and N)", title_justify="left"
    )
    for column in ("dataset", "arm · model", "N", "seed", "value", "95% CI", "train s"):
        text = column in ("dataset", "arm · model")
        runs.add_column(column, justify="left" if text else "right", no_wrap=not text, overflow="fold")
    best = {}
    for row in result.runs:
        key = (row["dataset"], row["per_class"])
        best[key] = max(best.get(key, -math.inf), row["value"])
    for row in result.runs:
        mark = "★ " if row["value"] == best[(row["dataset"], row["per_class"])] else ""
        runs.add_row(
            row["dataset"],
            f"{row['arm']} · {row['model']}",
            str(row["per_class"]),
            str(row["seed"]),
            f"{mark}{_number(row['value'])}",
            f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
            f"{row['train_seconds']:.0f}",
        )
    stdout.print(runs)
    groups = Table(title="over seeds (mean, 95% interval, SD, n)", title_justify="left")
    keys = [
        k
        for k in result.groups[0]
        if k not in ("metric", "mean", "sd", "n", "ci_low", "ci_high", "interval", "train_seconds")
    ]
    for column in (*keys, "mean", "95% CI", "SD", "n"):
        groups.add_column(column, no_wrap=column in ("mean", "95% CI", "SD", "n"), overflow="fold")
    for row in result.groups:
        groups.add_row(
            *(str(row[k]) for k in keys),
            _number(row["mean"]),
            f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
            _number(row["sd"]),
            str(row["n"]),
        )
    stdout.print(groups)
    for note in (result.recipes, result.overlap):
        if note:
            stdout.print(note, highlight=False)
    primary = [row for row in result.comparisons if row["test"] == PRIMARY_TEST]
    if primary:
        against = f"b = baseline arm {result.baseline}" if result.baseline else "every pair"
        tests = Table(
            title=f"paired bootstrap of the seed-averaged difference (a − b, {against}; Holm; "
            "* = significant); DeLong and McNemar per seed in stats.csv",
            title_justify="left",
        )
        for column in ("dataset", "N", "a", "b", "seeds", "difference", "95% CI", "p Holm"):
            tests.add_column(column, overflow="fold", no_wrap=column in ("difference", "95% CI", "p Holm"))
        for row in primary:
            tests.add_row(
                row["dataset"],
                str(row["per_class"]),
                row["a"],
                row["b"],
                str(row["seeds"]),
                _number(row["estimate"]),
                f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
                format_p(row["p_holm"]) + (" *" if row["significant"] else ""),
            )
        stdout.print(tests)
    if result.attention:
        stdout.print(_attention_table(result.attention))
    stdout.print(f"Wrote compare.csv, compare.json, compare.md, stats.csv and learning curves to {result.out}")


def _attention_table(attention: list[dict]):
    from rich.table import Table

    from lowmed.saliency.maps import UNCHANGED_CORRELATION

    table = Table(
        title=f"what each arm looks at ({attention[0]['method']}, seed {attention[0]['seed']}): pointing game "
        f"(chance); rank correlation with a re-initialised network (two re-initialised: reference; "
        f"|ρ| ≥ {UNCHANGED_CORRELATION} flagged)",
        title_justify="left",
    )
    for column in ("dataset", "N", "arm · model", "pointing game", "ρ randomised", "flagged"):
        table.add_column(column, overflow="fold")
    for row in attention:
        table.add_row(
            row["dataset"],
            str(row["per_class"]),
            f"{row['arm']} · {row['model']}",
            "—" if row["hits"] is None else f"{row['hits']}/{row['images']} ({row['chance']:.2f})",
            f"{_number(row['rank_correlation_randomised'])} ({_number(row['reference'])})",
            "[bold yellow]yes" if row["flagged"] else "no",
        )
    return table
