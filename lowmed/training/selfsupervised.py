"""``lowmed pretrain``: self-supervised pretraining of a backbone on the user's own unlabelled images (Model D).

A clinic with 100–200 labelled images per class usually holds thousands more without labels. This module trains a
backbone on them with a contrastive method — SimCLR (Chen et al. 2020) or MoCo v2 (Chen et al. 2020; a momentum key
encoder and a queue of negatives, the method of MoCo-CXR) — from random weights or, the practical choice on a CPU,
from ImageNet weights (domain-adaptive pretraining). The losses, projection heads and momentum update are lightly's
(the ``ssl`` extra); the loop, checkpoints and resume are lowmed's, and the views are lowmed's batch warps, mild
enough for medical images (``lowmed.data.augment.random_views``).

Before anything trains, the corpus is guarded against its target (``lowmed.data.leakage``): images it shares with
the target's val or test split are refused. After every epoch a kNN classifier on the backbone's features,
leave-one-out on the target's val split (labels used to monitor only; the test split is never opened), measures the
features and chooses ``best.pt`` — epoch 0 is the starting weights, so the curve shows what the pretraining added.
``best.pt`` is a lowmed checkpoint whose backbone ``lowmed train --weights RUN_DIR`` starts from.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lowmed
from lowmed.config import PretrainConfig
from lowmed.console import progress_bar
from lowmed.contracts import MANIFEST, BestEpoch, DatasetRef, RunDir, SelfSupervisedRecord, TrainSummary, slug
from lowmed.data.augment import ViewSettings, random_views
from lowmed.data.leakage import guard_pretraining
from lowmed.data.loading import LabelledImages, index_chunks, label_tensors, load_split
from lowmed.data.manifest import PreparedDataset
from lowmed.data.subsample import load_or_prepare
from lowmed.device import (
    Precision,
    channels_last,
    device_name,
    inference_batch_size,
    resolve_device,
    software_versions,
)
from lowmed.errors import Interrupted, LowmedError, RunFailed
from lowmed.evaluation.metrics import auroc
from lowmed.io import sha256_file
from lowmed.locking import own_run_dir
from lowmed.models.checkpoint import BestSoFar, Checkpoint, CheckpointHeader
from lowmed.models.forward import Normalizer, predict_logits
from lowmed.models.registry import count_parameters, get_model_spec
from lowmed.models.weights import load_weights, resolve_weights, weights_kind, weights_preprocessing
from lowmed.preprocessing import Preprocessing
from lowmed.training.checkpoint import CheckpointSaver, check_run_dir, read_training_state, start_run_dir
from lowmed.training.loop import seed_everything

log = logging.getLogger(__name__)

KNN_TEMPERATURE = 0.07  # the weight of a neighbour's vote is exp(cosine similarity / this), as in Wu et al. 2018
PHASE = "self-supervised"


def lightly_modules() -> tuple[Any, ...]:
    """lightly's loss, heads and momentum update; a missing lightly is one line naming the extra."""
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead, SimCLRProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.utils.scheduler import cosine_schedule
    except ImportError:
        raise LowmedError(
            "self-supervised pretraining needs lightly; install it with: pip install 'lowmed[ssl]'"
        ) from None
    return (
        NTXentLoss,
        SimCLRProjectionHead,
        MoCoProjectionHead,
        deactivate_requires_grad,
        update_momentum,
        (cosine_schedule),
    )


class ContrastiveModel(nn.Module):
    """A backbone and its projection head; for MoCo also their momentum copies (the key encoder), which no gradient
    reaches. ``backbone.*`` in its state dict is what later runs start from."""

    def __init__(self, backbone: nn.Module, feature_dim: int, config: PretrainConfig) -> None:
        super().__init__()
        _, simclr_head, moco_head, deactivate, _, _ = lightly_modules()
        head = moco_head if config.method == "moco" else simclr_head
        self.backbone = backbone
        self.projector = head(feature_dim, config.hidden_dim, config.projection_dim)
        self.key_backbone: nn.Module | None = None
        self.key_projector: nn.Module | None = None
        if config.method == "moco":
            self.key_backbone, self.key_projector = copy.deepcopy(backbone), copy.deepcopy(self.projector)
            deactivate(self.key_backbone)
            deactivate(self.key_projector)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def keys(self, x: torch.Tensor, momentum: float) -> torch.Tensor:
        """MoCo: the momentum encoder moved towards the online one, then its projections of ``x``."""
        assert self.key_backbone is not None and self.key_projector is not None  # MoCo's
        update_momentum = lightly_modules()[4]
        update_momentum(self.backbone, self.key_backbone, momentum)
        update_momentum(self.projector, self.key_projector, momentum)
        return self.key_projector(self.key_backbone(x)).detach()


def pretrain(
    config: PretrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
) -> TrainSummary:
    """Pretrain a backbone on ``config.data`` for ``config.target``; returns the summary also written to
    ``train.json`` (``pretrain.json`` holds the method, the views, the leakage guard and the monitor's curve)."""
    lightly_modules()  # a missing lightly is refused before any work
    config.validate()
    assert config.data is not None and config.target is not None  # validate() requires them
    spec = get_model_spec(config.model)
    corpus = load_or_prepare(Path(config.data).expanduser(), None, role="unlabelled")
    if corpus.role != "unlabelled":
        raise LowmedError(
            f"{config.data}: a labelled dataset; self-supervised pretraining takes images without labels (prepare "
            "them with --role unlabelled)"
        )
    target = load_or_prepare(Path(config.target).expanduser(), None).check_trainable()
    if target.split("val").empty:
        raise LowmedError(f"--target {target.root}: no val split to monitor the pretraining on")
    config = _resolved(config, spec, corpus, target)
    assert config.out is not None and config.image_size is not None  # _resolved fills them
    run_dir = RunDir(config.out)
    with own_run_dir(run_dir.path, "pretrain"):
        check_run_dir(run_dir, resume, overwrite)
        rows = corpus.manifest
        overlap = guard_pretraining(rows, target, f"the corpus {corpus.root}", strict)
        state = read_training_state(run_dir) if resume else None
        device = resolve_device(config.device)
        seed_everything(config.seed)
        backbone = spec.build_backbone()
        report = load_weights(backbone, spec, config.init, weights_dir=config.weights_dir)
        preprocessing = _contract(report.source_preprocessing, spec, config)
        images = _images(corpus, rows, target, config.image_size)
        if not resume:
            start_run_dir(run_dir, config.to_dict())
        summary = _summary(config, corpus, report, preprocessing, device, count_parameters(backbone))
        summary.status = "running"
        summary.write(run_dir.summary)
        record = SelfSupervisedRecord(
            method=config.method,
            model=spec.name,
            init={"weights": config.init, "source": report.source, "sha256": report.sha256},
            views=_views(config).__dict__,
            corpus={
                "prepared_dir": str(corpus.root),
                "manifest_sha256": corpus.info.manifest_sha256,
                "images": len(corpus.manifest),
                "used": len(images.corpus),
                "groups": int(rows["group"].nunique()),
            },
            target={
                "prepared_dir": str(target.root),
                "manifest_sha256": target.info.manifest_sha256,
                "monitor_split": "val",
                "monitor_images": len(images.val),
            },
            leakage=overlap,
            monitor={
                "kind": f"kNN (k {config.knn_k}, cosine, leave-one-out) on the target's val split",
                "metric": config.monitor,
                "curve": [],
            },
            epochs=config.epochs,
        )
        model = ContrastiveModel(backbone, spec.feature_dim, config).to(device)
        if channels_last(device):
            model.to(memory_format=torch.channels_last)
        started = time.perf_counter()
        try:
            history, best = _run(model, images, config, preprocessing, run_dir, state)
        except KeyboardInterrupt:
            summary.status = "interrupted"
            summary.write(run_dir.summary)
            raise Interrupted(
                f"interrupted; {run_dir.last.name} holds the last finished epoch; continue with: "
                f"lowmed pretrain --resume {run_dir.path}"
            ) from None
        except RunFailed as exc:
            summary.status, summary.error = "failed", str(exc)
            summary.write(run_dir.summary)
            raise
        trained = [row for row in history if row["epoch"] > 0]
        record.monitor["curve"] = [{k: row.get(k) for k in ("epoch", "train_loss", *_MONITORED)} for row in history]
        best_epoch, best_value = best.reached()
        record.best_epoch, record.best_value = best_epoch, best_value
        record.images_per_s = round(float(np.median([row["images_per_s"] for row in trained])), 1)
        record.seconds = round(sum(row["seconds"] for row in trained), 2)
        record.write(run_dir.self_supervised)
        summary.status, summary.phases, summary.epochs_run = "completed", [PHASE], len(trained)
        summary.best = BestEpoch(
            epoch=best_epoch,
            phase=PHASE,
            monitor=config.monitor,
            value=best_value,
            metrics={k: history[best_epoch][k] for k in _MONITORED},
        )
        summary.wall_seconds = round(time.perf_counter() - started, 2)
        summary.resumed = state is not None
        summary.epoch_seconds_total = record.seconds
        summary.train_images_per_s = {PHASE: record.images_per_s}
        summary.write(run_dir.summary)
        log.info(f"{run_dir.path}: {overlap.sentence()}; best epoch {best_epoch}")
        if best_epoch == 0 and trained:
            log.warning(
                f"{run_dir.path}: no epoch beat the starting weights on the monitor ({config.monitor} "
                f"{best_value:.3f} at the start), so best.pt holds the starting weights: runs from it start where "
                "they would without this pretraining (try more epochs, a lower --lr, or a larger corpus)"
            )
        return summary


_MONITORED = ("knn_auroc", "knn_accuracy")


def _resolved(config: PretrainConfig, spec, corpus: PreparedDataset, target: PreparedDataset) -> PretrainConfig:
    init = resolve_weights(config.init, spec.name)
    kind = weights_kind(init, spec)
    init = str(Path(init).resolve()) if kind in ("file", "run") else init
    config = replace(
        config,
        data=str(corpus.root),
        target=str(target.root),
        model=spec.name,
        init=init,
        image_size=config.image_size or weights_preprocessing(init, spec).input_size,
        amp=config.amp if config.amp is not None else resolve_device(config.device).type == "cuda",
    )
    if config.image_size < spec.min_input_size:
        raise LowmedError(f"--image-size {config.image_size}: {spec.name} needs at least {spec.min_input_size} px")
    if config.out is None:
        name = f"ssl-{corpus.root.name}-{slug(spec.name)}-{config.method}-seed{config.seed}"
        config = replace(config, out=str(Path("runs") / name))
    return config


def _views(config: PretrainConfig) -> ViewSettings:
    return ViewSettings(config.crop_min, config.rotation, config.intensity, config.flip)


def _contract(source: dict | None, spec, config: PretrainConfig) -> Preprocessing:
    """The input contract of the starting weights (a lowmed run's or torchxrayvision's, else the model's) at this
    run's image size."""
    contract = Preprocessing.from_dict(source) if source else spec.preprocessing
    assert config.image_size is not None  # _resolved fills it
    return contract.with_input(config.image_size, None, None)


@dataclass
class _Images:
    corpus: LabelledImages
    val: LabelledImages  # the target's, to monitor the features on
    task: str  # the target's


def _images(corpus: PreparedDataset, rows, target: PreparedDataset, size: int) -> _Images:
    """The corpus (after the guard) and the target's val split, decoded once; nothing of the test split."""
    log.info(f"decoding {len(rows)} corpus images and {len(target.split('val'))} val images at {size} px")
    pictures = load_split(corpus.image_paths(rows), torch.zeros(len(rows), dtype=torch.long), None, size)
    val = target.split("val")
    targets, mask = label_tensors(val, target.task, target.classes, target.info.uncertain_policy)
    checked = load_split(target.image_paths(val), targets, mask, size)
    if pictures.pixels is None or checked.pixels is None:
        raise LowmedError(f"{corpus.root}: too many images to hold in memory at {size} px; lower --image-size")
    return _Images(pictures, checked, target.task)


@dataclass
class _Pretraining:
    """What each step and each monitoring pass of a pretraining reads."""

    model: ContrastiveModel
    criterion: Any  # lightly's NTXentLoss (MoCo: with its memory bank)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    normalize: Normalizer
    device: torch.device
    precision: Precision
    config: PretrainConfig
    views: ViewSettings
    total_steps: int

    def training_state(self) -> dict:
        """What ``last.pt`` needs to continue the pretraining."""
        bank = self.criterion.memory_bank
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "queue": {"bank": bank.bank, "bank_ptr": bank.bank_ptr} if bank.size[0] else None,
            "phase_index": 0,
            "torch_rng": torch.get_rng_state(),
        }


def _run(
    model: ContrastiveModel,
    images: _Images,
    config: PretrainConfig,
    preprocessing: Preprocessing,
    run_dir: RunDir,
    state: Checkpoint | None,
) -> tuple[list[dict], BestSoFar]:
    """The epochs, from ``state`` (last.pt) when resuming: each one's views drawn from (seed, epoch), so a resumed
    run replays what the uninterrupted one would have done."""
    corpus, val = images.corpus, images.val
    assert corpus.pixels is not None  # _images decoded them
    device = resolve_device(config.device)
    batch_size = min(config.batch_size, len(corpus))
    steps_per_epoch = len(index_chunks(torch.arange(len(corpus)), batch_size, drop_last=True))
    queue = min(config.queue, len(corpus)) if config.method == "moco" else 0
    criterion = lightly_modules()[0](
        temperature=config.temperature, memory_bank_size=(queue, config.projection_dim) if queue else 0
    )
    criterion.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch

    def factor(step: int) -> float:  # one epoch of linear warm-up, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup + 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    precision = Precision.choose(device, bool(config.amp))
    run = _Pretraining(
        model,
        criterion,
        optimizer,
        scheduler,
        Normalizer(preprocessing, device),
        device,
        precision,
        config,
        _views(config),
        total,
    )
    header = CheckpointHeader(
        config=config.to_dict(),
        preprocessing=preprocessing.to_dict(),
        task=PHASE,
        classes=[],
        lowmed_version=lowmed.__version__,
    )
    resumed = state.training if state else None
    if state is not None and resumed is not None:
        assert state.epoch is not None and resumed.scheduler is not None and resumed.torch_rng is not None  # last.pt
        model.load_state_dict(state.model)
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        if queue:  # lightly keeps the queue out of the state dict: it travels in last.pt by itself
            assert resumed.queue is not None
            criterion.memory_bank.bank.copy_(resumed.queue["bank"])
            criterion.memory_bank.bank_ptr.copy_(resumed.queue["bank_ptr"])
        history, start = list(resumed.history), state.epoch + 1
        torch.set_rng_state(resumed.torch_rng)
    else:
        history, start = [_monitor(run, val, images.task, 0)], 1
    saver = CheckpointSaver(run_dir, config.monitor, header, writes=True, best=resumed.best if resumed else None)
    with saver, progress_bar() as bar:
        task = bar.add_task(f"{config.method} · {config.model}", total=config.epochs, completed=start - 1, status="")
        if state is None:
            saver.epoch_end(model, history[0], history, run.training_state())
        for epoch in range(start, config.epochs + 1):
            generator = torch.Generator()
            generator.manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(corpus), generator=generator)
            started, losses = time.perf_counter(), list[float]()
            model.train()
            for rows in index_chunks(order, batch_size, drop_last=True):
                step = (epoch - 1) * steps_per_epoch + len(losses)
                losses.append(_step(run, corpus.pixels[rows], generator, step))
                scheduler.step()
                if not math.isfinite(losses[-1]):
                    raise RunFailed(f"the loss became {losses[-1]} at epoch {epoch}; lower --lr or raise --temperature")
            seconds = time.perf_counter() - started
            row = _monitor(run, val, images.task, epoch)
            row |= {
                "train_loss": float(np.mean(losses)),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 2),
                "images_per_s": round(len(losses) * batch_size / seconds, 1),  # corpus images (two views each)
            }
            history.append(row)
            saver.epoch_end(model, row, history, run.training_state())
            bar.update(
                task, advance=1, status=f"loss {row['train_loss']:.3f} · {config.monitor} {row[config.monitor]:.3f}"
            )
    return history, saver.best


def _step(run: _Pretraining, pixels: torch.Tensor, generator: torch.Generator, step: int) -> float:
    """One optimizer step on two views of each image of the batch."""
    device, model, config = run.device, run.model, run.config
    x = pixels.to(device, non_blocking=True).float().div_(255)
    first, second = (run.normalize(random_views(x, run.views, generator)) for _ in range(2))
    if channels_last(device):
        first, second = (v.contiguous(memory_format=torch.channels_last) for v in (first, second))
    with run.precision.autocast(device):
        if config.method == "moco":
            cosine_schedule = lightly_modules()[5]
            momentum = cosine_schedule(step, run.total_steps, config.momentum, 1.0)
            loss = run.criterion(model(first), model.keys(second, momentum))
        else:
            loss = run.criterion(model(first), model(second))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.detach())


def _monitor(run: _Pretraining, val: LabelledImages, task: str, epoch: int) -> dict:
    """The backbone's features of the target's val images, each classified by its k nearest other val images
    (cosine similarity, votes weighted by exp(similarity / 0.07)): AUROC and accuracy of those votes."""
    device, config = run.device, run.config
    features = predict_logits(
        run.model.backbone,
        val,
        run.normalize,
        device,
        run.precision,
        inference_batch_size(device, 2 * config.batch_size),
    )
    features = nn.functional.normalize(features.float(), dim=1)
    similarity = features @ features.T
    similarity.fill_diagonal_(-math.inf)  # leave one out: an image is not its own neighbour
    k = min(config.knn_k, len(val) - 1)
    nearest, index = similarity.topk(k, dim=1)
    weights = torch.exp(nearest / KNN_TEMPERATURE)
    targets = val.targets.to(device)
    if task == "multilabel":
        votes = (weights.unsqueeze(-1) * targets[index]).sum(1) / weights.sum(1, keepdim=True)
        accuracy = float(((votes >= 0.5) == (targets >= 0.5)).float().mean())
    else:
        classes = int(targets.max()) + 1 if task == "multiclass" else 2
        onehot = nn.functional.one_hot(targets[index], classes).float()
        votes = (weights.unsqueeze(-1) * onehot).sum(1) / weights.sum(1, keepdim=True)
        accuracy = float((votes.argmax(1) == targets).float().mean())
    mask = None if val.mask is None else val.mask.numpy()
    score = auroc(task, targets.cpu().numpy(), votes.cpu().numpy(), mask)
    return {"phase": PHASE if epoch else "start", "epoch": epoch, "knn_auroc": score, "knn_accuracy": accuracy}


def _summary(config, corpus: PreparedDataset, report, preprocessing, device, parameters: int) -> TrainSummary:
    return TrainSummary(
        run_dir=config.out,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        arm=Path(config.out).name,
        model=config.model,
        parameters=parameters,
        weights=report,
        weight_source=report.source,
        dataset=DatasetRef(
            prepared_dir=str(corpus.root),
            task="unlabelled",
            classes=[],
            manifest_sha256=sha256_file(corpus.root / MANIFEST),
        ),
        seed=config.seed,
        preprocessing=preprocessing.to_dict(),
        device=str(device),
        device_name=device_name(device),
        cpu_threads=torch.get_num_threads(),
        amp=bool(config.amp),
        kind="self-supervised",
        versions=software_versions(),
    )


def resume_pretraining(run_dir: str | os.PathLike) -> TrainSummary:
    """Continue an interrupted pretraining from its ``last.pt`` with its own ``config.yaml``; a completed one is left
    as it is."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise LowmedError(f"--resume {run.path}: no {run.config.name}; expected a lowmed pretrain run dir")
    if run.state() == "completed":
        return run.read_summary()
    config = PretrainConfig.from_yaml(run.config)
    return pretrain(replace(config, out=str(run.path)), resume=True)
