"""``report.md``: a study's question, setup, results with intervals and p-values, and conclusions from the numbers."""

from __future__ import annotations

import platform
from pathlib import Path

import lowmed
from lowmed.compare import PRIMARY_TEST, format_p
from lowmed.contracts import Comparison, ComparisonDir, RunDir, StudyLog, short_value
from lowmed.data.manifest import read_info
from lowmed.experiment.plan import PlannedCell, PlannedRun
from lowmed.experiment.study import Study


def _p_text(p: float) -> str:
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _sentence(row: dict) -> str:
    """One plain-language line for a primary comparison: arm − baseline where b is the baseline, otherwise the
    better arm first, so that a difference is never read through a double negative."""
    a, b, difference, low, high = row["a"], row["b"], row["estimate"], row["ci_low"], row["ci_high"]
    if not row["vs_baseline"] and difference < 0:
        a, b, difference, low, high = b, a, -difference, -high, -low
    metric = row["metric"].replace("auroc", "AUROC").replace("_", " ")
    numbers = (
        f"{difference:+.3f} [{low:+.3f}, {high:+.3f}], {_p_text(row['p'])} (Holm-adjusted {_p_text(row['p_holm'])})"
    )
    at = f"At {row['per_class']} per class,"
    if not row["significant"]:
        return f"{at} {a} did not differ significantly from {b} in {metric}: {numbers}."
    if difference > 0:
        return f"{at} {a} improved {metric} over {b} by {numbers}."
    return f"{at} {a} had a lower {metric} than {b}: {numbers}."


def study_report(
    study: Study,
    pretrains: list[PlannedRun],
    runs: list[PlannedRun],
    comparison: Comparison | None,
    log: StudyLog,
    cells: list[PlannedCell] = (),
) -> str:
    lines = [
        f"# {study.name}: does transfer learning help at small training-set sizes?",
        "",
        "**Question.** Does a pretrained backbone (ImageNet, or a broader medical corpus) beat the same budget "
        "trained from scratch when only a few labelled images per class are available — and by how much, with "
        "what certainty?",
        "",
        "## Setup",
        "",
    ]
    for spec in study.datasets:
        info = read_info(next(run.values["data"] for run in runs if run.dataset == spec.name))
        lines.append(
            f"- **{spec.name}** ({info['task']}; classes: {', '.join(info['classes'])}): "
            + "; ".join(f"{split} {sum(c.values())} images" for split, c in info["counts"].items())
            + f"; splits {', '.join(f'{s} {o}' for s, o in info['splits']['origin'].items())}."
        )
    lines.append(
        f"- Training images per class: {', '.join(map(str, study.per_class))}; seeds: "
        f"{', '.join(map(str, study.seeds))} (one seed draws the same subset for every arm; subsets are "
        "nested in N)."
    )
    stage_of = {run.arm.name: run.values["weights"] for run in runs if run.arm.pretrain}
    for arm in study.arms:
        source = (
            f"pretrained by lowmed on {arm.pretrain['dataset'].name} (stage {Path(stage_of[arm.name]).name})"
            if arm.pretrain
            else arm.weights
        )
        lines.append(
            f"- Arm **{arm.name}**: {arm.model}, weights {source}"
            + (f", own options {arm.options}" if arm.options else "")
            + "."
        )
    lines.append(
        f"- Shared training options: {study.train or 'lowmed defaults'}; evaluation on the {study.split} "
        f"split: {study.evaluate or 'defaults'} (95 % bootstrap intervals over patients)."
    )
    if study.tune is not None:
        where = (
            "every seed's subset"
            if study.tune.per_seed
            else f"seed {study.seeds[0]}'s subset, values used for every seed"
        )
        lines.append(
            f"- Tuning: {study.tune.describe()}; per (dataset, arm, N) on {where}. The test split was never read "
            "while tuning: trials train on the train split and are chosen on the validation split."
        )
    summaries = [RunDir(r.run_dir).read_summary() for r in runs if RunDir(r.run_dir).summary.is_file()]
    if summaries:
        first = summaries[0]
        lines.append(
            f"- Hardware: {first.device} ({first.device_name}), AMP {first.precision or 'off'}; "
            f"lowmed {lowmed.__version__}, torch {first.versions.get('torch')}, "
            f"Python {platform.python_version()}."
        )
    done = sum(r.status in ("trained", "done before") for r in pretrains + runs)
    training = sum(s.epoch_seconds_total or 0 for s in summaries)
    tuning = sum(cell.cell.record.seconds for cell in cells if cell.cell.record is not None)
    processes = max(invocation["processes"] for invocation in log.invocations)
    lines.append(
        f"- Runs: {done} of {len(pretrains) + len(runs)} completed; {training / 60:.1f} min of training "
        "epochs in all"
        + (f", and {tuning / 60:.1f} min of tuning trials" if tuning else "")
        + f". Wall time {log.seconds / 60:.1f} min over {len(log.invocations)} invocation(s) of lowmed experiment"
        + (
            f" on up to {processes} processes (torchrun: pretrain stages data-parallel, grid runs one per process)."
            if processes > 1
            else "."
        )
    )
    if comparison:
        lines += ["", "## Results", ""]
        markdown = ComparisonDir(Path(comparison.out)).markdown
        lines.append(markdown.read_text(encoding="utf-8").split("\n", 2)[2] if markdown.is_file() else "")
        for figure in comparison.figures:
            lines += [f"![learning curve]({Path(figure).name})", ""]
        lines += ["## Conclusions", ""]
        if comparison.baseline:
            lines += [
                f"Each arm against the baseline arm **{comparison.baseline}** (difference = arm − baseline), "
                "then the other pairs.",
                "",
            ]
        primary = [row for row in comparison.comparisons if row["test"] == PRIMARY_TEST]
        lines += [f"- {_sentence(row)}" for row in primary] or ["- No pair of arms shared test images to compare."]
    tuned = [cell for cell in cells if cell.cell.record is not None]
    if tuned:
        lines += _tuning_section(tuned)
    problems = [r for r in pretrains + cells + runs if r.status in ("failed", "skipped")]
    if problems:
        lines += ["", "## Skipped or failed runs", ""]
        lines += [f"- {r.name}: {r.status} — {r.detail}" for r in problems]
    return "\n".join(lines) + "\n"


def _tuning_section(cells: list[PlannedCell]) -> list[str]:
    """Per cell: the trials spent, the values chosen and the validation value they reached."""
    lines = [
        "",
        "## Tuning",
        "",
        "| dataset | arm | N/class | seed | trials (pruned) | chosen | best val | trial time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for planned in cells:
        record = planned.cell.record
        counted = record.counted
        pruned = sum(t["state"] == "pruned" for t in counted)
        chosen = ", ".join(f"{name} {short_value(value)}" for name, value in record.chosen.items())
        lines.append(
            f"| {planned.dataset} | {planned.arm.name} | {planned.per_class} | {planned.seed} | {len(counted)} "
            f"({pruned}) | {chosen} | {record.metric} {record.best_value:.4f} | {record.seconds / 60:.1f} min |"
        )
    return lines
