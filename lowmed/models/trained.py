"""A run's checkpoint loaded to predict with: the network on a device, in the precision it was trained in where the
device has it, and the preprocessing that travels with the weights (``lowmed evaluate`` and ``lowmed predict``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lowmed.config import TrainConfig
from lowmed.contracts import EvalReport, RunDir
from lowmed.device import Precision, channels_last, native_amp, resolve_device
from lowmed.errors import LowmedError
from lowmed.models.checkpoint import Checkpoint
from lowmed.models.forward import Normalizer
from lowmed.models.registry import Classifier, build_model, get_model_spec
from lowmed.preprocessing import Preprocessing


@dataclass
class TrainedModel:
    path: Path  # the checkpoint file
    model: Classifier  # on ``device``, eval mode
    task: str
    classes: list[str]
    config: TrainConfig  # the run's
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
        trained = Checkpoint.read(path)
        config, classes = TrainConfig.from_record(trained.header.config), list(trained.header.classes)
        torch_device = resolve_device(device)
        amp = amp if amp is not None else bool(config.amp) and native_amp(torch_device)
        model = build_model(get_model_spec(config.model), len(classes), config.head)
        try:
            model.load_state_dict(trained.model)
        except RuntimeError as exc:
            raise LowmedError(f"{path}: weights do not fit {config.model} ({str(exc).splitlines()[0]})") from None
        model.to(torch_device).eval()
        if channels_last(torch_device):
            model.to(memory_format=torch.channels_last)
        preprocessing = Preprocessing.from_dict(trained.header.preprocessing)
        return cls(
            path=path,
            model=model,
            task=trained.header.task,
            classes=classes,
            config=config,
            epoch=trained.epoch,
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


def saved_threshold(trained: TrainedModel) -> tuple[float | list[float] | None, str]:
    """The threshold saved with the run's evaluations of this very checkpoint: a Youden one first (chosen on the
    validation split), else the one evaluated with; 0.5 when the run has none. None for multi-class tasks."""
    if trained.task == "multiclass":
        return None, "multi-class: the most probable class"
    evaluated = (evaluation.read_report() for evaluation in RunDir(trained.path.parent).evaluations())
    reports = [report for report in evaluated if evaluated_with(report, trained)]
    chosen = [r for r in reports if r.threshold_source.startswith("youden")] or reports
    if not chosen:
        return 0.5, f"default 0.5: no saved evaluation of {trained.path.name} (run lowmed evaluate --threshold youden)"
    report = chosen[0]
    return (
        report.threshold,
        f"{report.threshold_source}; saved with {trained.path.parent.name}/eval/{report.folder.path.name}",
    )
