"""``report.md``: a study's question, setup, results with intervals and p-values, and conclusions from the numbers."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

import lowmed
from lowmed.compare import PRIMARY_TEST, format_p, groups_markdown, tests_markdown
from lowmed.contracts import (
    SUBSETS,
    Comparison,
    RunDir,
    StudyLog,
    short_value,
    slug,
    subset_path,
)
from lowmed.data.manifest import PreparedDataset, read_info
from lowmed.experiment.plan import PlannedCell, PlannedRun, external_sets
from lowmed.experiment.study import Study


def _p_text(p: float) -> str:
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _metric_label(name: str) -> str:
    """A metric's name as prose reads it: macro_auroc → macro AUROC."""
    return name.replace("auroc", "AUROC").replace("_", " ")


def _sentence(row: dict) -> str:
    """One plain-language line for a primary comparison: arm − baseline where b is the baseline, otherwise the
    better arm first, so that a difference is never read through a double negative."""
    a, b, difference, low, high = row["a"], row["b"], row["estimate"], row["ci_low"], row["ci_high"]
    if not row["vs_baseline"] and difference < 0:
        a, b, difference, low, high = b, a, -difference, -high, -low
    metric = _metric_label(row["metric"])
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
    external: dict[str, Comparison] | None = None,
) -> str:
    """The study's ``report.md``: setup, headline, results, conclusions, and (``external``: per external test set,
    the comparison of the runs evaluated on it) external validation, tuning, and what was skipped."""
    lines = [
        f"# {study.name}: does transfer learning help at small training-set sizes?",
        "",
        "**Question.** Does a pretrained backbone (ImageNet, or a broader medical corpus) beat the same budget "
        "trained from scratch when only a few labelled images per class are available — and by how much, with "
        "what certainty?",
        "",
        *([f"**Notes.** {study.notes}", ""] if study.notes else []),
        "## Setup",
        "",
    ]
    units = []  # what the bootstrap resamples whole, per dataset
    for spec in study.datasets:
        info = read_info(next(run.values["data"] for run in runs if run.dataset == spec.name))
        units.append(f"{info.group_unit}s" + (f" ({spec.name})" if len(study.datasets) > 1 else ""))
        lines.append(
            f"- **{spec.name}** ({info.task}; classes: {', '.join(info.classes)}): "
            + "; ".join(f"{split} {sum(c.values())} images" for split, c in info.counts.items())
            + f"; splits {', '.join(f'{s} {o}' for s, o in info.splits.origin.items())}."
        )
    lines.append(
        f"- Training images per class: {', '.join(map(str, study.per_class))}; seeds: "
        f"{', '.join(map(str, study.seeds))} (one seed draws the same subset for every arm; subsets are "
        "nested in N)."
    )
    stage_of = {run.arm.name: run.values["weights"] for run in runs if run.arm.pretrain}
    for arm in study.arms:
        source = (
            f"pretrained by lowmed on {arm.pretrain['dataset'].name} (stage {Path(stage_of[arm.name]).name}"
            f"{_stage_outcome(RunDir(stage_of[arm.name]))})"
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
        f"split: {study.evaluate or 'defaults'}; the 95 % bootstrap intervals and the paired tests resample whole "
        f"{', '.join(units)}."
    )
    lines += _shortfalls(study)
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
            f"- Hardware: {first.device} ({first.device_name}"
            + (
                f", {first.cpu_threads} CPU thread{'s' if first.cpu_threads > 1 else ''} per run"
                if first.device == "cpu" and first.cpu_threads
                else ""
            )
            + f"), AMP {first.precision or 'off'}; "
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
        lines += ["", "## Headline", "", headline_table(comparison)]
        lines += ["", "## Results", "", results_tables(comparison), ""]
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
        failed = _not_learned(comparison)
        lines += [f"- {_sentence(row)}{failed.get(_pair(row), '')}" for row in primary] or [
            "- No pair of arms shared test images to compare."
        ]
    if any(spec.external for spec in study.datasets) and comparison:
        lines += ["", "## External validation", "", external_table(study, runs, comparison), ""]
        for name, tested in (external or {}).items():
            primary = [row for row in tested.comparisons if row["test"] == PRIMARY_TEST]
            lines += [
                f"### Paired differences on {name} (a − b): paired bootstrap of the seed-averaged metric, "
                "Holm-adjusted within this set",
                "",
                *(tests_markdown(pd.DataFrame(primary)) if primary else ["No pair of arms was evaluated on it."]),
                "",
            ]
    tuned = [cell for cell in cells if cell.cell.record is not None]
    if tuned:
        lines += _tuning_section(tuned)
    problems = grouped_problems(pretrains + cells + runs)
    if problems:
        lines += ["", "## Skipped or failed runs", ""]
        for (status, detail), names in problems.items():
            lines.append(
                f"- {names[0]}: {status} — {detail}"
                if len(names) == 1
                else f"- {len(names)} runs {status} — {detail}\n  (runs: {', '.join(names)})"
            )
    return "\n".join(lines) + "\n"


def grouped_problems(jobs: Iterable) -> dict[tuple[str, str], list[str]]:
    """Failed or skipped jobs by status and reason, in order: a reason many runs share (an arm whose weights cannot
    be had offline skips every run of it) is said once, with the runs it affects."""
    groups: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        if job.status in ("failed", "skipped"):
            groups.setdefault((job.status, job.detail), []).append(job.name)
    return groups


def _pair(row: dict) -> tuple:
    return row["dataset"], row["per_class"], frozenset((row["a"], row["b"]))


def _not_learned(comparison: Comparison) -> dict[tuple, str]:
    """For each compared pair holding runs that did not learn: a warning to append to its conclusion."""
    failed: dict[tuple, list[str]] = {}
    for run in comparison.runs:
        if run.get("not_learned"):
            failed.setdefault((run["dataset"], run["per_class"]), []).append(f"{run['arm']} · {run['model']}")
    warnings = {}
    for row in comparison.comparisons:
        names = [name for name in failed.get((row["dataset"], row["per_class"]), []) if name in (row["a"], row["b"])]
        if names:
            arms = ", ".join(sorted(set(names)))
            warnings[_pair(row)] = (
                f" **Not an effect of pretraining:** {len(names)} of the runs compared ({arms}) did not learn "
                "(see Results)."
            )
    return warnings


def _stage_outcome(stage: RunDir) -> str:
    """How far the pretraining got: its best epoch and validation AUROC on its own corpus."""
    if not stage.summary.is_file():
        return ""
    summary = stage.read_summary()
    if summary.best is None:
        return f"; {summary.status}"
    metrics = summary.best["metrics"]
    return (
        f"; best epoch {summary.best['epoch']} of {summary.epochs_run} by {summary.best['monitor']}, "
        f"val AUROC {metrics.get('val_auroc', float('nan')):.3f} on that corpus"
    )


def _shortfalls(study: Study) -> list[str]:
    """Where a class had fewer training images than N: what each size really holds (the first seed's subset)."""
    lines = []
    for spec in study.datasets:
        for per_class in study.per_class:
            subset = subset_path(study.out / SUBSETS / slug(spec.name), per_class, study.seeds[0])
            drawn = PreparedDataset.load(subset).subset if subset.is_file() else None
            if drawn and drawn.shortfalls:
                counts = drawn.counts["train"]
                lines.append(
                    f"- {spec.name} at N = {per_class}: some classes have fewer training images; each run holds "
                    + ", ".join(f"{name} {count}" for name, count in counts.items())
                    + f" ({sum(counts.values())} in all)."
                )
    return lines


def headline_table(comparison: Comparison) -> str:
    """Per dataset and N, each arm's mean test metric over seeds with its interval, its paired difference to the
    baseline (seed-averaged paired bootstrap) with the Holm-adjusted p, and its mean balanced accuracy."""
    primary = {
        (row["dataset"], row["per_class"], row["a"]): row
        for row in comparison.comparisons
        if row["test"] == PRIMARY_TEST and row["vs_baseline"]
    }
    balanced: dict[tuple, list[float]] = {}
    for run in comparison.runs:
        balanced.setdefault((run["dataset"], run["per_class"], run["arm"]), []).append(run["balanced_accuracy"])
    baseline = comparison.baseline
    metric = _metric_label(comparison.groups[0]["metric"])
    lines = [
        f"| dataset | N/class | arm | seeds | test {metric}, mean [95 % CI] | − {baseline or 'baseline'} [paired 95 % "
        "CI] | p (Holm) | balanced accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = sorted(comparison.groups, key=lambda g: (g["dataset"], g["per_class"], g["arm"] != baseline, g["arm"]))
    for group in groups:
        key = (group["dataset"], group["per_class"])
        test = primary.get((*key, f"{group['arm']} · {group['model']}"))
        difference, p = (
            (f"{test['estimate']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]", format_p(test["p_holm"]))
            if test
            else ("—", "—")
        )
        accuracy = sum(balanced[(*key, group["arm"])]) / len(balanced[(*key, group["arm"])])
        lines.append(
            f"| {group['dataset']} | {group['per_class']} | {group['arm']} | {group['n']} | {group['mean']:.3f} "
            f"[{group['ci_low']:.3f}, {group['ci_high']:.3f}] | {difference} | {p} | {accuracy:.3f} |"
        )
    return "\n".join(lines)


def external_table(study: Study, runs: list[PlannedRun], comparison: Comparison) -> str:
    """Each arm's mean test metric over seeds on its own dataset's test split beside the same on every external
    test set (all of whose images are scored), per dataset and N."""
    metric = comparison.groups[0]["metric"]
    sets = {spec.name: external_sets(study, spec.name) for spec in study.datasets if spec.external}
    columns = list(dict.fromkeys(name for externals in sets.values() for name in externals))
    values: dict[tuple, dict[str, list[float]]] = {}
    for run in runs:
        run_dir = RunDir(run.run_dir)
        if run.dataset not in sets or not run_dir.evaluation(study.split).exists():
            continue
        key = (run.dataset, run_dir.read_summary().dataset.per_class, run.arm.name)
        cells = values.setdefault(key, {})
        cells.setdefault("own", []).append(run_dir.evaluation(study.split).read_report().metrics[metric])
        for name, external in sets[run.dataset].items():
            evaluated = run_dir.evaluation("test", external.root.name)
            if evaluated.exists():
                cells.setdefault(name, []).append(evaluated.read_report().metrics[metric])
    lines = [
        f"Mean test {_metric_label(metric)} over seeds (runs): on the dataset's own test split, and on each external "
        "test set, every image of which is scored.",
        "",
        "| dataset | N/class | arm | own test | " + " | ".join(columns) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for (dataset, per_class, arm), cells in sorted(values.items(), key=lambda item: tuple(map(str, item[0]))):
        shown = [_mean_of(cells.get(name, [])) for name in ["own", *columns]]
        lines.append(f"| {dataset} | {per_class} | {arm} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _mean_of(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} ({len(values)})" if values else "—"


def results_tables(comparison: Comparison) -> str:
    """The seed aggregates and the primary paired tests (seed-averaged paired bootstrap, Holm-adjusted);
    the per-seed DeLong and McNemar tests stay in compare.md and stats.csv, where they do not drown the reader."""
    notes = [text for text in (comparison.recipes, comparison.overlap, comparison.learning) if text]
    primary = [row for row in comparison.comparisons if row["test"] == PRIMARY_TEST]
    lines = (
        [*notes, "", "### Mean over seeds (95 % interval)", ""]
        if notes
        else ["### Mean over seeds (95 % interval)", ""]
    )
    lines += groups_markdown(pd.DataFrame(comparison.groups))
    lines += [
        "",
        "### Paired differences (a − b): paired bootstrap of the seed-averaged metric, Holm-adjusted",
        "",
    ]
    lines += tests_markdown(pd.DataFrame(primary)) if primary else ["No pair of arms shared test images."]
    lines += [
        "",
        f"Per-seed DeLong (AUROC) and McNemar (accuracy) tests: compare.md and stats.csv; {len(comparison.runs)} runs.",
    ]
    return "\n".join(lines)


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
