"""Tuning fairly: each arm with lowmed's default recipe against each arm tuned with the same budget.

Reads two studies made by `lowmed experiment` — benchmarks/tuning-fixed.yaml and benchmarks/tuning-tuned.yaml —
and prints, per arm, the recipe (the values chosen and the trials spent), the best validation loss, the test AUROC
with its interval, the training time, and B − A with its paired p-value. `--keep` copies the small files the table
is made from (compare.csv, stats.csv, compare.md, report.md, each run's train.json and tuning.json).

    python benchmarks/tuning_fair.py runs/tuning-fixed runs/tuning-tuned --keep benchmarks/results/tuning
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from lowmed.comparison.render import format_p, test_label
from lowmed.contracts import PRIMARY_TESTS, ComparisonDir, RunDir, TrainSummary


def _runs(study: Path) -> dict[str, RunDir]:
    """The study's runs by arm."""
    runs = {}
    for summary in sorted((study / "runs").glob(f"*/{TrainSummary.FILE}")):
        run = RunDir(summary.parent)
        runs[run.read_summary().arm] = run
    return runs


def tuning_table(fixed: Path, tuned: Path) -> str:
    lines = [
        "| arm | recipe | trials (pruned) | trials' training time | best val loss | test AUROC [95 % CI] "
        "| training time |",
        "|---|---|---|---|---|---|---|",
    ]
    differences = []
    for label, study in (("default", fixed), ("tuned", tuned)):
        table = pd.read_csv(ComparisonDir(study).table).set_index("arm")
        for arm, run in _runs(study).items():
            summary, tuning = run.read_summary(), run.read_tuning()
            row = table.loc[arm]
            if tuning is None:
                recipe, trials, spent = "lowmed's defaults", "—", "—"
            else:
                pruned = sum(t["state"] == "pruned" for t in tuning.counted)
                recipe = tuning.chosen_text()
                trials, spent = f"{len(tuning.counted)} ({pruned})", f"{tuning.seconds / 60:.1f} min"
            lines.append(
                f"| {arm} ({summary.model}), {label} | {recipe} | {trials} | {spent} | "
                f"{summary.best['metrics']['val_loss']:.3f} | {row['value']:.3f} [{row['ci_low']:.3f}, "
                f"{row['ci_high']:.3f}] | {summary.epoch_seconds_total / 60:.1f} min |"
            )
        stats = pd.read_csv(ComparisonDir(study).stats)
        primary = stats[stats["test"].isin(PRIMARY_TESTS)].iloc[0]
        differences.append(
            f"{label}: {primary['a'].split(' · ')[0]} − {primary['b'].split(' · ')[0]} = {primary['estimate']:+.3f} "
            f"[{primary['ci_low']:+.3f}, {primary['ci_high']:+.3f}], p = {format_p(primary['p'])} "
            f"({test_label(primary['test'])})"
        )
    return "\n".join(lines) + "\n\nTest AUROC difference, paired: " + "; ".join(differences)


def keep(study: Path, target: Path) -> None:
    source, kept = ComparisonDir(study), ComparisonDir(target)
    kept.path.mkdir(parents=True, exist_ok=True)
    for name in ("table", "stats", "markdown"):
        shutil.copyfile(getattr(source, name), getattr(kept, name))
    shutil.copyfile(study / "report.md", target / "report.md")
    for run in _runs(study).values():
        folder = target / "runs" / run.path.name
        folder.mkdir(parents=True, exist_ok=True)
        for path in (run.summary, run.tuning):
            if path.is_file():
                shutil.copyfile(path, folder / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", type=Path, help="the default-recipe study's out folder (runs/tuning-fixed)")
    parser.add_argument("tuned", type=Path, help="the tuned study's out folder (runs/tuning-tuned)")
    parser.add_argument("--keep", type=Path, help="copy the files behind the table here (fixed/ and tuned/)")
    args = parser.parse_args()
    if args.keep:
        keep(args.fixed, args.keep / "fixed")
        keep(args.tuned, args.keep / "tuned")
    print(tuning_table(args.fixed, args.tuned))


if __name__ == "__main__":
    main()
