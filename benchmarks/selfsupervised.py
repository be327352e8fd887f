"""Model D on this machine: self-supervised pretraining's throughput, and what it did on the Kermany pack.

Throughput (``--throughput``): corpus images per second (two views each) of SimCLR on EfficientNet-Lite0 (ImageNet
weights) at 64, 128 and 224 px: ``lowmed pretrain`` itself (every image decoded once, both views warped as whole
batches, channels-last), its second epoch, against a naive reference in the same process: lightly's
``SimCLRTransform`` on PIL images in a torch DataLoader, each file decoded every epoch, as lightly's tutorials do,
with the same model, loss and batch. Written to ``benchmarks/results/ssl_throughput.json``.

The check (``benchmarks/ssl-check.yaml``, published to ``benchmarks/results/ssl-check``): the kNN monitor's curve of
D's stage, epoch 0 being the ImageNet weights (B's features), and the three arms' headline.

    python benchmarks/selfsupervised.py --throughput --data ../shared/data     # measures, then prints the tables
    python benchmarks/selfsupervised.py                                         # prints the tables from the results
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CHECK = RESULTS / "ssl-check"
SIZES = (64, 128, 224)
BATCH = 32
CORPUS = 4044  # images in ../shared/data/chest_xray_unlabelled


def measure(data: Path, threads: int, scratch: Path) -> dict:
    import pandas as pd
    import torch

    from lowmed import prepare
    from lowmed.device import device_name

    torch.set_num_threads(threads)
    listed = pd.read_csv(data / "chest_xray_unlabelled" / "images.csv").head(BATCH * 6)
    corpus_csv = scratch / "corpus.csv"
    listed.assign(path=[str(data / "chest_xray_unlabelled" / p) for p in listed["path"]]).to_csv(
        corpus_csv, index=False
    )
    corpus = prepare(corpus_csv, scratch / "corpus", role="unlabelled", allow_outside_root=True).root
    target = prepare(data / "chest_xray", scratch / "target").root
    weights = data.parent / "weights" / "efficientnet_lite0_imagenet_timm.pth"
    result = {"threads": threads, "batch": BATCH, "cpu": device_name(torch.device("cpu")), "sizes": {}}
    for size in SIZES:
        steps = {64: 8, 128: 5, 224: 3}[size]
        rates = {
            "lowmed": _lowmed_rate(corpus, target, weights, size, scratch / f"run-{size}"),
            "reference": _reference_rate([Path(p) for p in corpus_paths(corpus)], size, steps, weights),
        }
        result["sizes"][str(size)] = rates
        print(f"{size} px: lowmed {rates['lowmed']} images/s, reference {rates['reference']} images/s", flush=True)
    return result


def corpus_paths(corpus: Path) -> list[str]:
    import pandas as pd

    return pd.read_csv(corpus / "manifest.csv")["path"].tolist()


def _lowmed_rate(corpus: Path, target: Path, weights: Path, size: int, out: Path) -> float:
    """lowmed pretrain itself, two epochs; the second's images per second (the first warms up)."""
    from lowmed.config import PretrainConfig
    from lowmed.training.selfsupervised import pretrain

    config = PretrainConfig(
        data=str(corpus),
        target=str(target),
        method="simclr",
        model="timm:efficientnet_lite0",
        init=str(weights),
        epochs=2,
        batch_size=BATCH,
        image_size=size,
        out=str(out),
    )
    pretrain(config, overwrite=True)
    import pandas as pd

    return float(pd.read_csv(out / "history.csv")["images_per_s"].iloc[-1])


def _reference_rate(paths: list[Path], size: int, steps: int, weights: Path) -> float:
    """Images per second of SimCLR steps on lightly's per-image views in a DataLoader, after one warm-up step."""
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    from lowmed.models.registry import get_model_spec
    from lowmed.models.weights import load_weights

    spec = get_model_spec("timm:efficientnet_lite0")
    backbone = spec.build_backbone()
    load_weights(backbone, spec, str(weights))
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(spec.feature_dim, 512, 128)).train()
    loss_fn, optimizer = NTXentLoss(temperature=0.1), torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = _reference_views(paths, size)
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()  # after the warm-up step
        first, second = next(batches)
        loss = loss_fn(model(first), model(second))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return round(steps * BATCH / (time.perf_counter() - started), 1)


def _reference_views(paths: list[Path], size: int):
    """The naive reference: lightly's SimCLRTransform on each PIL image in a DataLoader, every file decoded each
    time (no colour jitter, grey or flips, as for X-rays)."""
    import torch
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    transform = SimCLRTransform(input_size=size, cj_prob=0.0, random_gray_scale=0.0, hf_prob=0.0)

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, index: int):
            with Image.open(paths[index]) as image:
                return transform(image.convert("RGB"))

    while True:
        yield from torch.utils.data.DataLoader(Files(), batch_size=BATCH, shuffle=True, drop_last=True)


def throughput_table(result: dict) -> str:
    lines = [
        f"| px | lowmed, images/s | lightly transforms + DataLoader, images/s | ratio | CPU min per epoch of the "
        f"{CORPUS}-image archive |",
        "|---|---|---|---|---|",
    ]
    for size, rates in result["sizes"].items():
        ratio = rates["lowmed"] / rates["reference"]
        minutes = CORPUS / rates["lowmed"] / 60
        lines.append(f"| {size} | {rates['lowmed']:.1f} | {rates['reference']:.1f} | {ratio:.1f}× | {minutes:.1f} |")
    return "\n".join(lines)


def knn_table(record: Path = CHECK) -> str:
    """The kNN monitor of D's stage, epoch by epoch; epoch 0 is the ImageNet weights, B's features."""
    from lowmed.contracts import SelfSupervisedRecord

    (path,) = sorted(record.glob("pretrain/*/pretrain.json"))
    stage = SelfSupervisedRecord.read(path)
    lines = ["| epoch | weights | MoCo loss | kNN AUROC (val) | kNN accuracy (val) |", "|---|---|---|---|---|"]
    for row in stage.monitor["curve"]:
        what = (
            "ImageNet (B's features)" if row["epoch"] == 0 else "D" + (" ★" if row["epoch"] == stage.best_epoch else "")
        )
        loss = "—" if row["train_loss"] is None else f"{row['train_loss']:.3f}"
        lines.append(f"| {row['epoch']} | {what} | {loss} | {row['knn_auroc']:.3f} | {row['knn_accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", action="store_true", help="measure the throughput first")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.throughput:
        with tempfile.TemporaryDirectory() as scratch:
            result = measure(args.data, args.threads, Path(scratch))
        (RESULTS / "ssl_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(throughput_table(json.loads((RESULTS / "ssl_throughput.json").read_text())))
    if CHECK.is_dir():
        print()
        print(knn_table())


if __name__ == "__main__":
    main()
