"""The training loop: phases (frozen head, then fine-tuning), AMP, early stopping, checkpoints, resume.

Randomness is re-seeded from (seed, phase, epoch) at the start of every epoch — shuffling, augmentation
and dropout alike — so a resumed run replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from lowmed.config import TrainConfig
from lowmed.console import progress_bar
from lowmed.contracts import BestEpoch, RunDir
from lowmed.data.augment import augment_batch
from lowmed.data.loading import LabelledImages, index_chunks
from lowmed.device import Precision, channels_last, inference_batch_size
from lowmed.distributed import Distributed
from lowmed.errors import RunFailed
from lowmed.evaluation.metrics import accuracy, auroc, probabilities
from lowmed.interrupts import StopAfterBatch
from lowmed.models.checkpoint import Checkpoint, CheckpointHeader
from lowmed.models.forward import Normalizer, model_input, predict_logits
from lowmed.models.registry import Classifier, layer_groups
from lowmed.training.checkpoint import CheckpointSaver
from lowmed.training.features import ActivationCache, PhaseCaches, SharedCaches

log = logging.getLogger(__name__)

AUX_LOSS_WEIGHT = 0.4  # Inception v3's auxiliary classifier, as in the paper
SYNC_EVERY = 20  # batches between copies of the loss to the CPU (each copy waits for the GPU)


@dataclass(frozen=True)
class Phase:
    name: str  # frozen | finetune | full
    epochs: int
    lr: float


def plan_phases(config: TrainConfig, pretrained: bool) -> list[Phase]:
    """Pretrained + --freeze-base: train the head on a frozen backbone, then unfreeze the last N layers at a
    lower learning rate. Otherwise everything trains from the start."""
    if pretrained and config.freeze_base:
        phases = [Phase("frozen", config.epochs, config.lr)]
        if config.fine_tune_epochs > 0 and config.fine_tune_layers > 0:
            phases.append(Phase("finetune", config.fine_tune_epochs, config.fine_tune_lr))
        return phases
    return [Phase("full", config.epochs, config.lr)]


class Criterion:
    """Cross-entropy (class-weighted) or masked binary cross-entropy for multi-label data."""

    def __init__(self, task: str, weights: torch.Tensor | None) -> None:
        self.task = task
        self.weights = weights

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if self.task != "multilabel":
            return nn.functional.cross_entropy(logits, targets, weight=self.weights)
        assert mask is not None  # multi-label targets come with the mask of their known labels
        losses = nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none", pos_weight=self.weights
        )
        return (losses * mask).sum() / mask.sum().clamp(min=1)


def class_weights(task: str, targets: torch.Tensor, mask: torch.Tensor | None, classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the train counts (``pos_weight`` = negatives/positives for multi-label)."""
    if task != "multilabel":
        counts = torch.bincount(targets, minlength=classes).float().clamp(min=1)
        return counts.sum() / (classes * counts)
    assert mask is not None  # multi-label targets come with the mask of their known labels
    positives = (targets * mask).sum(0)
    negatives = ((1 - targets) * mask).sum(0)
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives)).clamp(max=100)


def frozen_layers(model: Classifier, phase: Phase, fine_tune_layers: int) -> list[nn.Module]:
    """The backbone layers that stay frozen in ``phase``."""
    groups = layer_groups(model.backbone)
    if phase.name == "full":
        return []
    if phase.name == "frozen":
        return groups
    return groups[: max(0, len(groups) - fine_tune_layers)]


def set_trainable(model: Classifier, phase: Phase, fine_tune_layers: int) -> list[nn.Module]:
    """Freeze/unfreeze for the phase; returns the backbone layers that stay frozen."""
    frozen = frozen_layers(model, phase, fine_tune_layers)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for module in frozen:
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: list[nn.Module], freeze_bn: bool = False) -> None:
    """Training mode, except that frozen layers keep their normalisation statistics fixed, and with ``freeze_bn``
    every 2-D batch norm (the backbone's; the head's are 1-D) too."""
    model.train()
    for module in frozen:
        module.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


@dataclass
class LoopInputs:
    model: Classifier
    train: LabelledImages
    val: LabelledImages
    task: str
    criterion: Criterion
    normalize: Normalizer  # the weights' preprocessing contract, on the device
    device: torch.device
    precision: Precision
    run_dir: RunDir
    checkpoint_header: CheckpointHeader  # what every checkpoint carries besides the weights
    dist: Distributed = field(default_factory=Distributed)
    pretrained: bool = False  # the backbone started from weights (its batch-norm statistics mean something)

    @property
    def channels_last(self) -> bool:
        return channels_last(self.device)


@dataclass
class PhaseRun:
    """One phase as it trains: the module that takes the steps and everything that changes as they are taken."""

    phase: Phase
    index: int  # of the phase in the run's plan
    frozen: list[nn.Module]
    cache: ActivationCache | None  # the frozen layers' outputs, when the phase trains on them
    trained: nn.Module  # the cache's top or the whole model; under torchrun, wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    stop: StopAfterBatch
    epoch: int = 0  # epochs of this phase so far
    stale: int = 0  # epochs since the monitored value last improved
    generator: torch.Generator = field(default_factory=torch.Generator)  # this epoch's: order, augmentation, view

    def training_state(self, patience: int) -> dict:
        """What ``last.pt`` needs of this phase to continue it."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "phase_index": self.index,
            "phase_epoch": self.epoch,
            "phase_done": self.epoch >= self.phase.epochs or self.stale >= patience,
            "stale_epochs": self.stale,
        }


@dataclass
class LoopResult:
    """What the loop hands back to ``train``: one history row per epoch, the best epoch, each phase's cache report,
    and the epoch after which a tuner's pruner stopped the run (None when it ran to its end)."""

    history: list[dict]
    best: BestEpoch
    caches: dict
    pruned_at: int | None


@dataclass
class TrialHooks:
    """What the tuner adds to a run it trains as one of its trials."""

    number: int  # the trial's number in its tuning study, recorded in train.json
    should_stop: Callable[[dict], bool]  # given each epoch's history row; True ends the run there (pruned)
    caches: SharedCaches  # activation caches shared by the trials of one cell


def _epoch_generator(seed: int, phase_index: int, epoch: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + phase_index * 10_007 + epoch)
    return generator


def evaluate_split(inputs: LoopInputs, split: LabelledImages, batch_size: int) -> dict[str, float]:
    """Loss, accuracy and AUROC on a split, in inference mode."""
    share = split.part(inputs.dist.shard(len(split))) if inputs.dist.enabled else split
    logits = predict_logits(
        inputs.model,
        share,
        inputs.normalize,
        inputs.device,
        inputs.precision,
        inference_batch_size(inputs.device, batch_size * 2),
    )
    return validation_metrics(inputs, split, inputs.dist.gather(logits))


def validation_metrics(inputs: LoopInputs, split: LabelledImages, logits: torch.Tensor) -> dict[str, float]:
    device_mask = None if split.mask is None else split.mask.to(inputs.device)
    loss = inputs.criterion(logits, split.targets.to(inputs.device), device_mask).item()
    probs = probabilities(logits, inputs.task).cpu().numpy()
    targets, mask = split.targets.numpy(), None if split.mask is None else split.mask.numpy()
    return {
        "val_loss": loss,
        "val_accuracy": accuracy(inputs.task, targets, probs, mask),
        "val_auroc": auroc(inputs.task, targets, probs, mask),
    }


def run_phases(
    inputs: LoopInputs,
    config: TrainConfig,
    phases: list[Phase],
    state: Checkpoint | None,
    trial: TrialHooks | None = None,
) -> LoopResult:
    """Train through ``phases``, starting from ``state`` (a ``last.pt``) when resuming."""
    best = state.training.best if state and state.training else None
    saver = CheckpointSaver(inputs.run_dir, config.monitor, inputs.checkpoint_header, inputs.dist.is_main, best)
    with StopAfterBatch() as stop, saver:
        return _run_phases(inputs, config, phases, state, stop, saver, trial)


def _run_phases(
    inputs: LoopInputs,
    config: TrainConfig,
    phases: list[Phase],
    state: Checkpoint | None,
    stop: StopAfterBatch,
    saver: CheckpointSaver,
    trial: TrialHooks | None,
) -> LoopResult:
    model, device = inputs.model, inputs.device
    resumed = state.training if state else None  # last.pt's training state, for the phase it stopped in
    history: list[dict] = list(resumed.history) if resumed else []
    caches = PhaseCaches(inputs, config, trial.caches if trial else None)
    for phase_index in range(resumed.phase_index if resumed else 0, len(phases)):
        phase = phases[phase_index]
        resumed_here = resumed if resumed is not None and phase_index == resumed.phase_index else None
        if phase_index > 0 and resumed_here is None:
            # each new phase starts from the best weights so far, not from the last epoch's
            saver.flush()
            inputs.dist.barrier()  # rank 0 has written best.pt
            model.load_state_dict(saver.best_weights())
        frozen = set_trainable(model, phase, config.fine_tune_layers)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=phase.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=_direction(config.monitor), factor=0.5, patience=max(1, config.patience // 2)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=inputs.precision.needs_scaler)
        phase_epoch, stale = 0, 0
        if resumed_here is not None:
            assert state is not None and resumed_here.scheduler is not None and resumed_here.scaler is not None
            model.load_state_dict(state.model)
            optimizer.load_state_dict(resumed_here.optimizer)
            scheduler.load_state_dict(resumed_here.scheduler)
            scaler.load_state_dict(resumed_here.scaler)
            phase_epoch, stale = resumed_here.phase_epoch, resumed_here.stale_epochs
            if resumed_here.phase_done:
                continue
        cache_started = time.perf_counter()
        cache = None
        if phase.name != "full":
            following = phases[phase_index + 1] if phase_index + 1 < len(phases) else None
            finetune_frozen = frozen_layers(model, following, config.fine_tune_layers) if following else None
            cache = caches.for_phase(phase.name, frozen, finetune_frozen)
            log.info(f"{phase.name}: {cache.describe() if cache else caches.reports[phase.name]['reason']}")
        setup_seconds = time.perf_counter() - cache_started  # counted in the phase's first epoch
        # under torchrun, the module that trains this phase is wrapped once its frozen layers are set
        trained = (
            inputs.dist.wrap(cache.top)
            if cache is not None
            else inputs.dist.wrap(model, find_unused=model.aux_head is not None)
        )
        if config.compile:  # compiles what takes the steps; checkpoints keep the plain module's names
            trained = cast(nn.Module, torch.compile(trained))
        run = PhaseRun(
            phase, phase_index, frozen, cache, trained, optimizer, scheduler, scaler, stop, phase_epoch, stale
        )
        while run.epoch < phase.epochs:
            run.epoch += 1
            epoch = len(history) + 1
            run.generator = _epoch_generator(config.seed, phase_index, run.epoch)
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=run.generator)))
            epoch_started = time.perf_counter()
            train_loss, seen, train_seconds, metrics = _epoch(inputs, config, run, epoch)
            scheduler.step(metrics[config.monitor])
            seconds = time.perf_counter() - epoch_started + setup_seconds  # training and validation
            setup_seconds = 0.0
            row = {
                "phase": phase.name,
                "epoch": epoch,
                "phase_epoch": run.epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                **metrics,
                "seconds": round(seconds, 3),
                "images_per_s": round(seen / train_seconds, 1),
            }
            history.append(row)
            run.stale = 0 if _improved(history, phase.name, config.monitor) else run.stale + 1
            is_best = saver.epoch_end(model, metrics, history, run.training_state(config.patience))
            _log_epoch(row, is_best)
            if trial is not None and trial.should_stop(row):
                return LoopResult(history, _best_epoch(saver, history), caches.reports, pruned_at=epoch)
            if run.stale >= config.patience:
                log.info(f"early stop in {phase.name}: {config.monitor} did not improve for {config.patience} epochs")
                break
        state = None
    return LoopResult(history, _best_epoch(saver, history), caches.reports, pruned_at=None)


def _best_epoch(saver: CheckpointSaver, history: list[dict]) -> BestEpoch:
    epoch, value = saver.best.reached()
    row = history[epoch - 1]
    return BestEpoch(
        epoch=row["epoch"],
        phase=row["phase"],
        monitor=saver.monitor,
        value=value,
        metrics={k: v for k, v in row.items() if k.startswith("val_")},
    )


def _epoch_order(train: LabelledImages, balanced: bool, generator: torch.Generator) -> torch.Tensor:
    if balanced:
        counts = torch.bincount(train.targets).float()
        return torch.multinomial((1 / counts)[train.targets], len(train), replacement=True, generator=generator)
    return torch.randperm(len(train), generator=generator)


def _epoch(inputs: LoopInputs, config: TrainConfig, run: PhaseRun, epoch: int) -> tuple[float, int, float, dict]:
    """Train the run's epoch (the phase's ``run.epoch``, the run's ``epoch``) — the top of the network on cached
    activations, or the whole model on augmented images — and validate.

    Returns the train loss, the images seen (by all processes), the seconds spent training (for images/s; the
    epoch's wall time adds validation) and the validation metrics.
    """
    model, device, dist = inputs.model, inputs.device, inputs.dist
    phase, cache, trained, generator = run.phase, run.cache, run.trained, run.generator
    started = time.perf_counter()
    if dist.enabled:
        order = dist.epoch_order(len(inputs.train), config.seed * 1_000 + run.index, run.epoch)
    else:
        order = _epoch_order(inputs.train, config.balanced_sampler, generator)
    images_on_device = inputs.train.pixels is not None and inputs.train.pixels.device.type == device.type
    if images_on_device or cache is not None:
        order = order.to(device)  # batches are picked on the device: no index copy per batch
    chunks = index_chunks(order, config.batch_size, drop_last=len(order) > config.batch_size)
    # with --freeze-bn a pretrained backbone's statistics stay as they are while it fine-tunes
    freeze_bn = config.freeze_bn and inputs.pretrained and phase.name != "frozen"
    if cache is not None:
        train_mode(cache.top, run.frozen, freeze_bn)
        batches: Iterable[tuple[torch.Tensor | None, torch.Tensor]] = [(None, rows) for rows in chunks]

        def forward(_, rows):
            return trained(cache.train_batch(run.epoch, rows))

    else:
        train_mode(model, run.frozen, freeze_bn)
        batches = inputs.train.batches(chunks, config.workers)

        def forward(images, rows):
            def augment(batch):
                return augment_batch(batch, config.augment_strength, generator)

            return trained(model_input(images, inputs.normalize, device, augment, inputs.channels_last))

    train_loss, seen = _train_one_epoch(inputs, config, run, batches, len(chunks), forward, epoch)
    train_seconds = time.perf_counter() - started
    if cache is not None:
        batch = inference_batch_size(device, config.batch_size * 2)
        metrics = validation_metrics(inputs, inputs.val, cache.val_logits(inputs.precision, batch))
    else:
        metrics = evaluate_split(inputs, inputs.val, config.batch_size)
    return dist.mean(train_loss, seen), seen * dist.world_size, train_seconds, metrics


def _train_one_epoch(
    inputs: LoopInputs, config: TrainConfig, run: PhaseRun, batches, total: int, forward, epoch: int
) -> tuple[float, int]:
    """One pass over ``batches`` ((images, rows) pairs); an optimizer step every ``config.accumulate`` batches
    (one per batch by default), gradients averaged over processes only on those steps.

    ``forward(images, rows)`` gives the model's output: the whole model on augmented images, or the top of the
    network on cached activations. The loss is copied to the CPU every SYNC_EVERY batches, not every batch.
    """
    train, device = inputs.train, inputs.device
    phase, trained, optimizer, scaler = run.phase, run.trained, run.optimizer, run.scaler
    all_targets = train.targets.to(device)  # one copy per epoch; each batch picks its rows on the device
    all_mask = None if train.mask is None else train.mask.to(device)
    pending: list[torch.Tensor] = []
    losses: list[float] = []
    sizes: list[int] = []

    def check_pending(show) -> None:
        values = torch.stack(pending).float().cpu().tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise RunFailed(
                    f"the loss became {value} at epoch {epoch}, batch {len(losses) + offset + 1} "
                    f"({phase.name} phase); try a lower --lr (now {phase.lr:g}) or --no-amp"
                )
        losses.extend(values)
        pending.clear()
        show(f"loss {np.average(losses, weights=sizes[: len(losses)]):.4f}")

    optimizer.zero_grad(set_to_none=True)
    with progress_bar() as bar:
        task = bar.add_task(f"{phase.name} epoch {epoch}", total=total, status="")

        def show(text: str) -> None:
            bar.update(task, status=text)

        for step, (images, rows) in enumerate(batches, start=1):
            steps_now = step % config.accumulate == 0 or step == total
            rows = rows.to(device, non_blocking=True)  # already there, unless the images are read per batch
            targets = all_targets[rows]
            mask = None if all_mask is None else all_mask[rows]
            no_sync = getattr(trained, "no_sync", None)  # DDP's, also through torch.compile's wrapper
            gradient_sync = no_sync() if no_sync is not None and not steps_now else nullcontext()
            with gradient_sync:
                with inputs.precision.autocast(device):
                    output = forward(images, rows)
                if isinstance(output, tuple):
                    loss = inputs.criterion(output[0], targets, mask) + AUX_LOSS_WEIGHT * inputs.criterion(
                        output[1], targets, mask
                    )
                else:
                    loss = inputs.criterion(output, targets, mask)
                scaler.scale(loss / config.accumulate).backward()
            if steps_now:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            pending.append(loss.detach())
            sizes.append(len(rows))
            if step % SYNC_EVERY == 0:
                check_pending(show)
            bar.advance(task)
            run.stop.check()
        if pending:
            check_pending(show)
    return float(np.average(losses, weights=sizes)), sum(sizes)


def _direction(monitor: str) -> Literal["min", "max"]:
    return "min" if monitor == "val_loss" else "max"


def _improved(history: list[dict], phase: str, monitor: str) -> bool:
    """Whether the last epoch's monitored value beats every earlier one of its phase: early stopping and the
    learning-rate schedule follow the value the best checkpoint is chosen by (a val loss that first rises while the
    AUROC climbs must not stop a run monitored by AUROC at its first epoch)."""
    *earlier, current = [row[monitor] for row in history if row["phase"] == phase]
    if not earlier:
        return True
    return current < min(earlier) if _direction(monitor) == "min" else current > max(earlier)


def _log_epoch(row: dict, is_best: bool) -> None:
    log.info(
        f"{row['phase']:>8} epoch {row['epoch']:>3}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}"
        f"  val_acc {row['val_accuracy']:.3f}  val_auroc {row['val_auroc']:.3f}  lr {row['lr']:.1e}"
        f"  {row['images_per_s']:.0f} img/s{'  ★ best' if is_best else ''}"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
