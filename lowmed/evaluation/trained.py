"""A run's checkpoint loaded to predict with: the network on a device, in the precision it was trained in where the
device has it, and the preprocessing that travels with the weights (``lowmed evaluate`` and ``lowmed predict``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowmed.contracts import EvalReport, RunDir
from lowmed.device import Precision, channels_last, native_amp, resolve_device
from lowmed.errors import LowmedError
from lowmed.evaluation.predict import Normalizer
from lowmed.models.preprocessing import Preprocessing
from lowmed.models.registry import build_model, get_model_spec
from lowmed.models.weights import load_checkpoint


@dataclass
class TrainedModel:
    path: Path  # the checkpoint file
    model: nn.Module  # on ``device``, eval mode
    task: str
    classes: list[str]
    config: dict  # the run's TrainConfig values
    epoch: int | None
    preprocessing: Preprocessing
    normalize: Normalizer
    device: torch.device
    precision: Precision

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike | None,
        checkpoint: str = "best",
        device: str = "auto",
        amp: bool | None = None,
    ) -> "TrainedModel":
        """``checkpoint``: best | last of ``run_dir``, or a checkpoint file. ``amp``: by default as the run was
        trained, where this device has it."""
        path = checkpoint_path(run_dir, checkpoint)
        trained = load_checkpoint(path)
        if not (isinstance(trained, dict) and {"model", "config", "classes", "task", "preprocessing"} <= set(trained)):
            raise LowmedError(f"{path}: not a checkpoint written by 'lowmed train'")
        config, classes = trained["config"], list(trained["classes"])
        torch_device = resolve_device(device)
        amp = amp if amp is not None else bool(config.get("amp")) and native_amp(torch_device)
        model = build_model(get_model_spec(config["model"]), len(classes), config["head"])
        try:
            model.load_state_dict(trained["model"])
        except RuntimeError as exc:
            raise LowmedError(f"{path}: weights do not fit {config['model']} ({str(exc).splitlines()[0]})") from None
        model.to(torch_device).eval()
        if channels_last(torch_device):
            model.to(memory_format=torch.channels_last)
        preprocessing = Preprocessing.from_dict(trained["preprocessing"])
        return cls(
            path=path,
            model=model,
            task=trained["task"],
            classes=classes,
            config=config,
            epoch=trained.get("epoch"),
            preprocessing=preprocessing,
            normalize=Normalizer(preprocessing, torch_device),
            device=torch_device,
            precision=Precision.choose(torch_device, amp),
        )


def evaluated_with(report: EvalReport, trained: TrainedModel) -> bool:
    """Whether ``report`` (a metrics.json of the checkpoint's run dir) evaluated this checkpoint: the same file name
    and epoch, so that a run dir that was copied or moved still finds its evaluations."""
    recorded = report.checkpoint
    return Path(recorded.get("path", "")).name == trained.path.name and recorded.get("epoch") == trained.epoch


def checkpoint_path(run_dir: str | os.PathLike | None, checkpoint: str) -> Path:
    """The file ``--checkpoint best|last|PATH`` names."""
    if checkpoint in ("best", "last"):
        if run_dir is None:
            raise LowmedError("give RUN_DIR, or --checkpoint PATH with --data")
        path = RunDir(run_dir).checkpoint(checkpoint)
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise LowmedError(
            f"{path}: no such checkpoint; expected a lowmed run dir with {RunDir(path.parent).best.name} or a .pt file"
        )
    return path


def run_status(checkpoint: Path, doing: str, strict: bool = False) -> str | None:
    """The status of the run a checkpoint belongs to (None outside a run dir). A run that did not finish is said —
    the same for ``evaluate``, ``predict`` and ``export`` — and refused with ``strict``."""
    import pandas as pd

    from lowmed.console import warn_or_refuse

    run = RunDir(checkpoint.parent)
    if not run.summary.is_file():
        return None
    summary = run.read_summary()
    if not summary.completed:
        epochs = len(pd.read_csv(run.history)) if run.history.is_file() else 0
        warn_or_refuse(
            f"run {run.path} did not finish ({summary.status_label}, {epochs} epoch(s) in {run.history.name}): its "
            f"{checkpoint.name} checkpoint is {doing} as it stands; finish it with: lowmed train --resume {run.path}",
            strict,
        )
    return summary.status_label
