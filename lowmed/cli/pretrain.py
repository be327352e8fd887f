"""lowmed pretrain: self-supervised pretraining on unlabelled images (Model D), for one labelled target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lowmed.cli._options import Device, Overwrite, Quiet, Seed, Strict, Verbose
from lowmed.errors import LowmedError


def pretrain_command(
    unlabelled: Annotated[
        Optional[Path],
        typer.Argument(
            help="The unlabelled images: a folder, a CSV of paths (optional group column), or a corpus prepared with "
            "--role unlabelled.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        Optional[Path],
        typer.Option(
            help="The labelled dataset the pretraining is for (prepared dir or raw folder): its val and test images "
            "are kept out of the corpus, and its val split monitors the pretraining.",
            show_default=False,
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="simclr | moco (MoCo v2: momentum encoder and a queue).")] = "simclr",
    model: Annotated[str, typer.Option(help="Backbone (see lowmed models).")] = "simplecnn",
    init: Annotated[
        str,
        typer.Option(
            help="Start from: none | imagenet | a weights file | a run dir. \\[default: imagenet, none for simplecnn]"
        ),
    ] = "auto",
    epochs: Annotated[int, typer.Option(help="Passes over the corpus.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per step (two views each; the others are negatives).")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (one epoch of warm-up, then cosine).")] = 3e-4,
    temperature: Annotated[float, typer.Option(help="Of the contrastive (NT-Xent) loss.")] = 0.1,
    image_size: Annotated[
        Optional[int], typer.Option(help="Square input size. \\[default: the model's]", show_default=False)
    ] = None,
    crop_min: Annotated[float, typer.Option(help="Views: the smallest crop, as a share of the image's area.")] = 0.5,
    flip: Annotated[
        bool, typer.Option("--flip/--no-flip", help="Views: horizontal flips (off: left and right differ in a chest).")
    ] = False,
    queue: Annotated[int, typer.Option(help="moco: negatives kept from earlier batches.")] = 4096,
    momentum: Annotated[
        float, typer.Option(help="moco: the key encoder's momentum, raised to 1 by a cosine schedule.")
    ] = 0.99,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run dir. \\[default: runs/ssl-<corpus>-<model>-...]")
    ] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue an interrupted pretraining run dir.", show_default=False)
    ] = None,
    device: Device = "auto",
    seed: Seed = 0,
    strict: Strict = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train a backbone on unlabelled images with SimCLR or MoCo v2 (needs lowmed\\[ssl]); then train on labels from
    it with: lowmed train DATA --weights RUN_DIR.

    Images the corpus shares with the target's val or test split (same content, or the same patient group) are
    removed first (--strict: refused). A kNN on the backbone's features, leave-one-out on the target's val split,
    is measured at the start and after every epoch, and chooses best.pt."""
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.config import PretrainConfig
    from lowmed.contracts import RunDir, SelfSupervisedRecord
    from lowmed.training.selfsupervised import pretrain, resume_pretraining

    if resume is not None:
        summary = resume_pretraining(resume)
    else:
        if unlabelled is None:
            raise LowmedError("give UNLABELLED (a folder of images, a CSV of paths or a prepared corpus), or --resume")
        values = {
            "data": str(unlabelled),
            "target": None if target is None else str(target),
            "method": method,
            "model": model,
            "init": init,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "temperature": temperature,
            "image_size": image_size,
            "crop_min": crop_min,
            "flip": flip,
            "queue": queue,
            "momentum": momentum,
            "out": None if out is None else str(out),
            "device": device,
            "seed": seed,
        }
        summary = pretrain(PretrainConfig.from_dict(values, "pretrain"), overwrite=overwrite, strict=strict)
    record = SelfSupervisedRecord.read(RunDir(summary.run_dir).self_supervised)
    table = Table(title=f"{record.method} · {record.model} · {record.monitor['kind']}", title_justify="left")
    for column in ("epoch", "train loss", "kNN AUROC", "kNN accuracy"):
        table.add_column(column, justify="right")
    for row in record.monitor["curve"]:
        loss = row.get("train_loss")
        mark = " ★" if row["epoch"] == record.best_epoch else ""
        table.add_row(
            f"{row['epoch']}{' (start)' if row['epoch'] == 0 else ''}",
            "—" if loss is None else f"{loss:.3f}",
            f"{row['knn_auroc']:.3f}{mark}",
            f"{row['knn_accuracy']:.3f}",
        )
    stdout.print(table)
    stdout.print(
        f"corpus {record.corpus['images']} images; {record.leakage.sentence()}; best epoch {record.best_epoch} "
        f"({record.monitor['metric']} {record.best_value:.3f}); {record.images_per_s} images/s",
        highlight=False,
    )
    stdout.print(
        f"Train from it: lowmed train DATA --model {record.model} --weights {summary.run_dir}", highlight=False
    )
