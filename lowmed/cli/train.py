"""lowmed train / lowmed finetune: one training run (Model A, B or C) into a run dir."""

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lowmed.cli._options import Overwrite, Quiet, Strict, Track, TrackExperiment, TrackUri
from lowmed.config import TrainConfig

if TYPE_CHECKING:
    from lowmed.contracts import TrainSummary

_D = TrainConfig()  # defaults, shown in --help


def train_command(
    data: Annotated[
        Optional[Path],
        typer.Argument(help="Prepared dir, subset manifest (.csv) or raw dataset folder.", show_default=False),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", help="YAML of these options (a run's config.yaml repeats it); flags given here win."),
    ] = None,
    subset: Annotated[Optional[Path], typer.Option(help="Subset manifest from 'lowmed subsample'.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Subsample N train images per class on the fly.")] = None,
    arm: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "The study arm this run belongs to, as compare groups runs (e.g. A, B-imagenet, C-nih). \\[default: "
                "A scratch, B ImageNet or C medical, from --weights]"
            )
        ),
    ] = None,
    model: Annotated[
        Optional[str], typer.Option(help=f"Registry name or timm:<name> (see 'lowmed models'). \\[default: {_D.model}]")
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "none | imagenet | xrv:<name> (torchxrayvision, see 'lowmed models --weights') | PATH (weights file) | "
                "RUN_DIR (Model C); auto = imagenet, none for simplecnn. "
                "\\[default: auto]"
            )
        ),
    ] = None,
    weights_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Where xrv:<name> weight files are (and are downloaded to). \\[default: torchxrayvision's cache]"
        ),
    ] = None,
    input_channels: Annotated[
        Optional[int],
        typer.Option(help="1 (grey) or 3: what the weights expect. \\[default: the weights' (1 for xrv:, else 3)]"),
    ] = None,
    input_norm: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "imagenet | xrv ([-1024, 1024]) | unit ([0, 1]) | MEAN,STD | a mean and a std per channel. "
                "\\[default: the weights']"
            )
        ),
    ] = None,
    dataset_name: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "The target's public dataset (nih, chexpert, padchest, mimic-cxr, rsna...), checked against what "
                "xrv: weights were trained on. \\[default: from its prepare format]"
            )
        ),
    ] = None,
    allow_partial_weights: Annotated[
        Optional[bool],
        typer.Option("--allow-partial-weights", help="Train even when the weights cover only part of the backbone."),
    ] = None,
    head: Annotated[
        Optional[str], typer.Option(help=f"mlp (512→256, the seed study's) | linear. \\[default: {_D.head}]")
    ] = None,
    epochs: Annotated[
        Optional[int], typer.Option(help=f"Epochs (the frozen phase, for pretrained weights). \\[default: {_D.epochs}]")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            help=(
                f"Images per step and per process (under torchrun the global batch is this × processes × "
                f"--accumulate). \\[default: {_D.batch_size}]"
            )
        ),
    ] = None,
    accumulate: Annotated[
        Optional[int],
        typer.Option(
            help=(
                f"Add up the gradients of N batches before each optimizer step (for small GPUs). \\[default: "
                f"{_D.accumulate}]"
            )
        ),
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option(
            "--compile",
            help=(
                "torch.compile the network (compiling takes about half a minute or more; no faster on small runs, "
                "see benchmarks/README.md)."
            ),
        ),
    ] = None,
    sync_bn: Annotated[
        Optional[bool],
        typer.Option("--sync-bn", help="Under torchrun on GPUs: batch-norm statistics over all processes."),
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Learning rate (AdamW). \\[default: {_D.lr:g}]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=f"\\[default: {_D.weight_decay:g}]")] = None,
    freeze_base: Annotated[
        Optional[bool],
        typer.Option(
            "--freeze-base/--no-freeze-base",
            help="Pretrained: train the head on a frozen backbone first. \\[default: freeze]",
        ),
    ] = None,
    fine_tune_epochs: Annotated[
        Optional[int],
        typer.Option(help=f"Epochs of phase 2 (last layers unfrozen). \\[default: {_D.fine_tune_epochs}]"),
    ] = None,
    fine_tune_layers: Annotated[
        Optional[int],
        typer.Option(
            help=(
                f"Backbone layers (modules with weights) unfrozen in phase 2, counted from the top. \\[default: "
                f"{_D.fine_tune_layers}]"
            )
        ),
    ] = None,
    fine_tune_lr: Annotated[Optional[float], typer.Option(help=f"\\[default: {_D.fine_tune_lr:g}]")] = None,
    freeze_bn: Annotated[
        Optional[bool],
        typer.Option(
            "--freeze-bn/--no-freeze-bn",
            help="Fine-tuning a pretrained backbone: keep its batch-norm statistics as pretrained (scale and shift "
            "still train). \\[default: no-freeze-bn]",
            show_default=False,
        ),
    ] = None,
    image_size: Annotated[
        Optional[int], typer.Option(help="Input size in px. \\[default: the model's, e.g. 224; 299 for inception_v3]")
    ] = None,
    augment_strength: Annotated[
        Optional[float],
        typer.Option(
            help=f"0..1: rotation, shift, scale, flip, brightness/contrast. \\[default: {_D.augment_strength}]"
        ),
    ] = None,
    cached_views: Annotated[
        Optional[int],
        typer.Option(
            help=(
                f"Train on the frozen layers' outputs cached for this many augmented views per image (0 = run "
                f"the whole network every epoch). \\[default: {_D.cached_views}]"
            )
        ),
    ] = None,
    cache_finetune: Annotated[
        Optional[bool],
        typer.Option(
            "--cache-finetune/--no-cache-finetune",
            help=(
                "Fine-tuning: run the layers below the unfrozen ones once per cached view, not every epoch. "
                "\\[default: cache-finetune]"
            ),
            show_default=False,
        ),
    ] = None,
    patience: Annotated[
        Optional[int],
        typer.Option(
            help=f"Early stop after this many epochs without a better --monitor value. \\[default: {_D.patience}]"
        ),
    ] = None,
    monitor: Annotated[
        Optional[str],
        typer.Option(help=f"Metric that picks best.pt: val_loss | val_auroc | val_accuracy. \\[default: {_D.monitor}]"),
    ] = None,
    class_weights: Annotated[
        Optional[str], typer.Option(help=f"auto (inverse train frequency) | none. \\[default: {_D.class_weights}]")
    ] = None,
    balanced_sampler: Annotated[
        Optional[bool], typer.Option("--balanced-sampler", help="Sample classes equally instead of weighting the loss.")
    ] = None,
    device: Annotated[
        Optional[str], typer.Option(help=f"auto | cpu | cuda | cuda:N | mps. \\[default: {_D.device}]")
    ] = None,
    amp: Annotated[
        Optional[bool],
        typer.Option(
            "--amp/--no-amp",
            help=(
                "Mixed precision: bf16 (fp16 with a gradient scaler on GPUs without bf16); on CPUs with native "
                "bf16 also channels-last, 2–3× faster. \\[default: on for CUDA, off on CPUs]"
            ),
        ),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="DataLoader workers when images do not fit in memory. \\[default: 0]")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"\\[default: {_D.seed}]")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Run dir. \\[default: runs/<dataset>-<model>-<weights>-n<N>-seed<K>]"),
    ] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run dir from its last.pt.")] = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    track: Track = None,
    track_uri: TrackUri = None,
    track_experiment: TrackExperiment = None,
    quiet: Quiet = False,
) -> None:
    """Train one model: from scratch (Model A), from ImageNet (Model B) or from a medical run (Model C)."""
    from lowmed.contracts import RunDir
    from lowmed.tracking import TrackSettings
    from lowmed.training.train import resume_run, train

    if resume and RunDir(resume).state() == "completed":
        typer.echo(f"{resume}: already completed; nothing to resume (its files are untouched)")
        return
    if resume:
        summary = resume_run(resume, quiet=quiet)
    else:
        tracking = TrackSettings.given(track, track_uri, track_experiment)
        summary = train(train_config(locals()), overwrite=overwrite, quiet=quiet, strict=strict, track=tracking)
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


def finetune_command(source: Path, **arguments) -> None:
    """Model C: fine-tune from an earlier run's (or a checkpoint's) backbone; the model defaults to the source's."""
    from lowmed.tracking import TrackSettings
    from lowmed.training.train import finetune

    summary = finetune(
        source,
        overwrite=arguments["overwrite"],
        quiet=arguments["quiet"],
        strict=arguments["strict"],
        track=TrackSettings.given(arguments["track"], arguments["track_uri"], arguments["track_experiment"]),
        **_given_options(arguments),
    )
    render_summary(summary)


# finetune takes SOURCE and then exactly train's options: build its signature from train's so the two never drift.
_source = inspect.Parameter(
    "source",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[
        Path, typer.Argument(help="Run dir or checkpoint whose backbone to start from.", show_default=False)
    ],
)
finetune_command.__signature__ = inspect.signature(train_command).replace(
    parameters=[_source, *(p for name, p in inspect.signature(train_command).parameters.items() if name != "resume")]
)
finetune_command.__annotations__ = {
    "source": _source.annotation,
    **{k: v for k, v in train_command.__annotations__.items() if k != "resume"},
}


def render_summary(summary: "TrainSummary") -> None:
    from rich.table import Table

    from lowmed.cli._render import stdout
    from lowmed.distributed import is_rank_zero

    if not is_rank_zero():  # under torchrun every process returns the summary; one shows it
        return
    best = summary.best
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
