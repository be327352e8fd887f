"""CPU arithmetic precision: training and inference images/s of lowmed's models in fp32 and bfloat16 autocast, each
with and without ``channels_last`` — the same model, batch and random 224 px tensors in one process, so the ratios are
the lever's worth on this CPU (where the data pipeline plays no part); and fp32 inference by batch size, which sets
``lowmed evaluate``'s CPU default.

    python benchmarks/cpu_precision.py [--models simplecnn,resnet18,resnet50,timm:efficientnet_lite0]
                                       [--batches 4] [--out benchmarks/results/cpu_precision.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lowmed.device import cpu_supports_bf16
from lowmed.models.registry import build_model, get_model_spec

SETTINGS = {
    "fp32": (False, False),
    "fp32 + channels_last": (False, True),
    "bf16": (True, False),
    "bf16 + channels_last": (True, True),
}


def images_per_s(
    model_name: str, bf16: bool, channels_last: bool, train: bool, batch: int, size: int, batches: int
) -> float:
    torch.manual_seed(0)
    spec = get_model_spec(model_name)
    model = build_model(spec, 2, "mlp")
    images = torch.randn(batch, 3, size, size)
    targets = torch.randint(0, 2, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train(train)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if train:
                logits = model(images)
                logits = logits[0] if isinstance(logits, tuple) else logits
                loss = torch.nn.functional.cross_entropy(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                with torch.inference_mode():
                    model(images)

    step()  # warm-up: oneDNN picks its kernels
    started = time.perf_counter()
    for _ in range(batches):
        step()
    return batch * batches / (time.perf_counter() - started)


def inference_by_batch(model_name: str, sizes: list[int], size: int, images: int = 128) -> dict[str, float]:
    """fp32 inference images/s at each batch size, over about ``images`` images after a warm-up batch."""
    model = build_model(get_model_spec(model_name), 2, "mlp").eval()
    speeds = {}
    for batch in sizes:
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            model(x)
            repeats = max(1, images // batch)
            started = time.perf_counter()
            for _ in range(repeats):
                model(x)
        speeds[str(batch)] = round(batch * repeats / (time.perf_counter() - started), 1)
    return speeds


def batch_table(result: dict) -> str:
    """fp32 inference images/s per model and batch size."""
    sizes = list(next(iter(result["inference_by_batch"].values())))
    lines = ["| model | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name, row in result["inference_by_batch"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[b]:.1f}" for b in sizes) + " |")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """Images/s per model and mode in each setting, and bf16 + channels_last against fp32."""
    settings = list(SETTINGS)
    lines = [
        "| model | " + " | ".join(f"{setting} (images/s)" for setting in settings) + " | ratio |",
        "|---|" + "---|" * (len(settings) + 1),
    ]
    for name, row in result["images_per_s"].items():
        ratio = row["bf16 + channels_last"] / row["fp32"]
        lines.append(f"| {name} | " + " | ".join(f"{row[setting]:.1f}" for setting in settings) + f" | {ratio:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="simplecnn,resnet18,resnet50,timm:efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=4, help="timed batches after one warm-up batch")
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    if not cpu_supports_bf16():
        raise SystemExit("this CPU has no native bfloat16 (AVX512-BF16 or AMX): nothing to measure")
    figures = {}
    for model_name in args.models.split(","):
        for mode in ("train", "inference"):
            row = {
                setting: round(
                    images_per_s(
                        model_name, bf16, channels_last, mode == "train", args.batch_size, args.image_size, args.batches
                    ),
                    1,
                )
                for setting, (bf16, channels_last) in SETTINGS.items()
            }
            figures[f"{model_name} {mode}"] = row
            print(
                f"{model_name:<28} {mode:<9} "
                + "  ".join(f"{k} {v:7.1f}" for k, v in row.items())
                + f"  ({row['bf16 + channels_last'] / row['fp32']:.2f}× fp32)",
                flush=True,
            )
    result = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "batches": args.batches,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "images_per_s": figures,
        "inference_by_batch": {
            name: inference_by_batch(name, [16, 32, 64], args.image_size) for name in args.models.split(",")
        },
    }
    print(markdown_table(result))
    print(batch_table(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
