"""The fine-tuning phase beside its pure arithmetic: how close lowmed comes to the cost of the computation alone.

lowmed fine-tunes the top of the network on cached activations (``lowmed.training.features``): the stages below the
first unfrozen layer ran once per image and view, and only what is above them runs every epoch. This measures a
real ``lowmed train`` run's fine-tuning epochs (training images per second, from its history.csv) and, in the same
process, the same top blocks and head training — forward, backward, AdamW step — on random tensors of the cached
activations' shape, with the same batch size and the same number of steps: no data, no augmentation, no
bookkeeping. The ratio is the share of the phase's time that is arithmetic; where nothing is cached (fine-tuning the
whole backbone) both sides run the whole network on images of the run's size.

    python benchmarks/finetune_arithmetic.py --data ../shared/data          # writes results/finetune_arithmetic.json
    python benchmarks/finetune_arithmetic.py                                 # prints the table from the results
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "finetune_arithmetic.json"
LAYERS = (50, 1000)  # fine_tune_layers: the last blocks on cached activations; the whole backbone, nothing cached


def measure(data: Path, image_size: int, per_class: int, threads: int) -> dict:
    import pandas as pd
    import torch

    from lowmed import prepare, subsample, train
    from lowmed.config import TrainConfig
    from lowmed.contracts import RunDir
    from lowmed.device import device_name

    torch.set_num_threads(threads)
    weights = data.parent / "weights" / "efficientnet_lite0_imagenet_timm.pth"
    result = {"threads": threads, "image_size": image_size, "per_class": per_class, "cpu": "", "layers": {}}
    result["cpu"] = device_name(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare(data / "chest_xray", Path(scratch) / "kermany").root
        subset = subsample(prepared, per_class, seed=0).dataset.manifest_path
        for layers in LAYERS:
            config = TrainConfig(
                subset=str(subset),
                model="timm:efficientnet_lite0",
                weights=str(weights),
                image_size=image_size,
                epochs=3,
                fine_tune_epochs=5,
                fine_tune_layers=layers,
                fine_tune_lr=1e-4,
                patience=100,
                out=str(Path(scratch) / f"run-{layers}"),
            )
            summary = train(config)
            history = pd.read_csv(RunDir(config.out).history)
            tuned = history[history["phase"] == "finetune"]["images_per_s"].iloc[1:]  # the first builds the cache
            lowmed = float(tuned.median())
            arithmetic = _arithmetic(config, summary.caches.get("finetune", {}), 2 * per_class)
            result["layers"][str(layers)] = {
                "boundary": summary.caches.get("finetune", {}).get("boundary"),
                "shape": summary.caches.get("finetune", {}).get("shape"),
                "lowmed_images_per_s": round(lowmed, 1),
                "arithmetic_images_per_s": round(arithmetic, 1),
            }
            print(layers, result["layers"][str(layers)], flush=True)
    return result


def _arithmetic(config, cache: dict, images: int) -> float:
    """Training images per second of the fine-tuning phase's trained part on random inputs of its input's shape."""
    import torch
    from torch import nn

    from lowmed.models.registry import build_model, get_model_spec
    from lowmed.training.features import split_at_cache
    from lowmed.training.loop import Phase, set_trainable, train_mode

    model = build_model(get_model_spec(config.model), 2, config.head)
    phase = Phase("finetune", config.fine_tune_epochs, config.fine_tune_lr)
    frozen = set_trainable(model, phase, config.fine_tune_layers)
    if cache.get("boundary"):
        below, above = split_at_cache(model.backbone, frozen)
        trained = nn.Sequential(nn.Sequential(*(m for _, m in above)), model.head)
        shape = tuple(cache["shape"])
    else:
        trained, shape = model, (3, config.image_size, config.image_size)
    trained = trained.to(memory_format=torch.channels_last) if len(shape) == 3 else trained
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=config.fine_tune_lr)
    targets = torch.randint(0, 2, (config.batch_size,))
    inputs = torch.randn(config.batch_size, *shape)
    if len(shape) == 3:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    steps = max(1, images // config.batch_size)
    train_mode(trained, frozen)
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(trained(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(steps * config.batch_size / (time.perf_counter() - started))
    return sorted(rates)[1]  # the median of three epochs' worth


def table(result: dict) -> str:
    lines = [
        "| fine-tuned | trains on | lowmed, images/s | pure arithmetic, images/s | arithmetic share |",
        "|---|---|---|---|---|",
    ]
    for layers, row in result["layers"].items():
        what = "the whole backbone" if int(layers) >= 1000 else f"the last {layers} layers"
        source = f"cached {row['boundary']} activations {tuple(row['shape'])}" if row["boundary"] else "images"
        share = row["lowmed_images_per_s"] / row["arithmetic_images_per_s"]
        lines.append(
            f"| {what} | {source} | {row['lowmed_images_per_s']:.1f} | {row['arithmetic_images_per_s']:.1f} | "
            f"{share:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the shared data folder: measure (else print the results)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.data is not None:
        RESULTS.write_text(json.dumps(measure(args.data, args.image_size, args.per_class, args.threads), indent=2))
    print(table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
