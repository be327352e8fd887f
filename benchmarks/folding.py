"""Batch norm folded into convolutions (``lowmed.models.folding``): what it is worth and whether it changes results.

``speed``: inference images/s of each model with and without folding, on random 224 px tensors in lowmed's CPU
setting (fp32, channels-last, batches of 16), alternating the two so that both see the same machine; also the part
of EfficientNet-Lite0 that fine-tuning's activation cache runs (below ``blocks.4``); and the largest difference in
the outputs.

``runs``: lowmed's default recipe trained and evaluated with folding and with it replaced by the unfolded network
(everything else as in ``lowmed train``), paired by seed, then ``lowmed compare`` over both arms and the table of
``paired_arms.py``.

    python benchmarks/folding.py speed --out benchmarks/results/folding_speed.json
    python benchmarks/folding.py runs --data ../shared/data/chest_xray \\
        --weights ../shared/weights/efficientnet_lite0_imagenet_timm.pth --out runs/folding \\
        --keep benchmarks/results/folding
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pandas as pd
import torch
from torch import nn

from lowmed.comparison.compare import compare_runs
from lowmed.config import TrainConfig
from lowmed.contracts import ComparisonDir
from lowmed.data.prepare import prepare
from lowmed.data.subsample import subsample
from lowmed.device import CPU_INFERENCE_BATCH
from lowmed.evaluation.evaluate import evaluate
from lowmed.models.blocks import backbone_blocks
from lowmed.models.folding import folded_for_inference
from lowmed.models.registry import build_model, get_model_spec
from lowmed.training.train import train

# where lowmed calls folded_for_inference; the unfolded side replaces it there with the network as it is
CALL_SITES = ("lowmed.training.features.folded_for_inference", "lowmed.models.forward.folded_for_inference")


def networks(names: list[str]) -> dict[str, nn.Module]:
    """Each model whole, in eval mode, plus EfficientNet-Lite0's blocks below blocks.4 (its fine-tuning cache)."""
    torch.manual_seed(0)
    built = {name: build_model(get_model_spec(name), 2).eval() for name in names}
    if "timm:efficientnet_lite0" in built:
        blocks = backbone_blocks(built["timm:efficientnet_lite0"].backbone)
        cut = [name for name, _ in blocks].index("blocks.4.0")
        built["timm:efficientnet_lite0 below blocks.4"] = nn.Sequential(*(module for _, module in blocks[:cut]))
    return built


def speed(names: list[str], rounds: int, batches: int, size: int) -> dict:
    images = torch.randn(CPU_INFERENCE_BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    results = {}
    for name, network in networks(names).items():
        network = network.to(memory_format=torch.channels_last)
        started = time.perf_counter()
        folded = folded_for_inference(network)
        fold_seconds = time.perf_counter() - started
        timings: dict[str, list[float]] = {"unfolded": [], "folded": []}
        with torch.inference_mode():
            expected = network(images)
            difference, scale = (folded(images) - expected).abs().max().item(), expected.abs().max().item()
            for _ in range(rounds):
                for side, module in (("unfolded", network), ("folded", folded)):
                    module(images)  # warm-up
                    started = time.perf_counter()
                    for _ in range(batches):
                        module(images)
                    timings[side].append(batches * len(images) / (time.perf_counter() - started))
        norms = [sum(isinstance(m, nn.BatchNorm2d) for m in n.modules()) for n in (network, folded)]
        results[name] = {
            "unfolded_images_per_s": statistics.median(timings["unfolded"]),
            "folded_images_per_s": statistics.median(timings["folded"]),
            "batch_norms": norms[0],
            "batch_norms_left": norms[1],
            "fold_seconds": fold_seconds,
            "max_abs_difference": difference,
            "max_abs_output": scale,
        }
        print(f"{name}: measured", flush=True)
    return results


def speed_table(results: dict) -> str:
    """Images/s of each network unfolded and folded, the batch norms left, and the largest output difference."""
    lines = [
        "| network | unfolded (images/s) | folded (images/s) | ratio | batch norms, unfolded → folded | max abs "
        "difference (largest output) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        ratio = row["folded_images_per_s"] / row["unfolded_images_per_s"]
        lines.append(
            f"| {name} | {row['unfolded_images_per_s']:.1f} | {row['folded_images_per_s']:.1f} | {ratio:.2f}× | "
            f"{row['batch_norms']} → {row['batch_norms_left']} | {row['max_abs_difference']:.1e} "
            f"({row['max_abs_output']:.1e}) |"
        )
    return "\n".join(lines)


def runs(args) -> None:
    out = Path(args.out)
    prepared = prepare(args.data, out / "prepared")
    subset = subsample(prepared.root, args.per_class, out=out / "subset.csv")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for kind in ("unfolded", "folded"):
            run = out / f"B-{kind}-seed{seed}"
            with ExitStack() as patches:
                if kind == "unfolded":
                    for site in CALL_SITES:
                        patches.enter_context(mock.patch(site, lambda module: module))
                config = TrainConfig(
                    subset=str(subset.path),
                    model=args.model,
                    weights=args.weights,
                    image_size=args.image_size,
                    seed=seed,
                    arm=f"B-{kind}",
                    out=str(run),
                )
                train(config)
                evaluate(run, bootstrap=1000)
            print(f"{run.name}: trained and evaluated")
    compare_runs([out], out=out, bootstrap=1000, resamples=1000)
    from paired_arms import auroc_table, keep  # this folder's script (on the path when this file runs as a script)

    source = ComparisonDir(out)
    print(auroc_table(pd.read_csv(source.table), pd.read_csv(source.stats), "unfolded", "folded"))
    if args.keep:
        keep(source, args.keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("speed", "runs"))
    parser.add_argument("--models", default="simplecnn,resnet18,resnet50,densenet121,timm:efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=5, help="speed: alternations of the two sides")
    parser.add_argument("--batches", type=int, default=4, help="speed: timed batches per side and round")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--data", help="runs: the Kermany pack (../shared/data/chest_xray)")
    parser.add_argument("--weights", help="runs: the backbone's weights file")
    parser.add_argument("--model", default="timm:efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="benchmarks/results/folding_speed.json")
    parser.add_argument("--keep", help="runs: copy compare.csv, stats.csv and compare.md here")
    args = parser.parse_args()
    if args.part == "runs":
        runs(args)
        return
    results = {
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "settings": {"batch": CPU_INFERENCE_BATCH, "image_size": args.image_size, "rounds": args.rounds},
        "models": speed(args.models.split(","), args.rounds, args.batches, args.image_size),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    print(speed_table(results))


if __name__ == "__main__":
    main()
