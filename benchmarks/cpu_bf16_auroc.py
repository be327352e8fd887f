"""The AUROC side of CPU bfloat16: from the study ``benchmarks/cpu-bf16.yaml`` (the same runs in fp32 and bf16,
paired by seed), each model's test AUROC per seed in both precisions, the paired bootstrap of the seed-averaged
difference (bf16 − fp32) from ``stats.csv``, and the seed-to-seed SD of the fp32 runs as the noise to compare it to.

    python benchmarks/cpu_bf16_auroc.py runs/cpu-bf16 [--keep benchmarks/results/cpu-bf16]
"""

from __future__ import annotations

import argparse
import shutil
from itertools import combinations
from pathlib import Path

import pandas as pd

from lowmed.compare import PRIMARY_TEST, format_p
from lowmed.contracts import ComparisonDir


def _p(p: float) -> str:
    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def auroc_table(runs: pd.DataFrame, stats: pd.DataFrame) -> str:
    """One row a model and seed (AUROC and training-epoch seconds in both precisions), then the paired test of the
    seed-averaged difference with each precision's seed SD, and the gap between the models in each precision."""
    lines = [
        "| model | seed | fp32 AUROC | bf16 AUROC | bf16 − fp32 | epoch seconds, fp32 → bf16 |",
        "|---|---|---|---|---|---|",
    ]
    means = {}
    for family in sorted({arm.rsplit("-", 1)[0] for arm in runs["arm"]}):
        fp32, bf16 = (runs[runs["arm"] == f"{family}-{kind}"].set_index("seed") for kind in ("fp32", "bf16"))
        model = fp32["model"].iloc[0]
        means[family] = (fp32["value"].mean(), bf16["value"].mean())
        for seed in sorted(set(fp32.index) & set(bf16.index)):
            low, high = fp32.loc[seed, "value"], bf16.loc[seed, "value"]
            seconds = f"{fp32.loc[seed, 'train_seconds']:.0f} → {bf16.loc[seed, 'train_seconds']:.0f}"
            lines.append(f"| {model} | {seed} | {low:.3f} | {high:.3f} | {high - low:+.3f} | {seconds} |")
        entities = {f"{family}-fp32 · {model}", f"{family}-bf16 · {model}"}
        test = stats[(stats["test"] == PRIMARY_TEST) & stats["a"].isin(entities) & stats["b"].isin(entities)].iloc[0]
        sign = 1 if test["a"].startswith(f"{family}-bf16") else -1  # the difference as bf16 − fp32
        low, high = sorted((sign * test["ci_low"], sign * test["ci_high"]))
        lines.append(
            f"| {model} | mean of {len(fp32)} | {fp32['value'].mean():.3f} (seed SD {fp32['value'].std():.3f}) | "
            f"{bf16['value'].mean():.3f} (seed SD {bf16['value'].std():.3f}) | {sign * test['estimate']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}], paired bootstrap p {_p(test['p'])} | "
            f"{fp32['train_seconds'].sum() / bf16['train_seconds'].sum():.1f}× less in bf16 |"
        )
    for first, second in combinations(sorted(means, reverse=True), 2):
        gaps = [means[first][k] - means[second][k] for k in (0, 1)]
        lines.append(f"| {first} − {second}, mean AUROC | | {gaps[0]:+.3f} | {gaps[1]:+.3f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study's out folder (runs/cpu-bf16)")
    parser.add_argument("--keep", type=Path, help="copy compare.csv and stats.csv here")
    args = parser.parse_args()
    source = ComparisonDir(args.study)
    print(auroc_table(pd.read_csv(source.table), pd.read_csv(source.stats)))
    if args.keep:
        kept = ComparisonDir(args.keep)
        kept.path.mkdir(parents=True, exist_ok=True)
        for name in ("table", "stats", "markdown"):
            shutil.copyfile(getattr(source, name), getattr(kept, name))


if __name__ == "__main__":
    main()
