"""The runs a comparison reads: each completed run with its evaluation on the compared split, and what the runs
say about themselves (tuned or not, pretraining overlap, runs that did not learn).

A run belongs to the arm it was trained as (``--arm``, or a study arm's name; runs from before arms had names are
"A scratch", "B ImageNet" or "C medical" by their weights). Runs are told apart by dataset (the hash of its
prepared manifest), arm, model, per-class N and seed; two runs that claim the same place are an error, never
averaged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from lowmed.contracts import EvalReport, RunDir, SkippedRun, TrainSummary, TuningRecord
from lowmed.data.loading import label_tensors
from lowmed.data.manifest import read_info
from lowmed.errors import LowmedError

log = logging.getLogger(__name__)

# a run whose checkpoint's validation AUROC is below this did not learn: its comparisons say nothing about pretraining
LEARNED_AUROC = 0.55


@dataclass
class Run:
    """One completed run with its evaluation on the compared split."""

    run: RunDir
    summary: TrainSummary
    report: EvalReport
    predictions: pd.DataFrame
    dataset: str = ""  # the dataset's display name, unique among the compared datasets (set by name_datasets)

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
        return by_path(self.predictions)

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Targets, probabilities and loss mask, in ``table`` order."""
        return prediction_arrays(self.table, self.report, self.summary.dataset.prepared_dir)

    @cached_property
    def predicted(self) -> np.ndarray | None:
        """The saved call for each image (class index, at the evaluation's threshold); none for multi-label."""
        if self.report.task == "multilabel":
            return None
        return self.table["predicted"].map({name: k for k, name in enumerate(self.report.classes)}).to_numpy()

    @cached_property
    def correct(self) -> np.ndarray | None:
        return correct_calls(self.table, self.report.task)

    @cached_property
    def not_learned(self) -> str:
        """Empty for a run that learned; else what shows it did not: the checkpoint it was evaluated with had a
        validation AUROC near chance (early stopping can keep an epoch-1 model while later epochs learned)."""
        best = self.summary.best
        auroc = best.metrics.get("val_auroc") if best else None
        if best is None or auroc is None or np.isnan(auroc) or auroc >= LEARNED_AUROC:
            return ""
        return (
            f"did not learn: stopped at epoch {self.summary.epochs_run}; its checkpoint (epoch {best.epoch}) has "
            f"val AUROC {auroc:.3f}"
        )

    @cached_property
    def tuning(self) -> TuningRecord | None:
        return self.run.read_tuning()


def by_path(predictions: pd.DataFrame) -> pd.DataFrame:
    return predictions.sort_values("path", kind="stable").reset_index(drop=True)


def correct_calls(table: pd.DataFrame, task: str) -> np.ndarray | None:
    """Whether each saved call (at the evaluation's threshold) was right; multi-label predictions make none."""
    return None if task == "multilabel" else (table["predicted"] == table["label"]).to_numpy()


def prediction_arrays(
    table: pd.DataFrame, report: EvalReport, prepared_dir: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Targets, probabilities and (multi-label) loss mask from a predictions table and its metrics.json."""
    task, classes = report.task, report.classes
    probs = table[[f"prob:{c}" for c in classes]].to_numpy(dtype=float)
    if task == "multilabel":
        truth = table[[f"true:{c}" for c in classes]].set_axis(classes, axis=1)
        targets, mask = label_tensors(truth, task, classes, read_info(prepared_dir).uncertain_policy)
        assert mask is not None  # multi-label targets come with the mask of their known labels
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
    external: str | None = None,
) -> tuple[list[Run], list[SkippedRun]]:
    """Completed runs with their evaluations (made on the fly where missing, except on an ``external`` set, whose
    data lowmed cannot know), and the runs left out, with why."""
    runs, skipped = [], []
    for run in run_dirs:
        summary = run.read_summary()
        if summary.tuning_trial is not None or summary.kind != "supervised":
            continue  # a tuning trial (chosen on validation, never evaluated), or a self-supervised pretraining
        if not summary.completed:
            skipped.append(SkippedRun(run=str(run.path), reason=f"status {summary.status_label}, not completed"))
            continue
        evaluation = run.evaluation(split, external)
        if not evaluation.exists() and external is not None:
            skipped.append(
                SkippedRun(
                    run=str(run.path),
                    reason=f"not evaluated on the external test set {external}; run: lowmed evaluate {run.path} "
                    f"--data DIR (DIR: the prepared set, a folder named {external})",
                )
            )
            continue
        if not evaluation.exists():
            if not evaluate_missing:
                skipped.append(
                    SkippedRun(
                        run=str(run.path),
                        reason=f"no evaluation on {split}; run: lowmed evaluate {run.path} --split {split}",
                    )
                )
                continue
            from lowmed.evaluation.evaluate import evaluate

            evaluate(run.path, split=split, bootstrap=bootstrap)
        runs.append(Run(run, summary, evaluation.read_report(), pd.read_csv(evaluation.predictions)))
    for item in skipped:
        log.warning(f"{item.run} left out: {item.reason}")
    return runs, skipped


def name_datasets(runs: list[Run]) -> None:
    """Each run's dataset by its folder's name, with a hash prefix where two different datasets share a name."""
    identities: dict[str, set[str]] = {}
    for run in runs:
        identities.setdefault(run.summary.dataset.name, set()).add(run.summary.dataset.identity)
    for run in runs:
        reference = run.summary.dataset
        run.dataset = (
            reference.name if len(identities[reference.name]) == 1 else f"{reference.name}@{reference.identity[:8]}"
        )


def check_one_run_per_place(runs: list[Run]) -> None:
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
