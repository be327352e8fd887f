"""``lowmed compare``: runs side by side, aggregated over seeds, with paired tests between arms.

A run belongs to the arm it was trained as (``--arm``, or a study arm's name; runs from before arms had names are
"A scratch", "B ImageNet" or "C medical" by their weights). Runs are told apart by dataset (the hash of its
prepared manifest), arm, model, per-class N and seed; two runs that claim the same place are an error, never
averaged. Two arms are compared where they were evaluated on the same test images of the same dataset at the same
N; seeds pair up, since one seed draws the same training subset for every arm. Every pair of arms is tested; with a
baseline arm (``--baseline``, or the one arm trained from scratch) each other arm is set against it (other −
baseline). The primary test of a pair is a paired bootstrap over patients (lesions for HAM10000) of the
seed-averaged metric difference; DeLong (AUROC, binary tasks) and McNemar (accuracy at the saved thresholds) are
reported per seed. Each family of tests is Holm-corrected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lowmed.config import check_seed
from lowmed.console import track, warn
from lowmed.contracts import (
    Comparison,
    ComparisonDir,
    EvalDir,
    EvalReport,
    RunDir,
    TrainSummary,
    TuningRecord,
    find_run_dirs,
)
from lowmed.data.loading import label_tensors
from lowmed.data.manifest import read_info
from lowmed.errors import LowmedError
from lowmed.evaluation.evaluate import evaluate
from lowmed.evaluation.metrics import accuracy, auroc, compute_metrics
from lowmed.evaluation.plots import plot_learning_curves
from lowmed.evaluation.stats import delong_test, holm_by_family, mcnemar_test, paired_bootstrap
from lowmed.io import check_writable, write_csv, write_text
from lowmed.saliency.arms import explain_arms
from lowmed.saliency.lesions import read_lesions
from lowmed.saliency.maps import UNCHANGED_CORRELATION, check_method

ALPHA = 0.05
PRIMARY_TEST = "paired bootstrap (seed-averaged)"
# a run whose checkpoint's validation AUROC is below this did not learn: its comparisons say nothing about pretraining
LEARNED_AUROC = 0.55


@dataclass
class Run:
    """One completed run with its evaluation on the compared split."""

    run: RunDir
    summary: TrainSummary
    report: EvalReport
    predictions: pd.DataFrame
    dataset: str = ""  # the dataset's display name, unique among the compared datasets (set by compare_runs)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def arm(self) -> str:
        return self.summary.arm

    @property
    def entity(self) -> str:
        """What a paired test compares: an arm's runs of one model."""
        return f"{self.arm} · {self.summary.model}"

    @property
    def place(self) -> tuple:
        """Where a run sits in the comparison; no two runs may share one."""
        return (
            self.summary.dataset.identity,
            self.arm,
            self.summary.model,
            self.summary.dataset.per_class,
            self.summary.seed,
        )

    @cached_property
    def table(self) -> pd.DataFrame:
        """predictions.csv sorted by path: the row order every paired comparison uses."""
        return _by_path(self.predictions)

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Targets, probabilities and loss mask, in ``table`` order."""
        return _prediction_arrays(self.table, self.report, self.summary.dataset.prepared_dir)

    @cached_property
    def correct(self) -> np.ndarray | None:
        return _correct_calls(self.table, self.report.task)

    @cached_property
    def not_learned(self) -> str:
        """Empty for a run that learned; else what shows it did not: the checkpoint it was evaluated with had a
        validation AUROC near chance (early stopping can keep an epoch-1 model while later epochs learned)."""
        best = self.summary.best or {}
        auroc = (best.get("metrics") or {}).get("val_auroc")
        if auroc is None or np.isnan(auroc) or auroc >= LEARNED_AUROC:
            return ""
        return (
            f"did not learn: stopped at epoch {self.summary.epochs_run}; its checkpoint (epoch {best['epoch']}) has "
            f"val AUROC {auroc:.3f}"
        )

    @cached_property
    def tuning(self) -> TuningRecord | None:
        return self.run.read_tuning()


def _by_path(predictions: pd.DataFrame) -> pd.DataFrame:
    return predictions.sort_values("path", kind="stable").reset_index(drop=True)


def _correct_calls(table: pd.DataFrame, task: str) -> np.ndarray | None:
    """Whether each saved call (at the evaluation's threshold) was right; multi-label predictions make none."""
    return None if task == "multilabel" else (table["predicted"] == table["label"]).to_numpy()


def _prediction_arrays(
    table: pd.DataFrame, report: EvalReport, prepared_dir: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Targets, probabilities and (multi-label) loss mask from a predictions table and its metrics.json."""
    task, classes = report.task, report.classes
    probs = table[[f"prob:{c}" for c in classes]].to_numpy(dtype=float)
    if task == "multilabel":
        truth = table[[f"true:{c}" for c in classes]].set_axis(classes, axis=1)
        targets, mask = label_tensors(truth, task, classes, read_info(prepared_dir).uncertain_policy)
        return targets.numpy(), probs, mask.numpy()
    targets, _ = label_tensors(table, task, classes)
    return targets.numpy(), probs, None


def headline_name(task: str, metric: str) -> str:
    """``auroc`` means the task's headline AUROC: binary, macro one-vs-rest, or mean over findings."""
    if metric == "auroc":
        return {"binary": "auroc", "multiclass": "macro_auroc", "multilabel": "mean_auroc"}[task]
    return metric


def load_runs(
    run_dirs: list[RunDir],
    split: str,
    evaluate_missing: bool,
    bootstrap: int,
    quiet: bool,
    external: str | None = None,
) -> tuple[list[Run], list[dict]]:
    """Completed runs with their evaluations (made on the fly where missing, except on an ``external`` set, whose
    data lowmed cannot know), and the runs left out, with why."""
    runs, skipped = [], []
    for run in run_dirs:
        summary = run.read_summary()
        if summary.tuning_trial is not None:
            continue  # a tuning trial: chosen on validation, never evaluated on the compared split
        if not summary.completed:
            skipped.append({"run": str(run.path), "reason": f"status {summary.status_label}, not completed"})
            continue
        evaluation = run.evaluation(split, external)
        if not evaluation.exists() and external is not None:
            skipped.append(
                {
                    "run": str(run.path),
                    "reason": f"not evaluated on the external test set {external}; run: lowmed evaluate {run.path} "
                    f"--data DIR (DIR: the prepared set, a folder named {external})",
                }
            )
            continue
        if not evaluation.exists():
            if not evaluate_missing:
                skipped.append(
                    {
                        "run": str(run.path),
                        "reason": f"no evaluation on {split}; run: lowmed evaluate {run.path} --split {split}",
                    }
                )
                continue
            evaluate(run.path, split=split, bootstrap=bootstrap, quiet=quiet)
        runs.append(Run(run, summary, evaluation.read_report(), pd.read_csv(evaluation.predictions)))
    return runs, skipped


def _name_datasets(runs: list[Run]) -> None:
    """Each run's dataset by its folder's name, with a hash prefix where two different datasets share a name."""
    identities: dict[str, set[str]] = {}
    for run in runs:
        identities.setdefault(run.summary.dataset.name, set()).add(run.summary.dataset.identity)
    for run in runs:
        reference = run.summary.dataset
        run.dataset = (
            reference.name if len(identities[reference.name]) == 1 else f"{reference.name}@{reference.identity[:8]}"
        )


def _check_one_run_per_place(runs: list[Run]) -> None:
    first: dict[tuple, Run] = {}
    for run in runs:
        other = first.setdefault(run.place, run)
        if other is not run:
            raise LowmedError(
                f"{other.path} and {run.path} are the same comparison cell (dataset {run.dataset}, arm {run.arm!r}, "
                f"model {run.summary.model}, N {run.summary.dataset.per_class}, seed {run.summary.seed}); "
                "train one of them with another --arm, or compare them separately"
            )


def choose_baseline(runs: list[Run], requested: str | None) -> str | None:
    """The arm the others are set against: the one asked for, else the one arm trained from scratch, else none."""
    arms = sorted({run.arm for run in runs})
    if requested is not None:
        if requested not in arms:
            raise LowmedError(
                f"--baseline {requested!r}: no such arm among the runs; they have {', '.join(map(repr, arms))}"
            )
        return requested
    scratch = sorted({run.arm for run in runs if run.summary.weight_source == "none"})
    return scratch[0] if len(scratch) == 1 else None


def _metric_on(task: str, classes: list[str], name: str, targets, probs, mask, threshold) -> float:
    """One metric on (resampled) predictions; the AUROCs and multi-class accuracy by their fast paths."""
    if name in ("auroc", "macro_auroc", "mean_auroc"):
        return auroc(task, targets, probs, mask)
    if name == "accuracy" and task == "multiclass":
        return accuracy(task, targets, probs)
    return compute_metrics(task, classes, targets, probs, mask, threshold).metrics[name]


def compare_runs(
    paths: list[str | os.PathLike],
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
    explain: str | None = None,
    explain_count: int = 4,
    lesions: str | os.PathLike | None = None,
    device: str = "auto",
    quiet: bool = False,
    external: str | None = None,
) -> Comparison:
    """Compare every completed run below ``paths``; write compare.csv/json/md, stats.csv and learning curves.

    ``external``: compare the runs' evaluations on that external test set (the name of its prepared folder, as
    ``lowmed evaluate RUN --data DIR`` wrote them) instead of on their own dataset's ``split``; the pairs and tests
    are the same, on the external set's images.

    ``explain``: a saliency method; ``explain_count`` test images of each dataset (with a finding; among those
    ``lesions`` boxes, a ``lowmed.saliency.lesions`` CSV, when given) explained by every arm at each N, at the
    lowest seed: a grid PNG per image under ``explain/<method>/``, and per arm the pointing game (with
    ``lesions``) and the model-randomisation check."""
    known = {"dataset", "arm", "model", "per_class", "seed", "weights"}
    if set(by) - known:
        raise LowmedError(f"--by {','.join(by)}: expected fields among {', '.join(sorted(known))}")
    check_seed(seed)
    if explain is not None:
        check_method(explain, explain_count)
    if lesions is not None and explain is None:
        raise LowmedError("--lesions scores saliency maps: give --explain METHOD with it")
    if explain is not None and external is not None:
        raise LowmedError("--explain explains images of the runs' own test split; leave out --external with it")
    boxes = read_lesions(lesions) if lesions is not None else None
    check_writable(Path(out or paths[0]) / "compare.csv", "--out")
    runs, skipped = load_runs(find_run_dirs(paths), split, evaluate_missing, bootstrap, quiet, external)
    if not runs:
        what = (
            f"completed runs evaluated on the external test set {external}" if external else "completed, evaluated runs"
        )
        why = f" ({len(skipped)} left out; {skipped[0]['run']}: {skipped[0]['reason']})" if skipped else ""
        raise LowmedError(f"no {what} found below {', '.join(map(str, paths))}{why}")
    _name_datasets(runs)
    _check_one_run_per_place(runs)
    baseline = choose_baseline(runs, baseline)
    for item in skipped:
        warn(f"{item['run']} left out: {item['reason']}")
    table = _runs_table(runs, metric)
    groups = _aggregate(table, list(by))
    tests = _paired_tests(runs, metric, baseline, resamples, seed, quiet)
    target = ComparisonDir(Path(out or paths[0]))
    target.path.mkdir(parents=True, exist_ok=True)
    write_csv(target.table, table)
    write_csv(target.stats, tests)
    curves = _aggregate(table.dropna(subset=["per_class"]), ["dataset", "arm", "model", "per_class"])
    figures = plot_learning_curves(target, curves)
    recipes = recipes_statement(runs)
    overlap = overlap_statement(runs)
    learning = learning_statement(runs)
    attention = (
        explain_arms(runs, explain, explain_count, target.explanations(explain), boxes, seed, device, quiet)
        if explain is not None
        else []
    )
    comparison = Comparison(
        split=split,
        metric=metric,
        baseline=baseline,
        runs=table.to_dict("records"),
        groups=groups.to_dict("records"),
        comparisons=tests.to_dict("records"),
        skipped=skipped,
        figures=[str(f) for f in figures],
        recipes=recipes,
        overlap=overlap,
        learning=learning,
        attention=attention,
        by=list(by),
        resamples=resamples,
        seed=seed,
        external=external,
        out=str(target.path),
    )
    comparison.write(target.record)
    notes = "\n\n".join(filter(None, (recipes, overlap, learning)))
    write_text(
        target.markdown,
        markdown_report(table, groups, tests, metric, baseline, notes, external) + attention_markdown(attention),
    )
    return comparison


def _runs_table(runs: list[Run], metric: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        name = headline_name(run.report.task, metric)
        if name not in run.report.metrics:
            raise LowmedError(
                f"--metric {metric}: {run.path} has no such metric; it has {', '.join(run.report.metrics)}"
            )
        low, high = run.report.ci95.get(name) or [np.nan, np.nan]
        summary = run.summary
        rows.append(
            {
                "run": str(run.path),
                "dataset": run.dataset,
                "dataset_sha256": summary.dataset.identity,
                "task": run.report.task,
                "arm": run.arm,
                "model": summary.model,
                "weights": summary.weights.path or summary.weight_source,
                "per_class": summary.dataset.per_class,
                "seed": summary.seed,
                "metric": name,
                "value": run.report.metrics[name],
                "ci_low": low,
                "ci_high": high,
                "accuracy": run.report.metrics.get("accuracy", np.nan),
                "balanced_accuracy": run.report.metrics.get("balanced_accuracy", np.nan),
                "n_test": run.report.n,
                "train_seconds": summary.epoch_seconds_total if summary.epoch_seconds_total is not None else np.nan,
                "epochs": summary.epochs_run,
                "recipe": run.tuning.recipe() if run.tuning else "fixed",
                "pretraining_overlap": (summary.pretraining_overlap or {}).get("status", "not known"),
                "not_learned": run.not_learned,
            }
        )
    return pd.DataFrame(rows).sort_values(["dataset", "per_class", "arm", "model", "seed"], na_position="first")


def _aggregate(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, SD, n and a t-interval of the mean over seeds (the run's own bootstrap interval when n = 1)."""
    rows = []
    for keys, part in table.groupby(by, dropna=False, sort=True):
        values = part["value"].to_numpy(dtype=float)
        n = len(values)
        mean, sd = float(values.mean()), float(values.std(ddof=1)) if n > 1 else float("nan")
        if n > 1:  # every metric compared here lies in [0, 1]; a t-interval of few seeds can overshoot that
            half = scipy_stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
            low, high, kind = max(0.0, mean - half), min(1.0, mean + half), "t over seeds"
        else:
            low, high, kind = part["ci_low"].iloc[0], part["ci_high"].iloc[0], "bootstrap (one run)"
        rows.append(
            {
                **dict(zip(by, keys if isinstance(keys, tuple) else (keys,))),
                "metric": part["metric"].iloc[0],
                "mean": mean,
                "sd": sd,
                "n": n,
                "ci_low": low,
                "ci_high": high,
                "interval": kind,
                "train_seconds": float(part["train_seconds"].mean()),
                "recipe": " | ".join(sorted(set(part["recipe"]))),
            }
        )
    return pd.DataFrame(rows)


def _paired_tests(
    runs: list[Run], metric: str, baseline: str | None, resamples: int, seed: int, quiet: bool
) -> pd.DataFrame:
    """Every pair of arms/models on the same dataset, N and test images, the baseline arm as ``b``; Holm within each
    family of tests."""
    cells: dict[tuple, dict[str, dict[int, Run]]] = {}
    arm_of: dict[str, str] = {}
    for run in runs:
        key = (run.dataset, run.summary.dataset.per_class, run.report.split)
        cells.setdefault(key, {}).setdefault(run.entity, {})[run.summary.seed] = run
        arm_of[run.entity] = run.arm
    jobs = []
    for key, entities in cells.items():
        for a, b in combinations(sorted(entities), 2):
            if arm_of[a] == baseline and arm_of[b] != baseline:
                a, b = b, a  # the difference reads as other arm − baseline
            jobs.append((key, a, b))
    rows = []
    for key, a, b in track(jobs, len(jobs), "Paired tests", quiet):
        by_seed_a, by_seed_b = cells[key][a], cells[key][b]
        pairs = [(by_seed_a[s], by_seed_b[s]) for s in sorted(set(by_seed_a) & set(by_seed_b))]
        pairs = [(x, y) for x, y in pairs if x.table["path"].equals(y.table["path"])]
        if pairs:
            vs_baseline = arm_of[b] == baseline and arm_of[a] != baseline
            rows += [
                {**row, "vs_baseline": vs_baseline}
                for row in _tests_for_pair(key[0], key[1], a, b, pairs, metric, resamples, seed)
            ]
    tests = pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "per_class",
            "a",
            "b",
            "test",
            "seeds",
            "metric",
            "estimate",
            "ci_low",
            "ci_high",
            "p",
            "vs_baseline",
        ],
    )
    tests["p_holm"] = holm_by_family(tests["p"].tolist(), tests["test"].tolist())
    tests["significant"] = tests["p_holm"] < ALPHA
    return tests.sort_values(
        ["dataset", "per_class", "vs_baseline", "a", "b", "test", "seeds"],
        ascending=[True, True, False, True, True, True, True],
        kind="stable",
    ).reset_index(drop=True)


def _tests_for_pair(
    dataset, per_class, a: str, b: str, pairs: list[tuple[Run, Run]], metric: str, resamples: int, seed: int
) -> list[dict]:
    task, classes = pairs[0][0].report.task, pairs[0][0].report.classes
    name = headline_name(task, metric)
    arrays = [(x.arrays, y.arrays, x.report.threshold, y.report.threshold) for x, y in pairs]
    (targets, _, mask), _, _, _ = arrays[0]
    groups = pairs[0][0].table["group"].to_numpy()
    strata = targets if task != "multilabel" else (targets > 0).any(axis=1)

    def seed_averaged_difference(indices: np.ndarray) -> float:
        differences = [
            _metric_on(task, classes, name, ta[indices], pa[indices], None if ma is None else ma[indices], cut_a)
            - _metric_on(task, classes, name, tb[indices], pb[indices], None if mb is None else mb[indices], cut_b)
            for (ta, pa, ma), (tb, pb, mb), cut_a, cut_b in arrays
        ]
        return float(np.mean(differences))

    base = {"dataset": dataset, "per_class": per_class, "a": a, "b": b, "metric": name}
    everything = np.arange(len(targets))
    estimate = seed_averaged_difference(everything)
    boot = paired_bootstrap(seed_averaged_difference, groups, np.asarray(strata), resamples, seed)
    rows = [{**base, "test": PRIMARY_TEST, "seeds": len(pairs), "estimate": estimate, **boot}]
    for (x, y), ((tx, px, _), (_, py, _), _, _) in zip(pairs, arrays):
        for test, test_metric, result in _per_seed_tests(task, tx, px, py, x.correct, y.correct):
            rows.append(
                {
                    **base,
                    "metric": test_metric,
                    "test": test,
                    "seeds": x.summary.seed,
                    "estimate": result["difference"],
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "p": result["p"],
                }
            )
    return rows


def _per_seed_tests(
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
    if task != "multilabel":
        tests.append(("McNemar", "accuracy", mcnemar_test(correct_a, correct_b)))
    return tests


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def format_p(p: float) -> str:
    if p is None or np.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def recipes_statement(runs: list[Run]) -> str:
    """Whether the compared arms were tuned: with one fixed recipe, the comparison answers "which arm does best
    with these options", a narrower question than with every arm tuned alike."""
    tuned = {run.arm: run.tuning for run in runs if run.tuning}
    fixed = sorted({run.arm for run in runs if not run.tuning})
    if not tuned:
        return (
            "Recipes: not tuned; every run trained with its configured options (one fixed recipe answers which "
            "arm does best with these options)."
        )
    budgets = sorted({record.budget for record in tuned.values()})
    metrics = sorted({record.metric for record in tuned.values()})
    how = (
        f"{' / '.join(map(str, budgets))} trials per cell, chosen by {' / '.join(metrics)} on the validation "
        "split only; the values chosen are in the recipe column"
    )
    if fixed:
        return (
            f"Recipes: mixed; arms {', '.join(sorted(tuned))} were tuned ({how}), arms {', '.join(fixed)} were "
            "not, so a difference between them may be the tuning's, not the arm's."
        )
    if len(budgets) > 1:
        return f"Recipes: every arm tuned, but with different budgets ({how}); the budgets are not equal."
    return f"Recipes: every arm tuned with the same budget ({how})."


def overlap_statement(runs: list[Run]) -> str:
    """Arms whose pretraining data may include the target's source (known for torchxrayvision weights)."""
    flagged: dict[str, tuple] = {}
    for run in runs:
        overlap = run.summary.pretraining_overlap or {}
        if overlap.get("status") == "possible":
            flagged[run.arm] = (run.summary.weights.name, overlap["target"], overlap["weights_trained_on"])
    if not flagged:
        return ""
    arms = "; ".join(
        f"arm {arm} ({weights}: pretrained on {', '.join(datasets)}, which includes {target})"
        for arm, (weights, target, datasets) in sorted(flagged.items())
    )
    return (
        f"Pretraining overlap possible: {arms}. Its test images may have been seen in pretraining, so its results "
        "may be optimistic."
    )


def learning_statement(runs: list[Run]) -> str:
    """The runs that did not learn, by name, so that no difference they make is read as an effect of pretraining."""
    flagged = [run for run in runs if run.not_learned]
    if not flagged:
        return ""
    listed = "; ".join(f"{run.path.name} ({run.not_learned})" for run in flagged)
    return (
        f"Did not learn ({len(flagged)} of {len(runs)} runs; validation AUROC of the checkpoint below "
        f"{LEARNED_AUROC}): {listed}. Comparisons that include them measure a failed training, not the effect of "
        "pretraining."
    )


def markdown_report(
    table: pd.DataFrame,
    groups: pd.DataFrame,
    tests: pd.DataFrame,
    metric: str,
    baseline: str | None,
    notes: str,
    external: str | None = None,
) -> str:
    """``notes``: what the reader needs before the numbers (whether the arms were tuned, pretraining overlap)."""
    title = f"# lowmed compare — {metric}" + (f", on the external test set {external}" if external else "")
    lines = [title, "", notes, "", "## Groups (mean over seeds, 95 % interval)", ""]
    lines += groups_markdown(groups)
    against = (
        f"every other arm against the baseline arm {baseline} (b), then the remaining pairs"
        if baseline
        else "every pair of arms; no baseline arm"
    )
    lines += ["", "## Paired comparisons (a − b; Holm-adjusted within each test)", "", f"Pairs: {against}.", ""]
    lines += tests_markdown(tests)
    lines += ["", f"{len(table)} runs."]
    return "\n".join(lines) + "\n"


def attention_markdown(attention: list[dict]) -> str:
    """compare.md's section on ``--explain``: per arm and N, the pointing game and the randomisation check."""
    if not attention:
        return ""
    method, seeds = attention[0]["method"], sorted({row["seed"] for row in attention})
    lines = [
        "",
        f"## What each arm looks at ({method})",
        "",
        f"The same test images explained by every arm at seed {', '.join(map(str, seeds))}: one grid per image in "
        f"explain/{method}/. Pointing game: the share of images whose map peaks inside a lesion box (chance: the "
        "share of the image the boxes cover). Randomisation: the rank correlation ρ of the arm's maps with those of "
        "the same network re-initialised (two re-initialised networks: the reference); maps at "
        f"|ρ| ≥ {UNCHANGED_CORRELATION} barely depend on what was learned.",
        "",
        "| dataset | N/class | arm | model | images | pointing game [chance] | ρ randomised (reference) | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in attention:
        pointing = (
            "—"
            if row["hits"] is None
            else f"{row['hits']}/{row['images']} = {row['pointing_game']:.2f} [{row['chance']:.2f}]"
        )
        lines.append(
            f"| {row['dataset']} | {row['per_class'] or 'all'} | {row['arm']} | {row['model']} | {row['images']} | "
            f"{pointing} | {_fmt(row['rank_correlation_randomised'], 2)} ({_fmt(row['reference'], 2)}) | "
            f"{'yes' if row['flagged'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def groups_markdown(groups: pd.DataFrame) -> list[str]:
    """The seed aggregates as a Markdown table."""
    columns = [
        c for c in groups.columns if c not in ("metric", "ci_low", "ci_high", "interval", "sd", "mean", "recipe")
    ]
    lines = ["| " + " | ".join([*columns, "metric", "mean [95 % CI]", "SD", "recipe"]) + " |"]
    lines.append("|" + "---|" * (len(columns) + 4))
    for row in groups.to_dict("records"):
        cells = [str(row[c]) if not isinstance(row[c], float) else _fmt(row[c], 1) for c in columns]
        cells += [
            row["metric"],
            f"{_fmt(row['mean'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
            _fmt(row["sd"]),
            row["recipe"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def tests_markdown(tests: pd.DataFrame) -> list[str]:
    """The paired tests as a Markdown table."""
    lines = [
        "| dataset | N/class | a | b | test | seeds | metric | difference [95 % CI] | p | p (Holm) | significant |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in tests.to_dict("records"):
        interval = "" if np.isnan(row["ci_low"]) else f" [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        lines.append(
            f"| {row['dataset']} | {row['per_class']} | {row['a']} | {row['b']} | {row['test']} | "
            f"{row['seeds']} | {row['metric']} | {_fmt(row['estimate'])}{interval} | {format_p(row['p'])} | "
            f"{format_p(row['p_holm'])} | {'yes' if row['significant'] else 'no'} |"
        )
    return lines


def compare_models(
    model_paths: dict[str, str | os.PathLike], dataset_root: str | os.PathLike, split: str = "test", **options
) -> dict:
    """The seed project's call: evaluate each checkpoint on the same data, tabulate the headline metrics with
    their intervals, and test every pair (DeLong for binary AUROC, McNemar for accuracy; Holm-corrected)."""
    reports = {
        name: evaluate(None, checkpoint=str(path), data=dataset_root, split=split, **options)
        for name, path in model_paths.items()
    }
    tables = {name: _by_path(pd.read_csv(EvalDir(Path(report.out)).predictions)) for name, report in reports.items()}
    arrays = {
        name: _prediction_arrays(tables[name], report, report.dataset["prepared_dir"])
        for name, report in reports.items()
    }
    rows = []
    for a, b in combinations(reports, 2):
        task = reports[a].task
        (targets, probs_a, _), (_, probs_b, _) = arrays[a], arrays[b]
        correct_a, correct_b = _correct_calls(tables[a], task), _correct_calls(tables[b], task)
        for test, _, result in _per_seed_tests(task, targets, probs_a, probs_b, correct_a, correct_b):
            rows.append({"a": a, "b": b, "test": test, **result})
    for row, adjusted in zip(rows, holm_by_family([row["p"] for row in rows], [row["test"] for row in rows])):
        row["p_holm"] = adjusted
    return {
        "metrics": {name: report.metrics for name, report in reports.items()},
        "ci95": {name: report.ci95 for name, report in reports.items()},
        "tests": rows,
    }
