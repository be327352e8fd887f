"""Run configuration as a dataclass that round-trips to YAML, with field-named validation errors."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from lowmed.errors import LowmedError, quoted
from lowmed.preprocessing import parse_input_norm

MONITORS = ("val_loss", "val_auroc", "val_accuracy")
HEADS = ("mlp", "linear")
DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_EXPECTED = "auto, cpu, cuda, cuda:N (one GPU by its index) or mps"


def is_device_name(name: str) -> bool:
    """A device lowmed can be asked for (whether this machine has it is ``device.resolve_device``'s question)."""
    return name in DEVICES or re.fullmatch(r"cuda:\d+", name) is not None


MAX_SEED = 2**32 - 1  # the widest seed every generator lowmed seeds (numpy's legacy one included) accepts


def first_repeated(values: list) -> Any | None:
    """The first value that a list holds twice (None if each is there once)."""
    seen = []
    for value in values:
        if value in seen:
            return value
        seen.append(value)
    return None


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise LowmedError(f"{flag} {seed}: expected a whole number from 0 to {MAX_SEED}")


class ConfigFile:
    """A run's options as a dataclass that round-trips to YAML: unknown keys and wrongly typed values are refused by
    name."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config"):
        if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
            raise LowmedError(f"{source}: expected a mapping of option names to values")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise LowmedError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: coerce(value, hints[name], f"{source}: {name}") for name, value in values.items()})

    @classmethod
    def from_record(cls, values: dict[str, Any]):
        """Values lowmed itself wrote (a checkpoint's configuration): the fields this version knows, as written."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike):
        from lowmed.contracts import read_yaml  # the file contracts and yaml: not at the CLI's start

        return cls.from_dict(read_yaml(path, f"--config {path}"), source=str(path))


@dataclass
class TrainConfig(ConfigFile):
    """Everything that decides a training run. ``config.yaml`` in a run dir is this, fully resolved."""

    data: str | None = None  # prepared dir, subset manifest, or raw dataset folder
    subset: str | None = None  # subset manifest (overrides data's own train rows)
    per_class: int | None = None  # subsample on the fly when no subset is given
    arm: str | None = None  # the study arm this run belongs to; None = derived from the weights (A scratch, ...)
    model: str = "simplecnn"
    weights: str = "auto"  # none | imagenet | xrv:<name> | PATH | RUN_DIR; auto = imagenet, or none for simplecnn
    weights_dir: str | None = None  # where xrv: weight files are; None = torchxrayvision's cache
    allow_partial_weights: bool = False
    input_channels: int | None = None  # 1 | 3; None = what the weights expect (resolved in config.yaml)
    input_norm: str | None = None  # imagenet | xrv | unit | MEAN,STD; None = what the weights expect
    dataset_name: str | None = None  # the target's public dataset (nih, chexpert...); None = its prepare format
    head: str = "mlp"
    epochs: int = 30
    batch_size: int = 32  # per process; the global batch is batch_size × processes × accumulate
    accumulate: int = 1  # batches whose gradients add up before one optimizer step
    sync_bn: bool = False  # under torchrun on GPUs: batch-norm statistics over all processes
    compile: bool = False  # torch.compile the trained module (no faster on small runs: benchmarks/README.md)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    freeze_base: bool = True
    fine_tune_epochs: int = 10
    fine_tune_layers: int = 50
    fine_tune_lr: float = 1e-5
    # fine-tuning keeps the backbone's batch-norm statistics as pretrained (their scale and shift still train), as is
    # usual for small-data fine-tuning: re-estimated from batches of a few dozen images they jolt the features
    freeze_bn: bool = False
    image_size: int | None = None  # None = the model's default input size
    augment_strength: float = 0.5
    cached_views: int = 3  # augmented views per image whose frozen-layer outputs are cached; 0 = off
    cache_finetune: bool = True  # fine-tuning, too, runs the layers below the unfrozen ones once per cached view
    patience: int = 10
    monitor: str = "val_loss"
    class_weights: str = "auto"
    balanced_sampler: bool = False
    device: str = "auto"
    amp: bool | None = None  # None = on for CUDA, off elsewhere
    workers: int = 0
    seed: int = 0
    out: str | None = None

    def validate(self) -> "TrainConfig":
        checks = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 2, "at least 2"),
            ("accumulate", self.accumulate >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("fine_tune_lr", self.fine_tune_lr > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("fine_tune_epochs", self.fine_tune_epochs >= 0, "0 or more"),
            ("fine_tune_layers", self.fine_tune_layers >= 0, "0 or more"),
            ("patience", self.patience >= 1, "at least 1"),
            ("augment_strength", 0 <= self.augment_strength <= 1, "between 0 and 1"),
            ("image_size", self.image_size is None or self.image_size >= 16, "at least 16 (pixels)"),
            ("per_class", self.per_class is None or self.per_class >= 1, "at least 1"),
            ("workers", self.workers >= 0, "0 or more"),
            ("cached_views", self.cached_views >= 0, "0 or more"),
            ("monitor", self.monitor in MONITORS, f"one of {', '.join(MONITORS)}"),
            ("head", self.head in HEADS, f"one of {', '.join(HEADS)}"),
            ("device", is_device_name(self.device), DEVICE_EXPECTED),
            ("class_weights", self.class_weights in ("auto", "none"), "auto or none"),
            ("arm", self.arm is None or bool(self.arm.strip()), "a non-empty name"),
            ("input_channels", self.input_channels in (None, 1, 3), "1 or 3"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise LowmedError(f"{_flag(name)} {quoted(getattr(self, name))}: expected {expected}")
        check_seed(self.seed)
        if self.input_norm is not None:
            parse_input_norm(self.input_norm, self.input_channels or 3)
        if self.data is None and self.subset is None:
            raise LowmedError("no dataset: give DATA (a prepared dir, subset manifest or raw dataset) or --subset")
        return self


METHODS = ("simclr", "moco")
PRETRAIN_MONITORS = ("knn_auroc", "knn_accuracy")


@dataclass
class PretrainConfig(ConfigFile):
    """Everything that decides a self-supervised pretraining run (``lowmed pretrain``): the unlabelled corpus, the
    labelled target it is for (the leakage guard and the monitor's validation split), the method, the views and the
    optimisation. ``config.yaml`` in its run dir is this, fully resolved."""

    data: str | None = None  # the unlabelled corpus: a prepared dir (--role unlabelled), a folder of images or a CSV
    target: str | None = None  # the labelled dataset (prepared dir) whose val split monitors the pretraining
    method: str = "simclr"  # simclr | moco (MoCo v2: a momentum key encoder and a queue of negatives)
    model: str = "simplecnn"
    init: str = "auto"  # none | imagenet | PATH | RUN_DIR to start from; auto = imagenet (none for simplecnn)
    weights_dir: str | None = None  # where xrv: weight files are
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-4  # AdamW, one epoch of linear warm-up, then cosine decay to 0
    weight_decay: float = 1e-4
    temperature: float = 0.1  # of the InfoNCE (NT-Xent) loss
    projection_dim: int = 128
    hidden_dim: int = 512
    queue: int = 4096  # moco: negatives kept from earlier batches (at most the corpus's size)
    momentum: float = 0.99  # moco: the key encoder's momentum, raised to 1 by a cosine schedule
    image_size: int | None = None  # None = the model's default input size
    crop_min: float = 0.5  # views: the smallest crop, as a share of the image's area
    rotation: float = 10.0  # views: degrees, either way
    intensity: float = 0.2  # views: brightness and contrast, ± this share
    flip: bool = False  # views: horizontal flips (off: a chest X-ray's left and right differ)
    knn_k: int = 10  # the monitor's neighbours (leave-one-out on the target's val split)
    monitor: str = "knn_auroc"
    device: str = "auto"
    amp: bool | None = None  # None = on for CUDA, off elsewhere
    seed: int = 0
    out: str | None = None

    def validate(self) -> "PretrainConfig":
        checks = [
            ("method", self.method in METHODS, f"one of {', '.join(METHODS)}"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 4, "at least 4 (each batch holds the negatives of its images)"),
            ("lr", self.lr > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("temperature", self.temperature > 0, "positive"),
            ("projection_dim", self.projection_dim >= 8, "at least 8"),
            ("hidden_dim", self.hidden_dim >= 8, "at least 8"),
            ("queue", self.queue >= 0, "0 or more"),
            ("momentum", 0 <= self.momentum < 1, "from 0 to below 1"),
            ("image_size", self.image_size is None or self.image_size >= 16, "at least 16 (pixels)"),
            ("crop_min", 0 < self.crop_min <= 1, "a share of the image's area above 0, at most 1"),
            ("rotation", 0 <= self.rotation <= 90, "0 to 90 degrees"),
            ("intensity", 0 <= self.intensity < 1, "0 to below 1"),
            ("knn_k", self.knn_k >= 1, "at least 1"),
            ("monitor", self.monitor in PRETRAIN_MONITORS, f"one of {', '.join(PRETRAIN_MONITORS)}"),
            ("device", is_device_name(self.device), DEVICE_EXPECTED),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise LowmedError(f"{_flag(name)} {quoted(getattr(self, name))}: expected {expected}")
        check_seed(self.seed)
        if self.data is None:
            raise LowmedError("no corpus: give UNLABELLED (a folder of images, a CSV of paths, or a prepared corpus)")
        if self.target is None:
            raise LowmedError(
                "--target: give the labelled dataset the pretraining is for; its val and test images are kept out "
                "of the corpus, and its val split monitors the pretraining"
            )
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Accept a YAML value for a field typed ``hint`` (ints for floats are fine; strings for ints are not)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise LowmedError(f"{where}: must not be empty")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    expected = " or ".join(o.__name__ for o in options if o is not type(None))
    raise LowmedError(f"{where}: {quoted(value)} is not a valid {expected}")
