"""Whether a speed lever changes test AUROC: from a study whose arms come in pairs ``<family>-<before>`` and
``<family>-<after>`` (the same runs but for the lever, paired by seed) — ``benchmarks/cpu-bf16.yaml`` (fp32, bf16),
``benchmarks/finetune-cache.yaml`` (whole, cached) — each model's test AUROC per seed on both sides, the paired
bootstrap of the seed-averaged difference (after − before) from ``stats.csv``, and each side's seed-to-seed SD as the
noise to compare it to.

    python benchmarks/paired_arms.py runs/cpu-bf16 [--kinds fp32,bf16] [--keep benchmarks/results/cpu-bf16]
"""

from __future__ import annotations

import argparse
import shutil
from itertools import combinations
from pathlib import Path

import pandas as pd

from lowmed.comparison.render import format_p, test_label
from lowmed.contracts import PRIMARY_TESTS, ComparisonDir


def _p(p: float) -> str:
    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def auroc_table(runs: pd.DataFrame, stats: pd.DataFrame, before: str = "fp32", after: str = "bf16") -> str:
    """One row a model and seed (AUROC and training-epoch seconds on both sides), then the paired test of the
    seed-averaged difference with each side's seed SD, and the gap between the models on each side."""
    lines = [
        f"| model | seed | {before} AUROC | {after} AUROC | {after} − {before} | epoch seconds, {before} → {after} |",
        "|---|---|---|---|---|---|",
    ]
    means = {}
    for family in sorted({arm.rsplit("-", 1)[0] for arm in runs["arm"]}):
        first, second = (runs[runs["arm"] == f"{family}-{kind}"].set_index("seed") for kind in (before, after))
        model = first["model"].iloc[0]
        means[family] = (first["value"].mean(), second["value"].mean())
        for seed in sorted(set(first.index) & set(second.index)):
            low, high = first.loc[seed, "value"], second.loc[seed, "value"]
            seconds = f"{first.loc[seed, 'train_seconds']:.0f} → {second.loc[seed, 'train_seconds']:.0f}"
            lines.append(f"| {model} | {seed} | {low:.3f} | {high:.3f} | {high - low:+.3f} | {seconds} |")
        entities = {f"{family}-{before} · {model}", f"{family}-{after} · {model}"}
        test = stats[stats["test"].isin(PRIMARY_TESTS) & stats["a"].isin(entities) & stats["b"].isin(entities)].iloc[0]
        sign = 1 if test["a"].startswith(f"{family}-{after}") else -1  # the difference as after − before
        low, high = sorted((sign * test["ci_low"], sign * test["ci_high"]))
        lines.append(
            f"| {model} | mean of {len(first)} | {first['value'].mean():.3f} (seed SD {first['value'].std():.3f}) | "
            f"{second['value'].mean():.3f} (seed SD {second['value'].std():.3f}) | {sign * test['estimate']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}], {test_label(test['test'])} p {_p(test['p'])} | "
            f"{first['train_seconds'].sum() / second['train_seconds'].sum():.1f}× less in {after} |"
        )
    for one, other in combinations(sorted(means, reverse=True), 2):
        gaps = [means[one][k] - means[other][k] for k in (0, 1)]
        lines.append(f"| {one} − {other}, mean AUROC | | {gaps[0]:+.3f} | {gaps[1]:+.3f} | | |")
    return "\n".join(lines)


def keep(source: ComparisonDir, folder: Path) -> None:
    """Copy a study's compare.csv, stats.csv and compare.md to ``folder`` (benchmarks/results/...), for the tables."""
    kept = ComparisonDir(Path(folder))
    kept.path.mkdir(parents=True, exist_ok=True)
    for name in ("table", "stats", "markdown"):
        shutil.copyfile(getattr(source, name), getattr(kept, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study's out folder (runs/cpu-bf16)")
    parser.add_argument("--kinds", default="fp32,bf16", help="the arms' suffixes: before,after")
    parser.add_argument("--keep", type=Path, help="copy compare.csv and stats.csv here")
    args = parser.parse_args()
    source = ComparisonDir(args.study)
    before, after = args.kinds.split(",")
    print(auroc_table(pd.read_csv(source.table), pd.read_csv(source.stats), before, after))
    if args.keep:
        keep(source, args.keep)


if __name__ == "__main__":
    main()
