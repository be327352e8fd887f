"""The report's reporting checklist, filled from the study's own records, so that a reviewer can hold the study
against TRIPOD+AI (Collins et al. 2024) and CLAIM (Tejani et al. 2024): where the data came from and which images
were eligible, how it was partitioned and checked for leakage, why this many seeds and test images, the
preprocessing, the initial weights by name and SHA-256, how hyperparameters were chosen, the metrics and tests,
calibration, a failure analysis and the exact software and command. Its two figures (a reliability diagram per
dataset and the most confident errors of the best arm) are drawn here too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import lowmed
from lowmed.comparison.render import interval_text, method_sentence
from lowmed.comparison.statistics import PowerPlan
from lowmed.contracts import (
    PRIMARY,
    SECONDARY,
    SENSITIVITY,
    Comparison,
    GroupRow,
    RunDir,
    SelfSupervisedRecord,
    StudyLog,
    TrainSummary,
)
from lowmed.data.augment import MAX_INTENSITY, MAX_ROTATION_DEG, MAX_SCALE, MAX_SHIFT
from lowmed.data.manifest import read_info
from lowmed.experiment.plan import PlannedPretraining, PlannedRun
from lowmed.experiment.portable import PortablePaths
from lowmed.experiment.study import Study

FAILURES_SHOWN = 8


@dataclass
class ReportInputs:
    """What the report needs beyond the comparison: how to write paths, the power plan and the figures drawn."""

    portable: PortablePaths
    power: PowerPlan
    figures: dict[str, Path] = field(default_factory=dict)  # failures, reliability-<dataset>: PNGs in the study

    def weights_text(self, weights: str, summary: TrainSummary | None) -> str:
        """Weights by name and SHA-256, never by a path of this machine."""
        if weights in ("none", "auto", "imagenet") or weights.startswith("xrv:"):
            text = "none (random initialisation)" if weights == "none" else weights
        else:
            text = Path(weights).name
        digest = summary.weights.sha256 if summary is not None else None
        return f"{text} (SHA-256 {digest})" if digest else text


def draw_figures(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Per dataset, the reliability diagram of every arm at the largest N (seeds pooled); and the most confident
    errors of the best arm at the largest N of the first dataset. Returns the PNGs written, by name."""
    from lowmed.evaluation.plots import plot_image_grid, plot_reliability_by_arm

    figures = {}
    for dataset, groups in _largest_n(comparison).items():
        arms = {}
        for group in groups:
            tables = [_predictions(row.run, comparison.split) for row in _runs_of(comparison, group)]
            arms[group.entity] = _calibration(pd.concat(tables), comparison.runs[0].task)
        calibrated = {entity: curve for entity, curve in arms.items() if curve is not None}
        if len(calibrated) == len(arms):
            path = out / f"reliability-{dataset}.png"
            title = f"Reliability at N = {groups[0].per_class} per class ({dataset}, seeds pooled)"
            plot_reliability_by_arm(path, calibrated, title)
            figures[f"reliability-{dataset}"] = path
    best = _best_group(comparison)
    if best is not None and comparison.runs[0].task != "multilabel":
        run = min(_runs_of(comparison, best), key=lambda row: row.seed)
        table = _predictions(run.run, comparison.split)
        errors = _confident_errors(table, FAILURES_SHOWN)
        images, captions = [], []
        for row in errors.itertuples():
            image = _thumbnail(Path(row.path))
            if image is not None:
                images.append(image)
                captions.append(f"true {row.label}, called {row.predicted}\np = {row.confidence:.2f}")
        if images:
            path = out / "failures.png"
            plot_image_grid(
                path,
                images,
                captions,
                f"Most confident errors: {best.entity} at N = {best.per_class}, seed {run.seed} ({best.dataset})",
            )
            figures["failures"] = path
    return figures


def _largest_n(comparison: Comparison) -> dict[str, list[GroupRow]]:
    by_dataset: dict[str, list[GroupRow]] = {}
    for group in comparison.groups:
        if group.per_class is not None and group.dataset is not None:
            by_dataset.setdefault(group.dataset, []).append(group)
    return {
        dataset: [g for g in groups if g.per_class == max(g.per_class or 0 for g in groups)]
        for dataset, groups in by_dataset.items()
    }


def _best_group(comparison: Comparison) -> GroupRow | None:
    largest = _largest_n(comparison)
    if not largest:
        return None
    return max(next(iter(largest.values())), key=lambda group: group.value.mean)


def _runs_of(comparison: Comparison, group: GroupRow):
    return [
        row
        for row in comparison.runs
        if (row.dataset, row.arm, row.model, row.per_class) == (group.dataset, group.arm, group.model, group.per_class)
    ]


def _predictions(run: str, split: str) -> pd.DataFrame:
    return pd.read_csv(RunDir(run).evaluation(split).predictions)


def _calibration(table: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(confidence, observed) as the evaluation's ECE takes them: the positive class's probability (binary), the
    top class's (multi-class)."""
    classes = [column.removeprefix("prob:") for column in table.columns if column.startswith("prob:")]
    probs = table[[f"prob:{c}" for c in classes]].to_numpy(dtype=float)
    if task == "binary":
        return probs[:, 1], (table["label"] == classes[1]).to_numpy()
    if task == "multiclass":
        top = probs.argmax(axis=1)
        return probs.max(axis=1), (np.array(classes)[top] == table["label"].to_numpy())
    return None


def _confident_errors(table: pd.DataFrame, count: int) -> pd.DataFrame:
    wrong = table[table["predicted"] != table["label"]].copy()
    wrong["confidence"] = [row[f"prob:{row['predicted']}"] for _, row in wrong.iterrows()]
    return wrong.sort_values(["confidence", "path"], ascending=[False, True]).head(count)


def _thumbnail(path: Path, size: int = 160) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def reporting_checklist(
    study: Study,
    pretrains: list[PlannedPretraining],
    runs: list[PlannedRun],
    summaries: list[TrainSummary],
    comparison: Comparison,
    log: StudyLog,
    inputs: ReportInputs,
) -> list[str]:
    """The report's "Reporting checklist" section."""
    portable = inputs.portable
    lines = [
        "## Reporting checklist (TRIPOD+AI, CLAIM)",
        "",
        "Filled from the study's records: each dataset's dataset.yaml, each run's config.yaml, train.json and "
        "tuning.json, compare.json and families.json.",
        "",
    ]
    items = []
    for spec in study.datasets:
        info = read_info(next(run.values["data"] for run in runs if run.dataset == spec.name))
        reasons = Counter(_reason(item["reason"]) for item in info.excluded)
        excluded = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common(4)) or "none"
        items.append(
            f"**Data source and eligibility** ({spec.name}): the {info.source_format} layout at "
            f"{portable.text(info.source_path or '?')}; every image that decodes, of the classes "
            f"{', '.join(info.classes)}: {info.images.get('found', 0)} found, {info.images.get('usable', 0)} usable, "
            f"excluded: {excluded} (each with its reason in dataset.yaml). Prepared manifest SHA-256 "
            f"{info.manifest_sha256}."
        )
        overlap = "; ".join(f"{pair}: {item['groups']}" for pair, item in info.group_overlap.items()) or "none"
        test_groups = info.groups.get("test")
        items.append(
            f"**Partitioning** ({spec.name}): splits {', '.join(f'{s} {o}' for s, o in info.splits.origin.items())}"
            + (f" (val rebuilt: {info.splits.val_rebuilt})" if info.splits.val_rebuilt else "")
            + f"; the unit is the {info.group_unit}, kept whole in the splits lowmed made and resampled whole by the "
            f"bootstrap; {info.group_unit}s the source's own splits share (kept as given): {overlap}; "
            f"{len(info.leakage_removed)} duplicate image(s) removed across splits by content hash. Training subsets "
            "are drawn from the train split only, nested in N, the same subset per seed for every arm; the test split "
            f"({sum(info.counts.get('test', {}).values())} images"
            + (f", {test_groups} {info.group_unit}s" if test_groups else "")
            + ") was never used to train, tune, pretrain or choose a checkpoint."
        )
    items.append(f"**Sample size**: {inputs.power.sentence()}")
    config = RunDir(summaries[0].run_dir).config if summaries else None
    if summaries and config is not None and config.is_file():
        from lowmed.config import TrainConfig

        options = TrainConfig.from_yaml(config)
        strength = options.augment_strength
        norms = sorted({_norm_text(s.preprocessing) for s in summaries})
        items.append(
            f"**Preprocessing and augmentation**: each image resized whole to a square of "
            f"{summaries[0].preprocessing.get('input_size')} px; inputs normalised as the weights expect "
            f"({'; '.join(norms)}); training augmentation at strength {strength}: rotation ±"
            f"{MAX_ROTATION_DEG * strength:g}°, shift ±{MAX_SHIFT * strength:.0%}, scale ±{MAX_SCALE * strength:.0%}, "
            f"horizontal flip, brightness and contrast ±{MAX_INTENSITY * strength:.0%}; none at evaluation."
        )
    for arm in study.arms:
        summary = next((s for s in summaries if s.arm == arm.name), None)
        if arm.pretrain is not None:
            corpus = next(run.pretraining for run in runs if run.arm is arm and run.pretraining is not None)
            source = inputs.weights_text(
                str(corpus.values.get("init" if arm.self_supervised else "weights", "none")), None
            )
            digests = Counter(s.weights.sha256 for s in summaries if s.arm == arm.name)
            checkpoint = (
                f"the pretrained checkpoint's SHA-256 {next(iter(digests))}"
                if len(digests) == 1
                else "its runs started from "
                + " and ".join(f"{digest} ({count} runs)" for digest, count in digests.most_common())
                + ": the stage was pretrained again (on another machine) after some of them"
                if digests
                else "no run trained from it yet"
            )
            how = f"self-supervised ({arm.pretrain.method}, no labels) " if arm.self_supervised else ""
            guard = ""
            if RunDir(corpus.run_dir).self_supervised.is_file():
                guard = f"; {SelfSupervisedRecord.read(RunDir(corpus.run_dir).self_supervised).leakage.sentence()}"
            items.append(
                f"**Initial weights** ({arm.name}): {arm.model} from {source}, pretrained {how}by lowmed on "
                f"{arm.pretrain.dataset.name} (prepared manifest SHA-256 "
                f"{read_info(corpus.values['data']).manifest_sha256}){guard}; {checkpoint}."
            )
        else:
            items.append(f"**Initial weights** ({arm.name}): {arm.model}, {inputs.weights_text(arm.weights, summary)}.")
    if study.tune is not None:
        items.append(
            f"**Hyperparameters**: every arm tuned alike ({study.tune.describe()}), chosen on the validation split "
            "only (tuning.json in each run); the test split was not read while tuning."
        )
    else:
        items.append(
            f"**Hyperparameters**: one fixed recipe for every arm ({study.train or 'lowmed defaults'}); the checkpoint "
            "of each run chosen on the validation split."
        )
    families = comparison.families
    primary, secondary = (families.size(PRIMARY), families.size(SECONDARY)) if families else (0, 0)
    thresholds = "; ".join(sorted({g.threshold_source for g in comparison.groups if g.threshold_source}))
    items.append(
        f"**Metrics and tests**: {comparison.metric} on the {comparison.split} split; each arm's mean over seeds with "
        f"a 95 % interval from seeds and the test set; primary test: {method_sentence(comparison)}; Holm within the "
        f"primary family ({primary} comparisons; {families.source if families else 'as found'}) and the secondary "
        f"family ({secondary})"
        + (
            "; a two-level bootstrap (seeds and patients together) as a sensitivity check"
            if comparison.tests(SENSITIVITY)
            else ""
        )
        + f"; per-seed DeLong and McNemar tests are descriptive only (stats.csv). The thresholded calls: {thresholds}."
    )
    calibration = [
        f"{group.entity} at N = {group.per_class}: ECE {interval_text(group.thresholded['ece'])}"
        for groups in _largest_n(comparison).values()
        for group in groups
        if "ece" in group.thresholded
    ]
    figures = [name for name in inputs.figures if name.startswith("reliability-")]
    items.append(
        "**Calibration**: "
        + ("; ".join(calibration) if calibration else "not measured for this task")
        + "; each run's reliability diagram is eval/<split>/reliability.png"
        + "".join(f"; seeds pooled: ![reliability]({inputs.figures[name].name})" for name in figures)
        + "."
    )
    if "failures" in inputs.figures:
        items.append(
            f"**Failure analysis**: the {FAILURES_SHOWN} most confident errors of the arm with the highest mean "
            "at the largest N (its lowest seed), with the class called and its probability: "
            f"![failures]({inputs.figures['failures'].name})"
        )
    commands = sorted({portable.text(i["command"]) for i in log.invocations if i.get("command")})
    versions = summaries[0].versions if summaries else {}
    items.append(
        f"**Software**: lowmed {lowmed.__version__} (runs trained with lowmed {versions.get('lowmed', '?')}, torch "
        f"{versions.get('torch', '?')}, Python {versions.get('python', '?')}); the study file as study.yaml; "
        + ("commands: " + "; ".join(f"`{command}`" for command in commands) if commands else "command not recorded")
        + "."
    )
    return lines + [f"{k}. {item}" for k, item in enumerate(items, start=1)]


def _reason(text: str) -> str:
    """An exclusion reason without the file it names: what a count of reasons groups by."""
    return text.split(":")[0].split("(")[0].strip()[:60]


def _norm_text(preprocessing: dict) -> str:
    channels = preprocessing.get("channels", 3)
    mean, std = preprocessing.get("mean"), preprocessing.get("std")
    return f"{channels} channel(s), mean {mean}, std {std}"
