"""``lowmed compare``: runs side by side, each arm aggregated over seeds, and paired tests between arms.

Two arms are compared where they were evaluated on the same test images of the same dataset at the same N; seeds
pair up, since one seed draws the same training subset for every arm. With a baseline arm (``--baseline``, or the
one arm trained from scratch) each other arm is set against it (other − baseline). The primary test of a pair is
the seed-averaged difference with the variance between seeds and the test set's together
(``lowmed.comparison.statistics``); per seed, DeLong (AUROC, binary tasks) and McNemar (accuracy at the saved
thresholds) are reported as descriptive. Holm's correction runs within families fixed beforehand: a study's
``families.json`` (every arm against the baseline, over every N: primary; the other pairs: secondary), or without a
study, the pairs found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowmed.comparison.render import comparison_markdown
from lowmed.comparison.resampling import Scored, detail_metrics, score_runs
from lowmed.comparison.runs import (
    Run,
    by_path,
    check_one_run_per_place,
    choose_baseline,
    correct_calls,
    learning_statement,
    load_runs,
    name_datasets,
    overlap_statement,
    prediction_arrays,
    recipes_statement,
)
from lowmed.comparison.statistics import (
    ALPHA,
    DEFAULT_SD_SEED,
    DEFAULT_SE_PATIENT,
    PLANNING_AUROC,
    PowerPlan,
    VarianceComponents,
    components,
    minimum_detectable_difference,
    planning_se_patient,
    two_level_bootstrap,
)
from lowmed.config import check_seed
from lowmed.console import track
from lowmed.contracts import (
    DESCRIPTIVE,
    PRIMARY,
    PRIMARY_TEST,
    SECONDARY,
    SENSITIVITY,
    TWO_LEVEL_TEST,
    Comparison,
    ComparisonDir,
    Estimate,
    FamilyMember,
    GroupRow,
    PowerRow,
    RunRow,
    TestFamilies,
    TestRow,
    find_run_dirs,
)
from lowmed.data.lesions import read_lesions
from lowmed.errors import LowmedError
from lowmed.evaluation.stats import delong_test, holm, holm_by_family, mcnemar_test
from lowmed.io import check_writable, write_csv, write_text
from lowmed.saliency.maps import check_method

# the two-level bootstrap (seeds and patients resampled together) needs this many seeds to mean anything
TWO_LEVEL_SEEDS = 10
# seed counts the power table shows beside each comparison's own
PLANNED_SEEDS = (3, 5, 10, 20)
GROUP_INTERVAL = "mean ± t·SE, SE² = SE_pat² + SD_seed²/n, Satterthwaite df"
ONE_RUN_INTERVAL = "one run: mean ± z·SE_pat (test set only)"
MIXED_INTERVAL = "t over runs on different test sets"


def compare_runs(
    paths: Sequence[str | os.PathLike],
    *,
    split: str = "test",
    metric: str = "auroc",
    by: tuple[str, ...] = ("dataset", "arm", "model", "per_class"),
    baseline: str | None = None,
    out: str | os.PathLike | None = None,
    evaluate_missing: bool = True,
    bootstrap: int = 2000,
    resamples: int = 1000,
    seed: int = 0,
    families: TestFamilies | str | os.PathLike | None = None,
    power: bool = False,
    explain: str | None = None,
    explain_count: int = 4,
    lesions: str | os.PathLike | None = None,
    device: str = "auto",
    external: str | None = None,
) -> Comparison:
    """Compare every completed run below ``paths``; write compare.csv/json/md, groups.csv, stats.csv and learning
    curves (``power``: power.csv too).

    ``families``: the planned families of tests (a ``families.json``, or the record itself); by default the one a
    study wrote beside the runs (in a RUNS path or up to two folders above), else the pairs found.

    ``external``: compare the runs' evaluations on that external test set (the name of its prepared folder, as
    ``lowmed evaluate RUN --data DIR`` wrote them) instead of on their own dataset's ``split``; the pairs and tests
    are the same, on the external set's images.

    ``explain``: a saliency method; ``explain_count`` test images of each dataset (with a finding; among those
    ``lesions`` boxes, a ``lowmed.data.lesions`` CSV, when given) explained by every arm at each N, at the
    lowest seed: a grid PNG per image under ``explain/<method>/``, and per arm the pointing game (with
    ``lesions``) and the model-randomisation check."""
    known = {"dataset", "arm", "model", "per_class", "seed", "weights"}
    if set(by) - known:
        raise LowmedError(f"--by {','.join(by)}: expected fields among {', '.join(sorted(known))}")
    check_seed(seed)
    if resamples < 10:
        raise LowmedError(f"--resamples {resamples}: expected at least 10 (the bootstrap's SE needs them)")
    if explain is not None:
        check_method(explain, explain_count)
    if lesions is not None and explain is None:
        raise LowmedError("--lesions scores saliency maps: give --explain METHOD with it")
    if explain is not None and external is not None:
        raise LowmedError("--explain explains images of the runs' own test split; leave out --external with it")
    boxes = read_lesions(lesions) if lesions is not None else None
    planned = _planned_families(families, paths)
    check_writable(Path(out or paths[0]) / "compare.csv", "--out")
    runs, skipped = load_runs(find_run_dirs(paths), split, evaluate_missing, bootstrap, external)
    if not runs:
        what = (
            f"completed runs evaluated on the external test set {external}" if external else "completed, evaluated runs"
        )
        why = f" ({len(skipped)} left out; {skipped[0].run}: {skipped[0].reason})" if skipped else ""
        raise LowmedError(f"no {what} found below {', '.join(map(str, paths))}{why}")
    name_datasets(runs)
    check_one_run_per_place(runs)
    requested = planned.baseline if baseline is None and planned is not None else baseline
    # a study's families, fixed when planned, say which arm (or that there is none); without them, the runs do
    baseline = None if requested is None and planned is not None else choose_baseline(runs, requested)
    scored = score_runs(runs, metric, resamples, seed)
    run_rows = [_run_row(run, scored[id(run)], metric) for run in runs]
    run_rows.sort(key=lambda row: (row.dataset, row.per_class or 0, row.arm, row.model, row.seed))
    groups = _aggregate(runs, scored, metric, list(by))
    tests, found = _paired_tests(runs, scored, metric, baseline, seed, planned)
    families_used = planned or found
    _correct(tests, families_used)
    tests.sort(key=_test_order)
    target = ComparisonDir(Path(out or paths[0]))
    target.path.mkdir(parents=True, exist_ok=True)
    curves = _aggregate(runs, scored, metric, ["dataset", "arm", "model", "per_class"]) if by != ("dataset",) else []
    from lowmed.evaluation.plots import plot_learning_curves

    figures = plot_learning_curves(target, _curve_frame([g for g in curves if g.per_class is not None]))
    from lowmed.comparison.attention import explain_arms

    attention = (
        explain_arms(runs, explain, explain_count, target.explanations(explain), boxes, seed, device)
        if explain is not None
        else []
    )
    comparison = Comparison(
        split=split,
        metric=metric,
        baseline=baseline,
        runs=run_rows,
        groups=groups,
        comparisons=tests,
        families=families_used,
        skipped=skipped,
        figures=[str(f) for f in figures],
        recipes=recipes_statement(runs),
        overlap=overlap_statement(runs),
        learning=learning_statement(runs),
        unit=_bootstrap_unit(runs),
        attention=attention,
        by=list(by),
        resamples=resamples,
        seed=seed,
        external=external,
        out=str(target.path),
    )
    write_comparison(comparison, target, power)
    return comparison


def write_comparison(comparison: Comparison, target: ComparisonDir, power: bool = False) -> None:
    """compare.csv/.json/.md, groups.csv, stats.csv (and ``power``: power.csv) of a comparison, into ``target``."""
    write_csv(target.table, runs_frame(comparison.runs))
    write_csv(target.groups, groups_frame(comparison.groups))
    write_csv(target.stats, tests_frame(comparison.comparisons))
    if power:
        write_csv(target.power, power_frame(power_rows(comparison)))
    comparison.write(target.record)
    write_text(target.markdown, comparison_markdown(comparison))


def _planned_families(
    families: TestFamilies | str | os.PathLike | None, paths: Sequence[str | os.PathLike]
) -> TestFamilies | None:
    """The families given, or a study's ``families.json`` in a RUNS path or up to two folders above it."""
    if isinstance(families, TestFamilies):
        return families
    if families is not None:
        if not Path(families).is_file():
            raise LowmedError(f"--families {families}: no such file; expected a study's {TestFamilies.FILE}")
        return TestFamilies.read(families)
    for path in map(Path, paths):
        for folder in (path, path.parent, path.parent.parent):  # a study's folder, its runs/, or one run dir
            if (folder / TestFamilies.FILE).is_file():
                return TestFamilies.read(folder / TestFamilies.FILE)
    return None


def _bootstrap_unit(runs: list[Run]) -> str:
    units = {run.report.bootstrap["unit"] for run in runs if run.report.bootstrap.get("unit")}
    return " / ".join(sorted(units)) or "patient"


def _run_row(run: Run, scored: Scored, metric: str) -> RunRow:
    report, summary = run.report, run.summary
    name = next(iter(scored.values))
    if name not in report.metrics:
        raise LowmedError(f"--metric {metric}: {run.path} has no such metric; it has {', '.join(report.metrics)}")
    low, high = report.ci95.get(name) or [np.nan, np.nan]
    threshold = report.threshold
    return RunRow(
        run=str(run.path),
        dataset=run.dataset,
        dataset_sha256=summary.dataset.identity,
        task=report.task,
        arm=run.arm,
        model=summary.model,
        weights=summary.weights.name
        or (Path(summary.weights.path).name if summary.weights.path else None)
        or summary.weight_source,
        per_class=summary.dataset.per_class,
        seed=summary.seed,
        metric=name,
        value=report.metrics[name],
        ci_low=low,
        ci_high=high,
        accuracy=report.metrics.get("accuracy", np.nan),
        balanced_accuracy=report.metrics.get("balanced_accuracy", np.nan),
        sensitivity=report.metrics.get("sensitivity", np.nan),
        specificity=report.metrics.get("specificity", np.nan),
        ece=report.metrics.get("ece", np.nan),
        threshold="" if report.task == "multiclass" or threshold is None else _threshold_text(threshold),
        threshold_source=threshold_source(report.task, report.threshold_source, threshold),
        n_test=report.n,
        train_seconds=summary.epoch_seconds_total if summary.epoch_seconds_total is not None else np.nan,
        epochs=summary.epochs_run,
        recipe=run.tuning.recipe() if run.tuning else "fixed",
        pretraining_overlap=(summary.pretraining_overlap or {}).get("status", "not known"),
        not_learned=run.not_learned,
    )


def _threshold_text(threshold: float | list[float]) -> str:
    return " ".join(f"{cut:.3g}" for cut in np.atleast_1d(threshold))


def threshold_source(task: str, source: str, threshold: float | list[float] | None) -> str:
    """Where the calls' threshold came from, as tables say it: "fixed at 0.5", "youden on the val split", ..."""
    if task == "multiclass":
        return "most probable class"
    return f"fixed at {_threshold_text(threshold)}" if source == "fixed" and threshold is not None else source


def _aggregate(runs: list[Run], scored: dict[int, Scored], metric: str, by: list[str]) -> list[GroupRow]:
    """Each group of runs (by ``by``): the headline metric and the detail metrics, mean over seeds with the
    interval from both sources of variance where the runs share a test set."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(_group_key(run, field) for field in by), []).append(run)
    rows = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(map(_sortable, item[0]))):
        members.sort(key=lambda run: run.summary.seed)
        parts = [scored[id(run)] for run in members]
        name = next(iter(parts[0].values))
        value, interval = _estimate(parts, name)
        task = members[0].report.task
        thresholded = {
            detail: _estimate(parts, detail)[0]
            for detail in detail_metrics(task)
            if all(detail in part.values for part in parts)
        }
        rows.append(
            GroupRow(
                **dict(zip(by, key)),
                metric=name,
                n=len(members),
                value=value,
                interval=interval,
                thresholded=thresholded,
                threshold_source=" | ".join(
                    sorted(
                        {threshold_source(task, run.report.threshold_source, run.report.threshold) for run in members}
                    )
                ),
                train_seconds=float(
                    np.mean([run.summary.epoch_seconds_total or np.nan for run in members], dtype=float)
                ),
                recipe=" | ".join(sorted({run.tuning.recipe() if run.tuning else "fixed" for run in members})),
            )
        )
    return rows


def _group_key(run: Run, field: str):
    return {
        "dataset": run.dataset,
        "arm": run.arm,
        "model": run.summary.model,
        "per_class": run.summary.dataset.per_class,
        "seed": run.summary.seed,
        "weights": run.summary.weights.path or run.summary.weight_source,
    }[field]


def _sortable(value) -> tuple:
    return (value is None, value if value is not None else 0)


def _estimate(parts: list[Scored], name: str) -> tuple[Estimate, str]:
    """A metric's mean over the runs with its 95 % interval, and the interval's kind."""
    values = np.array([part.values[name] for part in parts], dtype=float)
    if len({id(part.test_set) for part in parts}) > 1:  # grouped across datasets: no shared resamples
        spread = VarianceComponents(float(values.mean()), 0.0, float(values.std(ddof=1)), len(values))
        low, high = spread.interval(bounds=(0.0, 1.0))
        return Estimate(mean=spread.estimate, ci_low=low, ci_high=high, sd_seed=spread.sd_seed, df=spread.df), (
            MIXED_INTERVAL
        )
    pooled = np.mean([part.draws[name] for part in parts], axis=0)
    parts_of = components(values, pooled)
    low, high = parts_of.interval(bounds=(0.0, 1.0))
    return (
        Estimate(
            mean=parts_of.estimate,
            ci_low=low,
            ci_high=high,
            sd_seed=parts_of.sd_seed,
            se_patient=parts_of.se_patient,
            df=parts_of.df,
        ),
        GROUP_INTERVAL if len(parts) > 1 else ONE_RUN_INTERVAL,
    )


def _curve_frame(groups: list[GroupRow]) -> pd.DataFrame:
    """The learning curves' rows: dataset, arm, model, per_class, metric, mean and interval."""
    return pd.DataFrame(
        [
            {
                "dataset": g.dataset,
                "arm": g.arm,
                "model": g.model,
                "per_class": g.per_class,
                "metric": g.metric,
                "mean": g.value.mean,
                "ci_low": g.value.ci_low,
                "ci_high": g.value.ci_high,
            }
            for g in groups
        ]
    )


def _paired_tests(
    runs: list[Run],
    scored: dict[int, Scored],
    metric: str,
    baseline: str | None,
    seed: int,
    planned: TestFamilies | None = None,
) -> tuple[list[TestRow], TestFamilies]:
    """Every pair of arms/models on the same dataset, N and test images, the baseline arm as ``b`` (or as a planned
    family member has them); and the families as found (every arm against the baseline: primary; the rest:
    secondary)."""
    oriented = {member.key: member for member in planned.primary} if planned is not None else {}
    cells: dict[tuple, dict[str, dict[int, Run]]] = {}
    arm_of: dict[str, str] = {}
    for run in runs:
        key = (run.dataset, run.summary.dataset.per_class, run.report.split)
        cells.setdefault(key, {}).setdefault(run.entity, {})[run.summary.seed] = run
        arm_of[run.entity] = run.arm
    jobs = []
    for key, entities in sorted(cells.items(), key=lambda item: (item[0][0], _sortable(item[0][1]), item[0][2])):
        for a, b in combinations(sorted(entities), 2):
            member = oriented.get((key[0], key[1], frozenset((a, b))))
            if member is not None:
                a, b = member.a, member.b  # as the study planned it
            elif arm_of[a] == baseline and arm_of[b] != baseline:
                a, b = b, a  # the difference reads as other arm − baseline
            jobs.append((key, a, b, member is not None))
    rows: list[TestRow] = []
    primary: list[FamilyMember] = []
    secondary: list[FamilyMember] = []
    for key, a, b, planned_primary in track(jobs, len(jobs), "Paired tests"):
        by_seed_a, by_seed_b = cells[key][a], cells[key][b]
        pairs = [(by_seed_a[s], by_seed_b[s]) for s in sorted(set(by_seed_a) & set(by_seed_b))]
        pairs = [(x, y) for x, y in pairs if scored[id(x)].test_set is scored[id(y)].test_set]
        if not pairs:
            continue
        vs_baseline = planned_primary or (arm_of[b] == baseline and arm_of[a] != baseline)
        member = FamilyMember(dataset=key[0], per_class=key[1], a=a, b=b)
        (primary if vs_baseline or baseline is None else secondary).append(member)
        rows += _tests_for_pair(member, vs_baseline, pairs, scored, seed)
    return rows, TestFamilies(source="the runs compared", baseline=baseline, primary=primary, secondary=secondary)


def _tests_for_pair(
    member: FamilyMember, vs_baseline: bool, pairs: list[tuple[Run, Run]], scored: dict[int, Scored], seed: int
) -> list[TestRow]:
    """The primary test (and with enough seeds the two-level bootstrap) of a pair of arms, then the descriptive
    per-seed tests."""
    first = scored[id(pairs[0][0])]
    name = next(iter(first.values))
    per_seed = np.array([scored[id(x)].values[name] - scored[id(y)].values[name] for x, y in pairs])
    per_seed_draws = np.array([scored[id(x)].draws[name] - scored[id(y)].draws[name] for x, y in pairs])
    parts = components(per_seed, np.nanmean(per_seed_draws, axis=0))
    low, high = parts.interval()
    base: dict[str, Any] = {"dataset": member.dataset, "per_class": member.per_class, "a": member.a, "b": member.b}
    base |= {"vs_baseline": vs_baseline, "metric": name}
    rows = [
        TestRow(
            **base,
            test=PRIMARY_TEST,
            family=PRIMARY,  # until the families are matched (_correct)
            seeds=len(pairs),
            estimate=parts.estimate,
            ci_low=low,
            ci_high=high,
            p=parts.p_value(),
            per_seed=[round(float(d), 6) for d in per_seed],
            favours_a=int(np.sum(per_seed > 0)),
            favours_b=int(np.sum(per_seed < 0)),
            sd_seed=parts.sd_seed,
            se_patient=parts.se_patient,
            seed_share=parts.seed_share,
            df=parts.df,
        )
    ]
    if len(pairs) >= TWO_LEVEL_SEEDS:
        rows.append(
            TestRow(
                **base,
                test=TWO_LEVEL_TEST,
                family=SENSITIVITY,
                seeds=len(pairs),
                estimate=parts.estimate,
                **two_level_bootstrap(per_seed_draws, seed),
            )
        )
    task = pairs[0][0].report.task
    for x, y in pairs:
        targets, probs_x, _ = x.arrays
        for test, test_metric, result in per_seed_tests(task, targets, probs_x, y.arrays[1], x.correct, y.correct):
            rows.append(
                TestRow(
                    **{**base, "metric": test_metric},
                    test=test,
                    family=DESCRIPTIVE,
                    seeds=1,
                    seed=x.summary.seed,
                    estimate=result["difference"],
                    p=result["p"],
                )
            )
    return rows


def _correct(tests: list[TestRow], families: TestFamilies) -> None:
    """Each test's family and its Holm-adjusted p: the primary test within the planned primary or secondary family
    (a member without a result counting as p = 1), the two-level bootstrap among its own, and each per-seed test
    among the tests of its kind."""
    for row in tests:
        if row.test == PRIMARY_TEST:
            row.family = families.family_of(row) or SECONDARY
    for family in (PRIMARY, SECONDARY):
        members = [row for row in tests if row.test == PRIMARY_TEST and row.family == family]
        size = max(families.size(family), len(members))
        for row, adjusted in zip(members, holm([row.p for row in members], size)):
            row.p_holm = adjusted
    others = [row for row in tests if row.test != PRIMARY_TEST]
    for row, adjusted in zip(others, holm_by_family([row.p for row in others], [row.test for row in others])):
        row.p_holm = adjusted
    for row in tests:
        row.significant = bool(row.p_holm < ALPHA)


_FAMILY_ORDER = {PRIMARY: 0, SECONDARY: 1, SENSITIVITY: 2, DESCRIPTIVE: 3}


def _test_order(row: TestRow) -> tuple:
    """stats.csv's order: per dataset and N, the primary family, the secondary, the sensitivity checks, then the
    per-seed tests."""
    return (row.dataset, *_sortable(row.per_class), _FAMILY_ORDER[row.family], row.a, row.b, row.test, row.seed or 0)


def per_seed_tests(
    task: str,
    targets: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    correct_a: np.ndarray | None,
    correct_b: np.ndarray | None,
) -> list[tuple[str, str, dict]]:
    """(test, metric, result) for two models on the same images: DeLong on binary AUROC, exact McNemar on the
    saved calls (single-label tasks)."""
    tests = []
    if task == "binary":
        tests.append(("DeLong", "auroc", delong_test(targets, probs_a[:, 1], probs_b[:, 1])))
    if correct_a is not None and correct_b is not None:  # single-label tasks keep their calls
        tests.append(("McNemar", "accuracy", mcnemar_test(correct_a, correct_b)))
    return tests


def power_rows(comparison: Comparison, seeds: tuple[int, ...] = PLANNED_SEEDS) -> list[PowerRow]:
    """Per primary comparison: the minimum difference it can detect at 80 % power, at its own seeds and at
    ``seeds``, from its measured SE_pat and SD_seed (Holm's first step over the primary family)."""
    family = comparison.tests(PRIMARY)
    size = max(comparison.families.size(PRIMARY) if comparison.families else 0, len(family), 1)
    rows = []
    for row in family:
        if np.isnan(row.sd_seed):
            continue  # one seed: the variance between seeds is not known
        counts = sorted({row.seeds, *seeds})
        rows.append(
            PowerRow(
                dataset=row.dataset,
                per_class=row.per_class,
                a=row.a,
                b=row.b,
                seeds=row.seeds,
                se_patient=row.se_patient,
                sd_seed=row.sd_seed,
                family_size=size,
                detectable={n: minimum_detectable_difference(row.se_patient, row.sd_seed, n, size) for n in counts},
            )
        )
    return rows


def planned_power(
    comparison: Comparison | None, seeds: int, family_size: int, test_counts: list[int] | None, metric: str
) -> PowerPlan:
    """A study's power at its planned seeds and family: from the medians of its finished primary comparisons'
    SE_pat and SD_seed where there are any with two or more seeds, else from stated defaults (``test_counts``: a
    binary test set's negatives and positives, for Hanley & McNeil's SE)."""
    measured = [row for row in comparison.tests(PRIMARY) if row.seeds > 1] if comparison else []
    if measured:
        return PowerPlan(
            seeds,
            family_size,
            float(np.median([row.se_patient for row in measured])),
            float(np.median([row.sd_seed for row in measured])),
            f"medians over the study's {len(measured)} primary comparisons with finished runs",
            metric,
        )
    assumed = f"assumed before any run: SD between seeds {DEFAULT_SD_SEED} as measured on the Kermany pack at 64 px"
    if test_counts is not None and len(test_counts) == 2:
        negatives, positives = test_counts
        return PowerPlan(
            seeds,
            family_size,
            planning_se_patient(positives, negatives),
            DEFAULT_SD_SEED,
            f"{assumed}; SE test set by Hanley & McNeil for {negatives} + {positives} test images at AUROC "
            f"{PLANNING_AUROC}, two arms correlated 0.5",
            metric,
        )
    return PowerPlan(
        seeds, family_size, DEFAULT_SE_PATIENT, DEFAULT_SD_SEED, f"{assumed}; SE test set {DEFAULT_SE_PATIENT}", metric
    )


def runs_frame(rows: list[RunRow]) -> pd.DataFrame:
    return pd.DataFrame([asdict(row) for row in rows])


def groups_frame(rows: list[GroupRow]) -> pd.DataFrame:
    """groups.csv: one row per group, each estimate flattened to ``<metric>``, ``<metric>_low``, ... columns."""
    flat = []
    for row in rows:
        values = {k: v for k, v in asdict(row).items() if k not in ("value", "thresholded") and v is not None}
        for name, estimate in {"value": row.value, **row.thresholded}.items():
            values |= {
                name: estimate.mean,
                f"{name}_low": estimate.ci_low,
                f"{name}_high": estimate.ci_high,
                f"{name}_sd_seed": estimate.sd_seed,
                f"{name}_se_patient": estimate.se_patient,
            }
        flat.append(values)
    return pd.DataFrame(flat)


def tests_frame(rows: list[TestRow]) -> pd.DataFrame:
    """stats.csv: one row per test; the per-seed differences as one space-separated column."""
    frame = pd.DataFrame([asdict(row) for row in rows], columns=[f for f in TestRow.__dataclass_fields__])
    frame["per_seed"] = [" ".join(f"{d:+.4f}" for d in row.per_seed) for row in rows]
    return frame


def power_frame(rows: list[PowerRow]) -> pd.DataFrame:
    flat = []
    for row in rows:
        values = {k: v for k, v in asdict(row).items() if k != "detectable"}
        flat.append(values | {f"detectable_{n}_seeds": value for n, value in row.detectable.items()})
    return pd.DataFrame(flat)


def compare_models(
    model_paths: dict[str, str | os.PathLike], dataset_root: str | os.PathLike, split: str = "test", **options
) -> dict:
    """The seed project's call: evaluate each checkpoint on the same data, tabulate the headline metrics with
    their intervals, and test every pair (DeLong for binary AUROC, McNemar for accuracy; Holm-corrected). These
    compare single trained models, not training pipelines: for arms, train seeds and use ``compare_runs``."""
    from lowmed.evaluation.evaluate import evaluate

    reports = {
        name: evaluate(None, checkpoint=str(path), data=dataset_root, split=split, **options)
        for name, path in model_paths.items()
    }
    tables = {name: by_path(pd.read_csv(report.folder.predictions)) for name, report in reports.items()}
    arrays = {
        name: prediction_arrays(tables[name], report, report.dataset["prepared_dir"])
        for name, report in reports.items()
    }
    rows = []
    for a, b in combinations(reports, 2):
        task = reports[a].task
        (targets, probs_a, _), (_, probs_b, _) = arrays[a], arrays[b]
        correct_a, correct_b = correct_calls(tables[a], task), correct_calls(tables[b], task)
        for test, _, result in per_seed_tests(task, targets, probs_a, probs_b, correct_a, correct_b):
            rows.append({"a": a, "b": b, "test": test, **result})
    for row, adjusted in zip(rows, holm_by_family([row["p"] for row in rows], [row["test"] for row in rows])):
        row["p_holm"] = adjusted
    return {
        "metrics": {name: report.metrics for name, report in reports.items()},
        "ci95": {name: report.ci95 for name, report in reports.items()},
        "tests": rows,
    }
