"""How long ``lowmed compare`` takes to score every run on its test set's shared resamples: the metrics computed on
all resamples at once (``lowmed.comparison.resampling.metric_draws``) beside the same metrics computed one resample
at a time (the per-resample functions of ``lowmed.evaluation.metrics``), in the same process, on one simulated run
the size of a published study's test set. Also checks that both give the same values (the AUROCs bit for bit,
calibration within 1e-12).

    python benchmarks/resampled_metrics.py [--resamples 1000] [--out benchmarks/results/resampled_metrics.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from lowmed.comparison.resampling import metric_draws
from lowmed.evaluation.metrics import auroc, expected_calibration_error
from lowmed.evaluation.stats import group_bootstrap_indices

# (task, classes, images, images per group): Kermany's test split; a HAM10000-sized one with several images a lesion
TEST_SETS = {"binary, 618 images": ("binary", 2, 618, 1), "7 classes, 1500 images": ("multiclass", 7, 1500, 2)}


class _Report:
    def __init__(self, task: str, classes: int) -> None:
        self.task, self.classes = task, [f"class{k}" for k in range(classes)]


class _Run:
    """What ``metric_draws`` reads of a run: its report's task and classes, its arrays and its saved calls."""

    def __init__(self, task: str, classes: int, images: int, rng: np.random.Generator) -> None:
        self.report = _Report(task, classes)
        targets = rng.integers(0, classes, images)
        logits = rng.normal(size=(images, classes)) + 1.5 * np.eye(classes)[targets]
        probs = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 3)  # rounded: tied scores
        self.arrays, self.predicted = (targets, probs, None), probs.argmax(axis=1)


def one_at_a_time(run: _Run, name: str, indices: list[np.ndarray]) -> np.ndarray:
    """What ``lowmed compare`` computed before: each resample's images taken out and scored on their own."""
    task = run.report.task
    targets, probs, _ = run.arrays
    values = []
    for drawn in indices:
        t, p = targets[drawn], probs[drawn]
        if name != "ece":
            values.append(auroc(task, t, p))
        elif task == "binary":
            values.append(expected_calibration_error(p[:, 1], t == 1))
        else:
            values.append(expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == t))
    return np.array(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, (task, classes, images, per_group) in TEST_SETS.items():
        run = _Run(task, classes, images, rng)
        groups = np.arange(images) // per_group
        indices = list(group_bootstrap_indices(groups, run.arrays[0][groups * per_group], args.resamples, 0))
        counts = np.stack([np.bincount(drawn, minlength=images) for drawn in indices])
        for name in ("macro_auroc" if task == "multiclass" else "auroc", "ece"):
            started = time.perf_counter()
            looped = one_at_a_time(run, name, indices)
            loop_seconds = time.perf_counter() - started
            started = time.perf_counter()
            at_once = metric_draws(run, name, counts)  # type: ignore[arg-type]
            at_once_seconds = time.perf_counter() - started
            same = np.array_equal(looped, at_once) if name != "ece" else np.allclose(looped, at_once, atol=1e-12)
            rows.append(
                {
                    "test set": label,
                    "metric": name,
                    "one at a time s": round(loop_seconds, 3),
                    "all at once s": round(at_once_seconds, 3),
                    "speed-up": round(loop_seconds / at_once_seconds, 1),
                    "same values": bool(same),
                }
            )
    print(f"{args.resamples} resamples; {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(value) for value in row.values()))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"resamples": args.resamples, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
