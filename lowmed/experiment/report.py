"""``report.md``: a study's question, setup, results with intervals and p-values, conclusions from the numbers, and
a reporting checklist a reviewer can hold against TRIPOD+AI and CLAIM."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import lowmed
from lowmed.comparison.render import (
    format_p,
    groups_table,
    headline_table,
    metric_label,
    paired_tables,
    tests_table,
)
from lowmed.contracts import (
    PRIMARY,
    SECONDARY,
    Comparison,
    RunDir,
    SelfSupervisedRecord,
    StudyLog,
    TestRow,
    TrainSummary,
    short_value,
)
from lowmed.data.manifest import PreparedDataset, read_info
from lowmed.experiment.checklist import ReportInputs, reporting_checklist
from lowmed.experiment.plan import PlannedPretraining, PlannedRun, PlannedTuning, external_sets
from lowmed.experiment.study import Study


def _p_text(p: float) -> str:
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _sentence(row: TestRow | dict) -> str:
    """One plain-language line for a paired comparison: arm − baseline where b is the baseline, otherwise the
    better arm first, so that a difference is never read through a double negative."""
    a, b, difference, low, high = row["a"], row["b"], row["estimate"], row["ci_low"], row["ci_high"]
    if not row["vs_baseline"] and difference < 0:
        a, b, difference, low, high = b, a, -difference, -high, -low
    metric = metric_label(row["metric"])
    numbers = (
        f"{difference:+.3f} [{low:+.3f}, {high:+.3f}], {_p_text(row['p'])} (Holm-adjusted {_p_text(row['p_holm'])})"
    )
    seeds = row.get("per_seed") or []
    if len(seeds) > 1:
        favour = row["favours_a"] if a == row["a"] else row["favours_b"]
        numbers += f"; {favour} of {len(seeds)} seeds favour {a}"
    at = f"At {row['per_class']} per class,"
    if not row["significant"]:
        return f"{at} {a} did not differ significantly from {b} in {metric}: {numbers}."
    if difference > 0:
        return f"{at} {a} improved {metric} over {b} by {numbers}."
    return f"{at} {a} had a lower {metric} than {b}: {numbers}."


def study_report(
    study: Study,
    pretrains: list[PlannedPretraining],
    runs: list[PlannedRun],
    comparison: Comparison | None,
    log: StudyLog,
    inputs: ReportInputs,
    cells: Sequence[PlannedTuning] = (),
    external: dict[str, Comparison] | None = None,
) -> str:
    """The study's ``report.md``: setup, headline, results, conclusions, and (``external``: per external test set,
    the comparison of the runs evaluated on it) external validation, tuning, the reporting checklist and what was
    skipped. ``inputs``: what the checklist reads beyond the comparison (paths, power, figures)."""
    done = [r for r in runs if r.status in ("trained", "done before")]
    lines = [
        f"# {study.name}: does transfer learning help at small training-set sizes?",
        "",
        "**Question.** Does a pretrained backbone (ImageNet, a broader medical corpus, or the user's own unlabelled "
        "images) beat the same budget trained from scratch when only a few labelled images per class are available — "
        "and by how much, with what certainty?",
        "",
        *([f"**Notes.** {study.notes}", ""] if study.notes else []),
        *(_incomplete(len(done), len(runs)) if len(done) < len(runs) else []),
        "## Setup",
        "",
    ]
    summaries = [RunDir(r.run_dir).read_summary() for r in done]
    lines += _setup(study, pretrains, runs, summaries, inputs)
    training = sum(s.epoch_seconds_total or 0 for s in summaries)
    tuning = sum(cell.cell.record.seconds for cell in cells if cell.cell.record is not None)
    processes = max(invocation["processes"] for invocation in log.invocations)
    finished = sum(r.status in ("trained", "done before", "not needed") for r in pretrains + runs)
    lines.append(
        f"- Runs: {finished} of {len(pretrains) + len(runs)} completed; {training / 60:.1f} min of training "
        "epochs in all"
        + (f", and {tuning / 60:.1f} min of tuning trials" if tuning else "")
        + f". Wall time {log.seconds / 60:.1f} min over {len(log.invocations)} invocation(s) of lowmed experiment"
        + (
            f" on up to {processes} processes (torchrun: pretrain stages data-parallel, grid runs one per process)."
            if processes > 1
            else "."
        )
    )
    lines.append(f"- Sample size: {inputs.power.sentence()}")
    if comparison and comparison.groups:
        lines += ["", "## Headline", "", headline_table(comparison).markdown(title=False)]
        lines += ["", "## Results", "", results_tables(comparison), ""]
        for figure in comparison.figures:
            lines += [f"![learning curve]({Path(figure).name})", ""]
        lines += _conclusions(comparison)
    if any(spec.external for spec in study.datasets) and comparison:
        lines += ["", "## External validation", "", external_table(study, runs, comparison), ""]
        for name, tested in (external or {}).items():
            primary = tested.primary()
            lines += [
                f"### Paired differences on {name} (a − b): the primary test, Holm-adjusted within this set",
                "",
                tests_table(primary, PRIMARY, tested.unit).markdown(title=False)
                if primary
                else "No pair of arms was evaluated on it.",
                "",
            ]
    tuned = [cell for cell in cells if cell.cell.record is not None]
    if tuned:
        lines += _tuning_section(tuned)
    if summaries:
        lines += _time_section(study, pretrains, done, summaries, tuned)
    if comparison:
        lines += ["", *reporting_checklist(study, pretrains, runs, summaries, comparison, log, inputs)]
    problems = grouped_problems([*pretrains, *cells, *runs])
    if problems:
        lines += ["", "## Skipped or failed runs", ""]
        for (status, detail), names in problems.items():
            lines.append(
                f"- {names[0]}: {status} — {detail}"
                if len(names) == 1
                else f"- {len(names)} runs {status} — {detail}\n  (runs: {', '.join(names)})"
            )
    return "\n".join(lines) + "\n"


def _incomplete(done: int, planned: int) -> list[str]:
    return [
        f"**Incomplete: {done} of {planned} runs.** The tables below hold the finished runs only; they are partial, "
        "not the study's answer. Run the same command again to continue.",
        "",
    ]


def _setup(
    study: Study, pretrains: list[PlannedPretraining], runs: list[PlannedRun], summaries: list[TrainSummary], inputs
) -> list[str]:
    lines = []
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
    stages_of: dict[str, list[Path]] = {}  # a self-supervised arm has a stage per target dataset
    for run in runs:
        pretraining = run.pretraining
        if pretraining is not None and pretraining.run_dir not in stages_of.setdefault(run.arm.name, []):
            stages_of[run.arm.name].append(pretraining.run_dir)
    for arm in study.arms:
        if arm.pretrain is not None:
            how = f"self-supervised ({arm.pretrain.method}) " if arm.self_supervised else ""
            stages = (f"stage {Path(stage).name}{_stage_outcome(RunDir(stage))}" for stage in stages_of[arm.name])
            source = f"pretrained {how}by lowmed on {arm.pretrain.dataset.name} ({'; '.join(stages)})"
        else:
            source = inputs.weights_text(arm.weights, _arm_summary(arm.name, summaries))
        lines.append(
            f"- Arm **{arm.name}**: {arm.model}, weights {source}"
            + (f", own options {arm.options}" if arm.options else "")
            + "."
        )
    lines.append(
        f"- Shared training options: {study.train or 'lowmed defaults'}; evaluation on the {study.split} "
        f"split: {study.evaluate or 'defaults'}; the bootstrap resamples whole {', '.join(units)}."
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
    return lines


def _arm_summary(arm: str, summaries: list[TrainSummary]) -> TrainSummary | None:
    return next((summary for summary in summaries if summary.arm == arm), None)


def _conclusions(comparison: Comparison) -> list[str]:
    """A sentence per comparison of the primary family, then of the secondary one; the per-seed DeLong and McNemar
    tests are descriptive and stay out of them."""
    lines = ["## Conclusions", ""]
    if comparison.baseline:
        lines += [
            f"Each arm against the baseline arm **{comparison.baseline}** (difference = arm − baseline) is the primary "
            "family; the other pairs are secondary. Each test carries the variance between seeds as well as the test "
            "set's.",
            "",
        ]
    elif comparison.families and comparison.families.source.startswith("study"):
        lines += [
            "The pairs the study names (compare.pairs, each as a − b) are the primary family; the other pairs are "
            "secondary. Each test carries the variance between seeds as well as the test set's.",
            "",
        ]
    failed = _not_learned(comparison)
    primary, secondary = comparison.tests(PRIMARY), comparison.tests(SECONDARY)
    lines += [f"- {_sentence(row)}{failed.get(row.key, '')}" for row in primary]
    if secondary:
        lines += ["", "Secondary comparisons:", ""]
        lines += [f"- {_sentence(row)}{failed.get(row.key, '')}" for row in secondary]
    if not primary and not secondary:
        lines.append("- No pair of arms shared test images to compare.")
    return lines


def grouped_problems(jobs: Iterable) -> dict[tuple[str, str], list[str]]:
    """Failed or skipped jobs by status and reason, in order: a reason many runs share (an arm whose weights cannot
    be had offline skips every run of it) is said once, with the runs it affects."""
    groups: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        if job.status in ("failed", "skipped"):
            groups.setdefault((job.status, job.detail), []).append(job.name)
    return groups


def _not_learned(comparison: Comparison) -> dict[tuple, str]:
    """For each compared pair holding runs that did not learn: a warning to append to its conclusion."""
    failed: dict[tuple, list[str]] = {}
    for run in comparison.runs:
        if run.not_learned:
            failed.setdefault((run.dataset, run.per_class), []).append(run.entity)
    warnings = {}
    for row in comparison.comparisons:
        names = [name for name in failed.get((row.dataset, row.per_class), []) if name in (row.a, row.b)]
        if names:
            arms = ", ".join(sorted(set(names)))
            warnings[row.key] = (
                f" **Not an effect of pretraining:** {len(names)} of the runs compared ({arms}) did not learn "
                "(see Results)."
            )
    return warnings


def _stage_outcome(stage: RunDir) -> str:
    """How far the pretraining got: its best epoch by its monitor (a supervised stage's validation AUROC on its own
    corpus; a self-supervised stage's kNN on the target's val split, beside the starting weights')."""
    if not stage.summary.is_file():
        return ""
    summary = stage.read_summary()
    if summary.best is None:
        return f"; {summary.status}"
    best = f"; best epoch {summary.best.epoch} of {summary.epochs_run} by {summary.best.monitor}"
    if stage.self_supervised.is_file():
        record = SelfSupervisedRecord.read(stage.self_supervised)
        start = record.monitor["curve"][0][record.monitor["metric"]]
        unchanged = (
            ": no epoch beat the starting weights, so the arm's runs start from them" if summary.best.epoch == 0 else ""
        )
        return (
            f"{best} {summary.best.value:.3f} ({start:.3f} with the starting weights; {record.monitor['kind']})"
            f"{unchanged}; {record.leakage.sentence()}"
        )
    return f"{best}, val AUROC {summary.best.metrics.get('val_auroc', float('nan')):.3f} on that corpus"


def _shortfalls(study: Study) -> list[str]:
    """Where a class had fewer training images than N: what each size really holds (the first seed's subset)."""
    lines = []
    for spec in study.datasets:
        for per_class in study.per_class:
            subset = study.folder.subset(spec.name, per_class, study.seeds[0])
            drawn = PreparedDataset.load(subset).subset if subset.is_file() else None
            if drawn and drawn.shortfalls:
                counts = drawn.counts["train"]
                lines.append(
                    f"- {spec.name} at N = {per_class}: some classes have fewer training images; each run holds "
                    + ", ".join(f"{name} {count}" for name, count in counts.items())
                    + f" ({sum(counts.values())} in all)."
                )
    return lines


def external_table(study: Study, runs: list[PlannedRun], comparison: Comparison) -> str:
    """Each arm's mean test metric over seeds on its own dataset's test split beside the same on every external
    test set (all of whose images are scored), per dataset and N."""
    metric = comparison.groups[0].metric
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
        f"Mean test {metric_label(metric)} over seeds (runs): on the dataset's own test split, and on each external "
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
    """Each arm over seeds, and the paired tests of the primary and secondary families (and the two-level bootstrap
    with ten or more seeds); the per-seed DeLong and McNemar tests stay in compare.md and stats.csv, as descriptive."""
    notes = [text for text in (comparison.recipes, comparison.overlap, comparison.learning) if text]
    lines = [*notes, *([""] if notes else []), *groups_table(comparison).section()[1:]]
    for table in paired_tables(comparison):
        lines += table.section()
    if not comparison.primary():
        lines += ["", "No pair of arms shared test images."]
    lines += [
        "",
        "Per-seed DeLong (AUROC) and McNemar (accuracy) tests are descriptive (one trained model against another, not "
        f"two pipelines): compare.md and stats.csv; {len(comparison.runs)} runs.",
    ]
    return "\n".join(lines)


def _time_section(
    study: Study,
    pretrains: list[PlannedPretraining],
    done: list[PlannedRun],
    summaries: list[TrainSummary],
    cells: list[PlannedTuning],
) -> list[str]:
    """Where the time went, per arm: training per run (of which building the cached activations), evaluation per
    run, tuning per cell and the arm's pretraining, from the runs' own records."""
    lines = [
        "",
        "## Where the time went",
        "",
        "Per arm, from the runs' records (train.json, metrics.json, tuning.json): the median per run of the training "
        "epochs (of which the cached activations' builds) and of the evaluation, and of the tuning trials per cell "
        "(medians: a run slowed by a busy or paused machine does not set its arm's cost); the pretraining in all.",
        "",
        "| arm | runs | training, min per run | of which cache builds, s | evaluation, s per run "
        "| tuning, min per cell | pretraining, min |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        own = [s for s in summaries if s.arm == arm.name]
        if not own:
            continue
        jobs = [job for job in done if job.arm is arm]
        evaluated = [RunDir(job.run_dir).evaluation(study.split) for job in jobs]
        evaluation = [e.read_report().seconds for e in evaluated if e.exists()]
        builds = [sum(c.get("build_seconds") or 0 for c in s.caches.values()) for s in own]
        tuning = [cell.cell.record.seconds for cell in cells if cell.arm is arm and cell.cell.record is not None]
        stages = {id(job.pretraining) for job in jobs if job.pretraining is not None}
        pretrained = [
            RunDir(stage.run_dir).read_summary().epoch_seconds_total or 0
            for stage in pretrains
            if id(stage) in stages and RunDir(stage.run_dir).summary.is_file()
        ]
        lines.append(
            f"| {arm.name} | {len(own)} | {_median([s.epoch_seconds_total or 0 for s in own]) / 60:.2f} | "
            f"{_median(builds):.1f} | {_median(evaluation):.1f} | "
            + (f"{_median(tuning) / 60:.1f}" if tuning else "—")
            + " | "
            + (f"{sum(pretrained) / 60:.1f}" if pretrained else "—")
            + " |"
        )
    return lines


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _tuning_section(cells: list[PlannedTuning]) -> list[str]:
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
        if record is None:  # not tuned (its arm was skipped)
            continue
        counted = record.counted
        pruned = sum(t.state == "pruned" for t in counted)
        chosen = ", ".join(f"{name} {short_value(value)}" for name, value in record.chosen.items())
        lines.append(
            f"| {planned.dataset} | {planned.arm.name} | {planned.per_class} | {planned.seed} | {len(counted)} "
            f"({pruned}) | {chosen} | {record.metric} {record.best_value:.4f} | {record.seconds / 60:.1f} min |"
        )
    return lines
