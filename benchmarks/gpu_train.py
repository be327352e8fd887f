"""GPU training throughput: lowmed's whole pipeline vs. the same model on random tensors already on the GPU.

The ratio says whether the data pipeline (in-memory uint8 images, GPU augmentation, normalisation) keeps
the GPU busy. With ``--compile`` the same run is also timed with ``torch.compile``. Run on a machine with CUDA:

    python benchmarks/gpu_train.py --data PREPARED_DIR --model resnet50 --compile --out gpu_train.json
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from lowmed.config import TrainConfig
from lowmed.contracts import RunDir
from lowmed.models.registry import build_model, get_model_spec
from lowmed.training.train import train


def lowmed_images_per_s(
    data: str, model: str, per_class: int, batch_size: int, epochs: int, compile: bool = False
) -> dict:
    """A real ``lowmed train`` run (from scratch, one phase); the first epoch is warm-up (and compiling) and not
    counted."""
    with tempfile.TemporaryDirectory() as runs:
        config = TrainConfig(
            data=data,
            per_class=per_class,
            model=model,
            weights="none",
            epochs=epochs,
            batch_size=batch_size,
            device="cuda",
            compile=compile,
            out=f"{runs}/run",
        )
        started = time.perf_counter()
        summary = train(config)
        wall = time.perf_counter() - started
        rows = pd.read_csv(RunDir(f"{runs}/run").history)
    steady = rows["images_per_s"].iloc[1:] if len(rows) > 1 else rows["images_per_s"]
    return {
        "images_per_s": float(steady.median()),
        "epoch_seconds": float(rows["seconds"].iloc[1:].median()),
        "first_epoch_seconds": float(rows["seconds"].iloc[0]),
        "wall_seconds": round(wall, 2),
        "precision": summary["precision"],
        "epochs": len(rows),
    }


def random_tensor_images_per_s(model_name: str, batch_size: int, image_size: int, steps: int = 60) -> float:
    """The ceiling: forward + backward + AdamW step on random inputs already on the GPU, same AMP settings."""
    device = torch.device("cuda")
    model = build_model(get_model_spec(model_name), classes=2).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,), device=device)
    for step in range(steps + 10):
        if step == 10:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared dataset dir")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--compile", action="store_true", help="also time lowmed with torch.compile")
    parser.add_argument("--out", default="gpu_train.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs a CUDA device")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model, "runs": []}
    print(f"{'batch':>5} {'lowmed img/s':>13} {'random-tensor img/s':>20} {'ratio':>6} {'epoch s':>8}")
    for batch_size in map(int, args.batch_sizes.split(",")):
        ours = lowmed_images_per_s(args.data, args.model, args.per_class, batch_size, args.epochs)
        ceiling = random_tensor_images_per_s(args.model, batch_size, 224)
        ratio = ours["images_per_s"] / ceiling
        results["runs"].append(
            {"batch_size": batch_size, "lowmed": ours, "random_tensor_images_per_s": ceiling, "ratio": ratio}
        )
        print(
            f"{batch_size:>5} {ours['images_per_s']:>13.0f} {ceiling:>20.0f} {ratio:>6.2f} "
            f"{ours['epoch_seconds']:>8.2f}"
        )
        if args.compile:
            compiled = lowmed_images_per_s(args.data, args.model, args.per_class, batch_size, args.epochs, compile=True)
            results["runs"][-1]["lowmed_compiled"] = compiled
            print(
                f"{'':>5} --compile: {compiled['images_per_s']:.0f} img/s "
                f"({compiled['images_per_s'] / ours['images_per_s']:.2f} × without), "
                f"first epoch {compiled['first_epoch_seconds']:.1f} s vs {ours['first_epoch_seconds']:.1f} s"
            )
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
