"""The options of ``lowmed train`` and ``lowmed finetune``, one alias per ``TrainConfig`` field, spelt and documented
once: both commands list them, and a test checks that every field is one option and every option a field."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from lowmed.config import TrainConfig

_D = TrainConfig()  # defaults, shown in --help

Data = Annotated[
    Optional[Path],
    typer.Argument(help="Prepared dir, subset manifest (.csv) or raw dataset folder.", show_default=False),
]
ConfigYaml = Annotated[
    Optional[Path],
    typer.Option("--config", help="YAML of these options (a run's config.yaml repeats it); flags given here win."),
]
Subset = Annotated[Optional[Path], typer.Option(help="Subset manifest from 'lowmed subsample'.")]
PerClass = Annotated[Optional[int], typer.Option(help="Subsample N train images per class on the fly.")]
Arm = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "The study arm this run belongs to, as compare groups runs (e.g. A, B-imagenet, C-nih). \\[default: "
            "A scratch, B ImageNet or C medical, from --weights]"
        )
    ),
]
Model = Annotated[
    Optional[str], typer.Option(help=f"Registry name or timm:<name> (see 'lowmed models'). \\[default: {_D.model}]")
]
Weights = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "none | imagenet | xrv:<name> (torchxrayvision, see 'lowmed models --weights') | PATH (weights file) | "
            "RUN_DIR (Model C); auto = imagenet, none for simplecnn. "
            "\\[default: auto]"
        )
    ),
]
WeightsDir = Annotated[
    Optional[Path],
    typer.Option(
        help="Where xrv:<name> weight files are (and are downloaded to). \\[default: torchxrayvision's cache]"
    ),
]
InputChannels = Annotated[
    Optional[int],
    typer.Option(help="1 (grey) or 3: what the weights expect. \\[default: the weights' (1 for xrv:, else 3)]"),
]
InputNorm = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "imagenet | xrv ([-1024, 1024]) | unit ([0, 1]) | MEAN,STD | a mean and a std per channel. "
            "\\[default: the weights']"
        )
    ),
]
DatasetName = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "The target's public dataset (nih, chexpert, padchest, mimic-cxr, rsna...), checked against what "
            "xrv: weights were trained on. \\[default: from its prepare format]"
        )
    ),
]
AllowPartialWeights = Annotated[
    Optional[bool],
    typer.Option("--allow-partial-weights", help="Train even when the weights cover only part of the backbone."),
]
Head = Annotated[Optional[str], typer.Option(help=f"mlp (512→256, the seed study's) | linear. \\[default: {_D.head}]")]
Epochs = Annotated[
    Optional[int], typer.Option(help=f"Epochs (the frozen phase, for pretrained weights). \\[default: {_D.epochs}]")
]
BatchSize = Annotated[
    Optional[int],
    typer.Option(
        help=(
            f"Images per step and per process (under torchrun the global batch is this × processes × "
            f"--accumulate). \\[default: {_D.batch_size}]"
        )
    ),
]
Accumulate = Annotated[
    Optional[int],
    typer.Option(
        help=(
            f"Add up the gradients of N batches before each optimizer step (for small GPUs). \\[default: "
            f"{_D.accumulate}]"
        )
    ),
]
Compile = Annotated[
    Optional[bool],
    typer.Option(
        "--compile",
        help=(
            "torch.compile the network (compiling takes about half a minute or more; no faster on small runs, "
            "see benchmarks/README.md)."
        ),
    ),
]
SyncBn = Annotated[
    Optional[bool],
    typer.Option("--sync-bn", help="Under torchrun on GPUs: batch-norm statistics over all processes."),
]
Lr = Annotated[Optional[float], typer.Option(help=f"Learning rate (AdamW). \\[default: {_D.lr:g}]")]
WeightDecay = Annotated[Optional[float], typer.Option(help=f"\\[default: {_D.weight_decay:g}]")]
FreezeBase = Annotated[
    Optional[bool],
    typer.Option(
        "--freeze-base/--no-freeze-base",
        help="Pretrained: train the head on a frozen backbone first. \\[default: freeze]",
    ),
]
FineTuneEpochs = Annotated[
    Optional[int],
    typer.Option(help=f"Epochs of phase 2 (last layers unfrozen). \\[default: {_D.fine_tune_epochs}]"),
]
FineTuneLayers = Annotated[
    Optional[int],
    typer.Option(
        help=(
            f"Backbone layers (modules with weights) unfrozen in phase 2, counted from the top. \\[default: "
            f"{_D.fine_tune_layers}]"
        )
    ),
]
FineTuneLr = Annotated[Optional[float], typer.Option(help=f"\\[default: {_D.fine_tune_lr:g}]")]
FreezeBn = Annotated[
    Optional[bool],
    typer.Option(
        "--freeze-bn/--no-freeze-bn",
        help="Fine-tuning a pretrained backbone: keep its batch-norm statistics as pretrained (scale and shift "
        "still train). \\[default: no-freeze-bn]",
        show_default=False,
    ),
]
ImageSize = Annotated[
    Optional[int], typer.Option(help="Input size in px. \\[default: the model's, e.g. 224; 299 for inception_v3]")
]
AugmentStrength = Annotated[
    Optional[float],
    typer.Option(help=f"0..1: rotation, shift, scale, flip, brightness/contrast. \\[default: {_D.augment_strength}]"),
]
CachedViews = Annotated[
    Optional[int],
    typer.Option(
        help=(
            f"Train on the frozen layers' outputs cached for this many augmented views per image (0 = run "
            f"the whole network every epoch). \\[default: {_D.cached_views}]"
        )
    ),
]
CacheFinetune = Annotated[
    Optional[bool],
    typer.Option(
        "--cache-finetune/--no-cache-finetune",
        help=(
            "Fine-tuning: run the layers below the unfrozen ones once per cached view, not every epoch. "
            "\\[default: cache-finetune]"
        ),
        show_default=False,
    ),
]
Patience = Annotated[
    Optional[int],
    typer.Option(
        help=f"Early stop after this many epochs without a better --monitor value. \\[default: {_D.patience}]"
    ),
]
Monitor = Annotated[
    Optional[str],
    typer.Option(help=f"Metric that picks best.pt: val_loss | val_auroc | val_accuracy. \\[default: {_D.monitor}]"),
]
ClassWeights = Annotated[
    Optional[str], typer.Option(help=f"auto (inverse train frequency) | none. \\[default: {_D.class_weights}]")
]
BalancedSampler = Annotated[
    Optional[bool], typer.Option("--balanced-sampler", help="Sample classes equally instead of weighting the loss.")
]
Device = Annotated[Optional[str], typer.Option(help=f"auto | cpu | cuda | cuda:N | mps. \\[default: {_D.device}]")]
Amp = Annotated[
    Optional[bool],
    typer.Option(
        "--amp/--no-amp",
        help=(
            "Mixed precision: bf16 (fp16 with a gradient scaler on GPUs without bf16); on CPUs with native "
            "bf16 also channels-last, 2–3× faster. \\[default: on for CUDA, off on CPUs]"
        ),
    ),
]
Workers = Annotated[
    Optional[int], typer.Option(help="DataLoader workers when images do not fit in memory. \\[default: 0]")
]
Seed = Annotated[Optional[int], typer.Option(help=f"\\[default: {_D.seed}]")]
Out = Annotated[
    Optional[Path],
    typer.Option("--out", "-o", help="Run dir. \\[default: runs/<dataset>-<model>-<weights>-n<N>-seed<K>]"),
]
Resume = Annotated[Optional[Path], typer.Option(help="Continue an interrupted run dir from its last.pt.")]
Source = Annotated[Path, typer.Argument(help="Run dir or checkpoint whose backbone to start from.", show_default=False)]
