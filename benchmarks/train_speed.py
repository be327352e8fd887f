"""lowmed against a naive reference, measured in the same run on the same data, subset, model and batch size.

The reference is written the way most projects (and the seed README) do it: a torchvision ``ImageFolder`` over
the original files, PIL decoding and transforms per item every epoch, fp32, a default ``DataLoader``; the frozen
phase runs the whole network every epoch. Every measurement runs in a fresh child process, so its peak resident
memory is its own.

    python benchmarks/train_speed.py --data ../shared/data/chest_xray --out benchmarks/results-cpu.json
    python benchmarks/train_speed.py --only scaling --sizes 300,3000,30000

Parts (``--only``): epoch (images/s per model), fullrun (the two-phase recipe at --per-class), tunedcell (a tuning
cell of --trials trials of that recipe; needs fullrun's reference in the same run), prepare, evaluate, fullres (the
pack scaled up to ~1500 px, as the original Kaggle files are), scaling (300 / 3 000 / 30 000 images).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torchvision import datasets, transforms

from lowmed.config import TrainConfig
from lowmed.contracts import RunDir
from lowmed.data.augment import augment_batch
from lowmed.data.loading import index_chunks, label_tensors, load_split
from lowmed.data.manifest import PreparedDataset
from lowmed.data.prepare import prepare
from lowmed.data.subsample import materialize_tree, subsample
from lowmed.device import CPU_INFERENCE_BATCH, Precision, channels_last
from lowmed.evaluation.metrics import binary_auroc
from lowmed.models.forward import Normalizer, model_input, predict_files
from lowmed.models.registry import build_model, get_model_spec, layer_groups
from lowmed.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lowmed.training.train import train

NORMALIZE = Normalizer(Preprocessing(224), torch.device("cpu"))  # ImageNet mean and std


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the naive reference -------------------------------------------------------------------------------------


def reference_transform(size: int, train: bool) -> transforms.Compose:
    steps = [transforms.Grayscale(3), transforms.Resize((size, size))]
    if train:
        steps += [
            transforms.RandomAffine(10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.2, 0.2),
        ]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def reference_loader(folder: Path, size: int, train: bool, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(folder, reference_transform(size, train)), batch_size=batch_size, shuffle=train
    )


def reference_epoch(model: nn.Module, loader, optimizer, max_batches: int | None = None) -> tuple[float, int]:
    model.train()
    seen, started = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if max_batches is not None and step >= max_batches:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return time.perf_counter() - started, seen


def reference_evaluate(model: nn.Module, loader) -> tuple[float, float, int]:
    """Validation loss and AUROC, image by image through the DataLoader as the seed project does."""
    model.eval()
    losses, scores, labels = [], [], []
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            losses.append(nn.functional.cross_entropy(logits, y, reduction="sum").item())
            scores.append(torch.softmax(logits, 1)[:, 1])
            labels.append(y)
    y = torch.cat(labels).numpy()
    return sum(losses) / len(y), binary_auroc(y, torch.cat(scores).numpy()), len(y)


def reference_full_run(
    tree: Path,
    model_name: str,
    weights: Path,
    size: int,
    batch_size: int,
    epochs: int,
    fine_tune_epochs: int,
    fine_tune_layers: int,
) -> dict:
    """The two-phase recipe, naively: frozen backbone for ``epochs``, then the last layers for ``fine_tune_epochs``."""
    torch.manual_seed(0)
    model = build_model(get_model_spec(model_name), 2)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.backbone.load_state_dict({k: v for k, v in state.items() if k in model.backbone.state_dict()}, strict=False)
    train_loader = reference_loader(tree / "train", size, True, batch_size)
    val_loader = reference_loader(tree / "val", size, False, batch_size)
    phases, best_auroc, started = {}, 0.0, time.perf_counter()
    groups = layer_groups(model.backbone)
    for phase, count, lr, trainable in (
        ("frozen", epochs, 1e-4, []),
        ("finetune", fine_tune_epochs, 1e-5, groups[-fine_tune_layers:]),
    ):
        phase_started = time.perf_counter()
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
        for module in trainable:
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        for _ in range(count):
            reference_epoch(model, train_loader, optimizer)
            _, auroc, _ = reference_evaluate(model, val_loader)
            best_auroc = max(best_auroc, auroc)
        phases[phase] = time.perf_counter() - phase_started
    return {"wall_seconds": time.perf_counter() - started, "phase_seconds": phases, "best_val_auroc": best_auroc}


# --- lowmed's side -------------------------------------------------------------------------------------------


def lowmed_epoch(model: nn.Module, images, optimizer, batch_size: int, max_batches: int | None) -> tuple[float, int]:
    """lowmed's pipeline: uint8 images decoded once in memory, augmented per image as a batch, channels-last."""
    cpu = torch.device("cpu")
    model.to(memory_format=torch.channels_last if channels_last(cpu) else torch.contiguous_format).train()
    generator = torch.Generator().manual_seed(0)
    chunks = index_chunks(torch.randperm(len(images), generator=generator), batch_size, drop_last=True)
    seen, started = 0, time.perf_counter()
    for step, (pixels, rows) in enumerate(images.batches(chunks)):
        if max_batches is not None and step >= max_batches:
            break
        x = model_input(pixels, NORMALIZE, cpu, lambda b: augment_batch(b, 0.5, generator), channels_last(cpu))
        loss = nn.functional.cross_entropy(model(x), images.targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(rows)
    return time.perf_counter() - started, seen


def split_images(dataset: PreparedDataset, split: str, size: int):
    frame = dataset.split(split)
    targets, mask = label_tensors(frame, dataset.task, dataset.classes)
    return load_split(dataset.image_paths(frame), targets, mask, size)


# --- child tasks: one measurement per process ----------------------------------------------------------------


def child_epoch(args) -> dict:
    torch.manual_seed(0)
    dataset = PreparedDataset.load(args.subset)
    results = {}
    for name, run in (("reference", "reference"), ("lowmed", "lowmed")):
        model = build_model(get_model_spec(args.model), 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if run == "lowmed":
            decode_started = time.perf_counter()
            images = split_images(dataset, "train", args.image_size)
            decode = time.perf_counter() - decode_started
            lowmed_epoch(model, images, optimizer, args.batch_size, 1)  # warm-up batch
            seconds, seen = lowmed_epoch(model, images, optimizer, args.batch_size, args.max_batches)
        else:
            decode = 0.0
            loader = reference_loader(Path(args.tree) / "train", args.image_size, True, args.batch_size)
            reference_epoch(model, loader, optimizer, 1)
            seconds, seen = reference_epoch(model, loader, optimizer, args.max_batches)
        results[name] = {
            "images_per_s": seen / seconds,
            "batches": seen // args.batch_size,
            "decode_once_seconds": decode,
        }
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def recipe(args) -> dict:
    """lowmed's side of the full run, as TrainConfig values: every epoch runs (no early stop)."""
    return {
        "subset": str(args.subset),
        "model": args.model,
        "weights": args.weights,
        "epochs": args.epochs,
        "fine_tune_epochs": args.fine_tune_epochs,
        "fine_tune_layers": args.fine_tune_layers,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "patience": 100,
        "augment_strength": 0.5,
    }


def child_fullrun(args) -> dict:
    if args.side == "reference":
        result = reference_full_run(
            Path(args.tree),
            args.model,
            Path(args.weights),
            args.image_size,
            args.batch_size,
            args.epochs,
            args.fine_tune_epochs,
            args.fine_tune_layers,
        )
    else:
        with tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            summary = train(TrainConfig(**recipe(args), out=f"{runs}/run"))
            wall = time.perf_counter() - started
            history = pd.read_csv(RunDir(f"{runs}/run").history)
        result = {
            "wall_seconds": wall,
            "phase_seconds": history.groupby("phase")["seconds"].sum().to_dict(),
            "best_val_auroc": float(history["val_auroc"].max()),
            "precision": summary["precision"],
            "caches": summary.caches,
        }
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# a tuning space whose values change neither what the frozen layers produce nor what an epoch costs, so that the
# reference can charge every trial's epochs at its own per-epoch cost
TUNED_SPACE = {
    "lr": {"low": 1e-5, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "fine_tune_lr": {"low": 1e-6, "high": 1e-3, "log": True},
}


def child_tunedcell(args) -> dict:
    """lowmed's tuning cell (``lowmed.tuning.tune_cell``: Optuna's TPE and median pruner, caches shared by the
    trials) over TUNED_SPACE, each trial the full-run recipe; and how many epochs of each phase every trial ran."""
    from lowmed.tuning import Cell, TuneSettings, tune_cell

    base = recipe(args)
    settings = TuneSettings.from_dict({"space": TUNED_SPACE, "trials": args.trials}, "the benchmark", base)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        record = tune_cell(Cell("benchmark", base, Path(folder)), settings)
        wall = time.perf_counter() - started
        trials = []
        for trial in record.counted:
            history = pd.read_csv(RunDir(Path(folder) / f"trial-{trial['number']:03d}").history)
            trials.append({"state": trial["state"], "epochs": history.groupby("phase").size().to_dict()})
    return {"wall_seconds": wall, "trials": trials, "peak_rss_mb": peak_rss_mb()}


def reference_cell_seconds(cell: dict, reference: dict, epochs: dict[str, int]) -> float:
    """What the reference would take for the same trials: each phase's epochs at the cost per epoch its full run
    measured (``epochs``: how many epochs of each phase that run had)."""
    per_epoch = {phase: reference["phase_seconds"][phase] / count for phase, count in epochs.items()}
    return sum(count * per_epoch[phase] for trial in cell["trials"] for phase, count in trial["epochs"].items())


def child_prepare(args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        if args.side == "reference":  # open and verify every file, one process, as a plain script would
            files = [p for p in Path(args.tree).rglob("*") if p.is_file()]
            started = time.perf_counter()
            for path in files:
                with Image.open(path) as image:
                    image.load()
            seconds, count = time.perf_counter() - started, len(files)
        else:
            started = time.perf_counter()
            dataset = prepare(args.tree, f"{out}/p", cache_size=args.cache_size)
            seconds, count = time.perf_counter() - started, len(dataset.manifest)
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds, "peak_rss_mb": peak_rss_mb()}


def child_evaluate(args) -> dict:
    torch.manual_seed(0)
    model = build_model(get_model_spec(args.model), 2).eval()
    started = time.perf_counter()
    if args.side == "reference":
        _, _, count = reference_evaluate(
            model, reference_loader(Path(args.tree) / "test", args.image_size, False, args.batch_size)
        )
    else:  # as lowmed evaluate predicts: files decoded while the batch before runs, its CPU batch and layout
        dataset = PreparedDataset.load(args.subset)
        paths = dataset.image_paths(dataset.split("test"))
        cpu = torch.device("cpu")
        if channels_last(cpu):
            model.to(memory_format=torch.channels_last)
        batch = CPU_INFERENCE_BATCH
        _, readable = predict_files(model, paths, args.image_size, NORMALIZE, cpu, Precision(False), batch)
        count = len(readable)
    seconds = time.perf_counter() - started
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds, "peak_rss_mb": peak_rss_mb()}


def child_load(args) -> dict:
    """Scaling: lowmed's prepare, subsample and one decode pass over the training images."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        dataset = prepare(args.tree, f"{out}/p")
        prepared = time.perf_counter() - started
        started = time.perf_counter()
        subset = subsample(dataset.root, 10**9, out=f"{out}/all.csv").dataset
        subsampled = time.perf_counter() - started
        started = time.perf_counter()
        images = split_images(subset, "train", args.image_size)
        if images.pixels is None:  # too big for memory: one pass through the per-batch decoder instead
            for _ in images.batches(index_chunks(torch.arange(len(images)), 256, False), workers=2):
                pass
        loaded = time.perf_counter() - started
    return {
        "images": len(dataset.manifest),
        "prepare_seconds": prepared,
        "subsample_seconds": subsampled,
        "decode_seconds": loaded,
        "in_memory": images.pixels is not None,
        "peak_rss_mb": peak_rss_mb(),
    }


CHILDREN = {
    "epoch": child_epoch,
    "fullrun": child_fullrun,
    "tunedcell": child_tunedcell,
    "prepare": child_prepare,
    "evaluate": child_evaluate,
    "load": child_load,
}


def recipe_table(now: dict, before: dict) -> str:
    """The two-phase recipe and evaluation: lowmed now, lowmed before (an earlier commit's results JSON) and the
    reference of the same run as now, with now's speed-up over the reference and over before."""
    ours, theirs, old = now["fullrun"]["lowmed"], now["fullrun"]["reference"], before["fullrun"]["lowmed"]

    def seconds(result: dict, phase: str | None) -> float:
        return result["wall_seconds"] if phase is None else result["phase_seconds"][phase]

    lines = [
        "| figure | lowmed now | lowmed before | reference | now vs reference | now vs before |",
        "|---|---|---|---|---|---|",
    ]
    for label, phase in (("wall time", None), ("frozen phase", "frozen"), ("fine-tuning phase", "finetune")):
        a, b, r = seconds(ours, phase), seconds(old, phase), seconds(theirs, phase)
        lines.append(f"| {label} | {a:.1f} s | {b:.1f} s | {r:.1f} s | {r / a:.1f}× faster | {b / a:.1f}× faster |")
    lines.append(
        f"| best val AUROC | {ours['best_val_auroc']:.3f} | {old['best_val_auroc']:.3f} | "
        f"{theirs['best_val_auroc']:.3f} | | |"
    )
    lines.append(
        f"| peak resident memory | {ours['peak_rss_mb']:.0f} MB | {old['peak_rss_mb']:.0f} MB | "
        f"{theirs['peak_rss_mb']:.0f} MB | | |"
    )
    speed = {side: now["evaluate"][side]["images_per_s"] for side in ("lowmed", "reference")}
    was = before["evaluate"]["lowmed"]["images_per_s"]
    lines.append(
        f"| evaluation images/s ({now['evaluate']['lowmed']['images']} test images, decoding included) | "
        f"{speed['lowmed']:.0f} | {was:.0f} | {speed['reference']:.0f} | {speed['lowmed'] / speed['reference']:.1f}× "
        f"faster | {speed['lowmed'] / was:.1f}× faster |"
    )
    return "\n".join(lines)


def fullrun_table(result: dict) -> str:
    """One model's two-phase recipe, lowmed against the reference of the same run (speed and memory only: without
    --weights both start from the same randomly initialised backbone file)."""
    ours, theirs = result["fullrun"]["lowmed"], result["fullrun"]["reference"]
    lines = ["| figure | lowmed | reference | lowmed vs reference |", "|---|---|---|---|"]
    for label, phase in (("wall time", None), ("frozen phase", "frozen"), ("fine-tuning phase", "finetune")):
        a = ours["wall_seconds"] if phase is None else ours["phase_seconds"][phase]
        r = theirs["wall_seconds"] if phase is None else theirs["phase_seconds"][phase]
        lines.append(f"| {label} | {a:.1f} s | {r:.1f} s | {r / a:.1f}× faster |")
    lines.append(f"| peak resident memory | {ours['peak_rss_mb']:.0f} MB | {theirs['peak_rss_mb']:.0f} MB | |")
    return "\n".join(lines)


def tuned_cell_table(result: dict) -> str:
    """A tuning cell: lowmed's wall time against the reference's cost of the same trials' epochs."""
    cell, reference = result["tunedcell"]["lowmed"], result["tunedcell"]["reference_seconds"]
    pruned = sum(trial["state"] == "pruned" for trial in cell["trials"])
    epochs = sum(sum(trial["epochs"].values()) for trial in cell["trials"])
    return "\n".join(
        [
            "| figure | lowmed | reference (the same epochs) | lowmed vs reference |",
            "|---|---|---|---|",
            f"| tuning cell, {len(cell['trials'])} trials ({pruned} pruned), {epochs} epochs | "
            f"{cell['wall_seconds']:.1f} s | {reference:.1f} s | {reference / cell['wall_seconds']:.1f}× faster |",
            f"| per trial | {cell['wall_seconds'] / len(cell['trials']):.1f} s | "
            f"{reference / len(cell['trials']):.1f} s | |",
            f"| peak resident memory | {cell['peak_rss_mb']:.0f} MB | | |",
        ]
    )


def cache_table(result: dict) -> str:
    """Where each phase's cache cut the network, and its size and build time (lowmed's side of a full run)."""
    lines = ["| phase | boundary | views | shape | dtype | size | built in |", "|---|---|---|---|---|---|---|"]
    for phase, cache in result["fullrun"]["lowmed"]["caches"].items():
        if cache["boundary"] is None:  # the phase ran the whole network every epoch
            lines.append(f"| {phase} | none: {cache['reason']} | | | | | |")
            continue
        boundary = cache["boundary"] + (f" (from {cache['computed_from']})" if "computed_from" in cache else "")
        shape = "×".join(map(str, cache["shape"]))
        lines.append(
            f"| {phase} | {boundary} | {cache['views']} | {shape} | {cache['dtype']} | {cache['megabytes']} MB | "
            f"{cache['build_seconds']:.1f} s |"
        )
    return "\n".join(lines)


def run_child(task: str, **options) -> dict:
    command = [sys.executable, __file__, "--child", task]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise SystemExit(f"child {task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- data set-up ---------------------------------------------------------------------------------------------


def scaled_tree(source: Path, target: Path, images: int, longer_side: int | None = None) -> Path:
    """A Kaggle-style tree of ``images`` distinct files made from ``source`` (each copy re-encoded with its
    copy number stamped in a corner, so that duplicate detection keeps them), optionally scaled up to ``longer_side``
    px."""
    by_folder: dict[Path, list[Path]] = {}
    for path in sorted(source.rglob("*.jpeg")):
        by_folder.setdefault(path.parent, []).append(path)
    # classes interleaved, so that any prefix is balanced
    files = [path for group in itertools.zip_longest(*by_folder.values()) for path in group if path is not None]
    for index in range(images):
        original = files[index % len(files)]
        relative = original.relative_to(source)
        destination = target / relative.parent / f"copy{index // len(files)}-{relative.name}"
        destination.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(original) as image:
            image = image.convert("L")
            if longer_side:
                image = image.resize((longer_side, round(longer_side * 0.8)), Image.Resampling.BICUBIC)
            pixels = np.asarray(image).copy()
            copy = index // len(files)  # stamped into two 8x8 blocks, which JPEG keeps distinct
            pixels[:8, :8], pixels[:8, 8:16] = copy % 256, copy // 256
            Image.fromarray(pixels).save(destination, quality=92)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("LOWMED_SHARED_DATA", "../shared/data") + "/chest_xray")
    parser.add_argument("--weights", help="backbone weights for the full-run recipe (default: a random-init file)")
    parser.add_argument("--only", default="epoch,fullrun,prepare,evaluate,fullres")
    parser.add_argument("--models", default="simplecnn,resnet18,resnet50")
    parser.add_argument("--fullrun-model", default="resnet18")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-layers", type=int, default=50)
    parser.add_argument("--trials", type=int, default=6, help="tunedcell: trials in the cell")
    parser.add_argument("--sizes", default="300,3000,30000")
    parser.add_argument("--sides", default="lowmed,reference", help="fullrun: which sides to run")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--before", help="an earlier run's results JSON, to set beside this one's")
    # child-process arguments
    parser.add_argument("--child")
    parser.add_argument("--side")
    parser.add_argument("--tree")
    parser.add_argument("--subset")
    parser.add_argument("--model")
    parser.add_argument("--cache-size", type=int)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    parts = args.only.split(",")
    if "tunedcell" in parts and not ("fullrun" in parts and "reference" in args.sides.split(",")):
        raise SystemExit("tunedcell is set against fullrun's reference: --only fullrun,tunedcell, both --sides")
    work = Path(tempfile.mkdtemp(prefix="lowmed-bench-"))
    results = {
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "settings": vars(args),
    }
    try:
        prepared = prepare(args.data, work / "prepared")
        subset = subsample(prepared.root, args.per_class, out=work / "subset.csv").dataset
        materialize_tree(subset, work / "tree")  # the reference reads exactly the same subset, as files
        common = {
            "subset": work / "subset.csv",
            "tree": work / "tree",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
        }
        if "epoch" in parts:
            results["epoch"] = {
                m: run_child("epoch", model=m, max_batches=args.max_batches, **common) for m in args.models.split(",")
            }
            for m, r in results["epoch"].items():
                print(
                    f"epoch {m:>10}: lowmed {r['lowmed']['images_per_s']:6.1f} img/s, reference "
                    f"{r['reference']['images_per_s']:6.1f} img/s, ratio "
                    f"{r['lowmed']['images_per_s'] / r['reference']['images_per_s']:.2f}"
                )
        if "fullrun" in parts:
            weights = args.weights or str(work / "init.pth")
            if not args.weights:
                torch.manual_seed(0)
                torch.save(build_model(get_model_spec(args.fullrun_model), 2).backbone.state_dict(), weights)
            options = {
                **common,
                "model": args.fullrun_model,
                "weights": weights,
                "epochs": args.epochs,
                "fine_tune_epochs": args.fine_tune_epochs,
                "fine_tune_layers": args.fine_tune_layers,
            }
            results["fullrun"] = {side: run_child("fullrun", side=side, **options) for side in args.sides.split(",")}
            ours, theirs = results["fullrun"].get("lowmed"), results["fullrun"].get("reference")
            for side, result in results["fullrun"].items():
                print(
                    f"full run {args.fullrun_model} {side}: {result['wall_seconds']:.1f} s, phases "
                    f"{ {k: round(v, 1) for k, v in result['phase_seconds'].items()} }, "
                    f"val AUROC {result['best_val_auroc']:.3f}, peak RSS {result['peak_rss_mb']:.0f} MB"
                )
        if "fullrun" in parts and ours and theirs:
            print(
                f"full run {args.fullrun_model}: lowmed {ours['wall_seconds']:.1f} s (frozen "
                f"{ours['phase_seconds'].get('frozen', 0):.1f} s, val AUROC {ours['best_val_auroc']:.3f}), reference "
                f"{theirs['wall_seconds']:.1f} s (frozen {theirs['phase_seconds']['frozen']:.1f} s, val AUROC "
                f"{theirs['best_val_auroc']:.3f}); ratio {theirs['wall_seconds'] / ours['wall_seconds']:.2f}x, "
                f"frozen "
                f"{theirs['phase_seconds']['frozen'] / max(ours['phase_seconds'].get('frozen', 1e-9), 1e-9):.1f}x"
            )
        if "tunedcell" in parts:
            cell = run_child("tunedcell", trials=args.trials, **options)
            phases = {"frozen": args.epochs, "finetune": args.fine_tune_epochs}
            reference = reference_cell_seconds(cell, results["fullrun"]["reference"], phases)
            results["tunedcell"] = {"lowmed": cell, "reference_seconds": reference}
            print(tuned_cell_table(results))
        if "prepare" in parts:
            results["prepare"] = {
                "lowmed": run_child("prepare", side="lowmed", tree=args.data),
                "lowmed_cache256": run_child("prepare", side="lowmed", tree=args.data, cache_size=256),
                "reference": run_child("prepare", side="reference", tree=args.data),
            }
            print("prepare: " + ", ".join(f"{k} {v['images_per_s']:.0f} img/s" for k, v in results["prepare"].items()))
        if "evaluate" in parts:
            results["evaluate"] = {
                side: run_child("evaluate", side=side, model=args.fullrun_model, **common)
                for side in ("lowmed", "reference")
            }
            print(
                "evaluate: " + ", ".join(f"{k} {v['images_per_s']:.0f} img/s" for k, v in results["evaluate"].items())
            )
        if "fullres" in parts:
            for split in ("train", "val"):  # the subset's own images, as ~1500 px originals
                count = sum(1 for _ in (work / "tree" / split).rglob("*.jpeg"))
                scaled_tree(work / "tree" / split, work / "fullres" / split, count, longer_side=1500)
            big_prepared = prepare(work / "fullres", work / "fullres-prepared", min_val_per_class=5)
            big_subset = subsample(big_prepared.root, 10**9, out=work / "fullres.csv")
            materialize_tree(big_subset.dataset, work / "fullres-tree")
            results["fullres"] = run_child(
                "epoch",
                model="simplecnn",
                max_batches=args.max_batches,
                subset=work / "fullres.csv",
                tree=work / "fullres-tree",
                image_size=args.image_size,
                batch_size=args.batch_size,
            )
            r = results["fullres"]
            print(
                f"1500 px originals, simplecnn: lowmed {r['lowmed']['images_per_s']:.1f} img/s after decoding once "
                f"({r['lowmed']['decode_once_seconds']:.1f} s), reference {r['reference']['images_per_s']:.1f} img/s"
            )
        if "scaling" in parts:
            results["scaling"] = {}
            for size in map(int, args.sizes.split(",")):
                scaled_tree(Path(args.data) / "train", work / f"scale-{size}" / "train", size)
                for label in ("NORMAL", "PNEUMONIA"):  # a small val and test split so prepare keeps train whole
                    for split in ("val", "test"):
                        shutil.copytree(Path(args.data) / split / label, work / f"scale-{size}" / split / label)
                results["scaling"][size] = run_child("load", tree=work / f"scale-{size}", image_size=args.image_size)
                r = results["scaling"][size]
                print(
                    f"{size:>6} train images ({r['images']} in all): prepare {r['prepare_seconds']:.1f} s, "
                    f"subsample {r['subsample_seconds']:.2f} s, "
                    f"decode {r['decode_seconds']:.1f} s ({'in memory' if r['in_memory'] else 'per batch'}), "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB"
                )
                shutil.rmtree(work / f"scale-{size}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")
    if {"fullrun", "evaluate"} <= set(parts) and args.before:
        print(recipe_table(results, json.loads(Path(args.before).read_text())))
    if "fullrun" in parts and "lowmed" in results["fullrun"]:
        if "reference" in results["fullrun"]:
            print(fullrun_table(results))
        print(cache_table(results))


if __name__ == "__main__":
    main()
