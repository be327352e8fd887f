"""lowmed train / lowmed finetune: one training run (Model A, B or C) into a run dir."""

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lowmed.cli import _train_options as option
from lowmed.cli._options import Overwrite, Quiet, Strict, Track, TrackExperiment, TrackUri, Verbose
from lowmed.config import TrainConfig

if TYPE_CHECKING:
    from lowmed.contracts import TrainSummary


def train_command(
    ctx: typer.Context,
    data: option.Data = None,
    config: option.ConfigYaml = None,
    subset: option.Subset = None,
    per_class: option.PerClass = None,
    arm: option.Arm = None,
    model: option.Model = None,
    weights: option.Weights = None,
    weights_dir: option.WeightsDir = None,
    input_channels: option.InputChannels = None,
    input_norm: option.InputNorm = None,
    dataset_name: option.DatasetName = None,
    allow_partial_weights: option.AllowPartialWeights = None,
    head: option.Head = None,
    epochs: option.Epochs = None,
    batch_size: option.BatchSize = None,
    accumulate: option.Accumulate = None,
    compile: option.Compile = None,
    sync_bn: option.SyncBn = None,
    lr: option.Lr = None,
    weight_decay: option.WeightDecay = None,
    freeze_base: option.FreezeBase = None,
    fine_tune_epochs: option.FineTuneEpochs = None,
    fine_tune_layers: option.FineTuneLayers = None,
    fine_tune_lr: option.FineTuneLr = None,
    freeze_bn: option.FreezeBn = None,
    image_size: option.ImageSize = None,
    augment_strength: option.AugmentStrength = None,
    cached_views: option.CachedViews = None,
    cache_finetune: option.CacheFinetune = None,
    patience: option.Patience = None,
    monitor: option.Monitor = None,
    class_weights: option.ClassWeights = None,
    balanced_sampler: option.BalancedSampler = None,
    device: option.Device = None,
    amp: option.Amp = None,
    workers: option.Workers = None,
    seed: option.Seed = None,
    out: option.Out = None,
    resume: option.Resume = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    track: Track = None,
    track_uri: TrackUri = None,
    track_experiment: TrackExperiment = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train one model: from scratch (Model A), from ImageNet (Model B) or from a medical run (Model C)."""
    from lowmed.contracts import RunDir
    from lowmed.tracking import TrackSettings
    from lowmed.training.train import resume_run, train

    if resume and RunDir(resume).state() == "completed":
        typer.echo(f"{resume}: already completed; nothing to resume (its files are untouched)")
        return
    if resume:
        summary = resume_run(resume)
    else:
        tracking = TrackSettings.given(track, track_uri, track_experiment)
        summary = train(train_config(ctx.params), overwrite=overwrite, strict=strict, track=tracking)
    render_summary(summary)


def _given_options(arguments: dict) -> dict:
    """The options given on the command line or in --config (command-line flags win)."""
    values = TrainConfig.from_yaml(arguments["config"]).to_dict() if arguments.get("config") else {}
    for name in TrainConfig.__dataclass_fields__:
        if arguments.get(name) is not None:
            value = arguments[name]
            values[name] = str(value) if isinstance(value, Path) else value
    return values


def train_config(arguments: dict) -> TrainConfig:
    """The run config from a command's arguments: ``--config``'s file, then the options given (which win)."""
    return TrainConfig.from_dict(_given_options(arguments), source="options")


def finetune_command(
    ctx: typer.Context,
    source: option.Source,
    data: option.Data = None,
    config: option.ConfigYaml = None,
    subset: option.Subset = None,
    per_class: option.PerClass = None,
    arm: option.Arm = None,
    model: option.Model = None,
    weights: option.Weights = None,
    weights_dir: option.WeightsDir = None,
    input_channels: option.InputChannels = None,
    input_norm: option.InputNorm = None,
    dataset_name: option.DatasetName = None,
    allow_partial_weights: option.AllowPartialWeights = None,
    head: option.Head = None,
    epochs: option.Epochs = None,
    batch_size: option.BatchSize = None,
    accumulate: option.Accumulate = None,
    compile: option.Compile = None,
    sync_bn: option.SyncBn = None,
    lr: option.Lr = None,
    weight_decay: option.WeightDecay = None,
    freeze_base: option.FreezeBase = None,
    fine_tune_epochs: option.FineTuneEpochs = None,
    fine_tune_layers: option.FineTuneLayers = None,
    fine_tune_lr: option.FineTuneLr = None,
    freeze_bn: option.FreezeBn = None,
    image_size: option.ImageSize = None,
    augment_strength: option.AugmentStrength = None,
    cached_views: option.CachedViews = None,
    cache_finetune: option.CacheFinetune = None,
    patience: option.Patience = None,
    monitor: option.Monitor = None,
    class_weights: option.ClassWeights = None,
    balanced_sampler: option.BalancedSampler = None,
    device: option.Device = None,
    amp: option.Amp = None,
    workers: option.Workers = None,
    seed: option.Seed = None,
    out: option.Out = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    track: Track = None,
    track_uri: TrackUri = None,
    track_experiment: TrackExperiment = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Model C: fine-tune from an earlier run's (or a checkpoint's) backbone; the model defaults to the source's."""
    from lowmed.tracking import TrackSettings
    from lowmed.training.train import finetune

    summary = finetune(
        source,
        overwrite=overwrite,
        strict=strict,
        track=TrackSettings.given(track, track_uri, track_experiment),
        **_given_options(ctx.params),
    )
    render_summary(summary)


def render_summary(summary: "TrainSummary") -> None:
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.distributed import is_rank_zero

    if not is_rank_zero():  # under torchrun every process returns the summary; one shows it
        return
    best = summary.best_epoch
    table = Table(title=f"run {summary.run_dir}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    metrics = best.metrics
    rows = [
        ("arm", summary.arm),
        ("model", f"{summary.model} ({summary.parameters / 1e6:.2f} M parameters)"),
        ("weights", summary.weight_source + (f" {summary.weights.path}" if summary.weights.path else "")),
        ("train images", str(sum((summary.dataset.train_counts or {}).values()))),
        ("epochs", f"{summary.epochs_run} ({' → '.join(summary.phases)})"),
        ("best epoch", f"{best.epoch} ({best.phase}, by {best.monitor})"),
        (
            "val loss / acc / AUROC",
            f"{metrics['val_loss']:.4f} / {metrics['val_accuracy']:.3f} / {metrics['val_auroc']:.3f}",
        ),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
        (
            "throughput",
            ", ".join(f"{phase} {speed:.0f}" for phase, speed in summary.train_images_per_s.items())
            + " train images/s (median per epoch)",
        ),
        ("device", f"{summary.device} ({summary.device_name}), AMP {summary.precision}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    stdout.print(table)
