"""lowmed evaluate: a trained run on a split, with 95 % intervals, calibration, plots and saved reports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lowmed.cli._options import (
    Amp,
    BatchSize,
    Checkpoint,
    Device,
    Explain,
    ExplainCount,
    Quiet,
    Seed,
    Strict,
    Track,
    TrackExperiment,
    TrackUri,
    Tta,
    Verbose,
)

if TYPE_CHECKING:
    from lowmed.contracts import EvalReport


def evaluate_command(
    run_dir: Annotated[
        Optional[Path],
        typer.Argument(help="Run dir from 'lowmed train' (or use --checkpoint PATH).", show_default=False),
    ] = None,
    split: Annotated[str, typer.Option(help="test | val | train | all (every image)")] = "test",
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Another dataset (external validation): a prepared dir, or a raw folder, prepared then as an "
            "external test set (every image scored). \\[default: the run's own]"
        ),
    ] = None,
    class_map: Annotated[
        Optional[str],
        typer.Option(
            help="--data's class names → the model's, e.g. normal=NORMAL,pneumonia=PNEUMONIA (names that differ "
            "only in case match without it)."
        ),
    ] = None,
    checkpoint: Checkpoint = "best",
    threshold: Annotated[
        str,
        typer.Option(
            help="Binary/multi-label decision threshold: a probability, or youden (chosen on the run's val split)."
        ),
    ] = "0.5",
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples (of patients/lesions) for 95 % intervals; 0 = none.")
    ] = 2000,
    tta: Tta = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output dir. \\[default: RUN_DIR/eval/<split>]")
    ] = None,
    device: Device = "auto",
    amp: Amp = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    explain: Explain = None,
    explain_count: ExplainCount = 5,
    strict: Strict = False,
    track: Track = None,
    track_uri: TrackUri = None,
    track_experiment: TrackExperiment = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Metrics with 95 % bootstrap intervals, calibration, ROC/PR/confusion/reliability plots, predictions.

    With --explain, saliency maps of the --explain-count most confident true positives, false positives and false
    negatives per class, under explain/ in the output dir."""
    from lowmed.evaluation.evaluate import evaluate, parse_class_map
    from lowmed.tracking import TrackSettings

    report = evaluate(
        run_dir,
        split=split,
        data=data,
        checkpoint=checkpoint,
        threshold=threshold,
        bootstrap=bootstrap,
        tta=tta,
        out=out,
        device=device,
        amp=amp,
        batch_size=batch_size,
        seed=seed,
        explain=explain,
        explain_count=explain_count,
        strict=strict,
        class_map=parse_class_map(class_map),
        track=TrackSettings.given(track, track_uri, track_experiment),
    )
    render_report(report)
    if explain is not None:
        from lowmed.cli._render import render_explanations

        render_explanations(report.folder.explanations)


def _interval(values) -> str:
    return (
        f"[{values[0]:.3f}, {values[1]:.3f}]" if values and values[0] is not None and not math.isnan(values[0]) else ""
    )


def render_report(report: EvalReport) -> None:
    from rich.table import Table

    from lowmed.cli._render import stdout

    threshold = report.threshold
    shown = (
        f"{threshold:.3g}"
        if isinstance(threshold, float)
        else ("per finding" if isinstance(threshold, list) else threshold)
    )
    table = Table(
        title=f"{report.split} · n={report.n} · {report.task} · threshold {shown} ({report.threshold_source})",
        title_justify="left",
    )
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in report.metrics.items():
        table.add_row(
            name, f"{value:.3f}" if isinstance(value, float) else str(value), _interval(report.ci95.get(name))
        )
    stdout.print(table)
    if report.task != "binary":
        key = "auroc"
        per_class = Table(title="per class" if report.task == "multiclass" else "per finding", title_justify="left")
        for column in (
            "class",
            "AUROC",
            "95% CI",
            *(["F1", "support"] if report.task == "multiclass" else ["positives"]),
        ):
            per_class.add_column(column, justify="left" if column == "class" else "right")
        for name, values in report.per_class.items():
            extra = (
                [f"{values['f1']:.3f}", str(values["support"])]
                if report.task == "multiclass"
                else [str(values["positives"])]
            )
            per_class.add_row(name, f"{values[key]:.3f}", _interval(values.get(f"{key}_ci95")), *extra)
        stdout.print(per_class)
    if report.dataset.get("external"):
        scored = "every image" if report.split == "all" else f"its {report.split} split"
        stdout.print(f"external set {report.dataset['prepared_dir']}: {report.n} image(s) scored ({scored})")
    if report.absent_classes:
        stdout.print(
            f"[yellow]not in this set:[/] {', '.join(report.absent_classes)} — per-class metrics, balanced accuracy "
            "and macro AUROC are over the classes present"
        )
    stdout.print(
        f"{report.bootstrap['resamples']} bootstrap resamples of {report.bootstrap['groups']} "
        f"{report.bootstrap['unit']}s · {report.seconds:.1f} s · wrote {report.out}"
    )
