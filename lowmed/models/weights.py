"""Weight sources: none, ImageNet (torchvision's weights API), torchxrayvision's chest X-ray weights, a weights file,
or an earlier lowmed run.

Weights are matched to the backbone by name and shape; the source's classifier is dropped; a report of
matched, missing and unexpected keys is returned. A partial match is refused unless allowed, so no part
of a "pretrained" backbone is ever silently left random.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from lowmed.contracts import RunDir, WeightsReport
from lowmed.errors import LowmedError
from lowmed.io import sha256_file
from lowmed.models import xrv
from lowmed.models.checkpoint import Checkpoint, load_weights_file
from lowmed.models.registry import MODELS, ModelSpec
from lowmed.preprocessing import Preprocessing

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile


def resolve_weights(weights: str, model: str) -> str:
    """``auto`` means ImageNet for a pretrainable backbone and random init for the scratch CNN."""
    if weights == "auto":
        return "none" if model == "simplecnn" else "imagenet"
    return weights


def weights_kind(weights: str, spec: ModelSpec | None = None) -> str:
    """none | imagenet | xrv | file | run for a resolved ``--weights`` value; an unusable one is refused by name
    (with ``spec``, also ImageNet or torchxrayvision weights the model does not have)."""
    if xrv.is_xrv(weights):
        if spec is not None:
            xrv.check_name(weights, spec.name)
        return "xrv"
    if weights in ("none", "imagenet"):
        if weights == "imagenet" and spec is not None and spec.imagenet_weights is None and not spec.timm_name:
            raise LowmedError(f"--weights imagenet: {spec.name} has no ImageNet weights; use --weights none or a file")
        return weights
    path = Path(weights).expanduser()
    if path.is_dir():
        return "run"
    if path.is_file():
        return "file"
    raise LowmedError(
        f"--weights {weights}: no such file or folder; expected none, imagenet, a weights file or a lowmed run dir"
    )


def weight_sources(weights_dir: str | None = None) -> list[dict]:
    """Every named weight source lowmed knows — torchvision's ImageNet weights per model, timm's, torchxrayvision's —
    with its input contract, what it was trained on, and whether its file is here (``lowmed models --weights``)."""
    rows = []
    for spec in MODELS.values():
        if spec.imagenet_weights:
            path = _imagenet_file(spec)[0]
            rows.append(_source_row(spec.name, "imagenet", spec.preprocessing, "ImageNet-1k", path))
    rows.append(
        {
            "weights": "imagenet",
            "model": "timm:<name>",
            "input": "the model's (timm pretrained_cfg)",
            "trained_on": "ImageNet (per model)",
            "file": "timm's Hugging Face cache",
        }
    )
    for name, datasets in xrv.TRAINED_ON.items():
        xrv_file: Path | None
        try:
            xrv_file = xrv.expected_file(name, weights_dir)[0]
        except LowmedError:  # torchxrayvision not installed: the names are known, the files are not
            xrv_file = None
        rows.append(
            _source_row(xrv.model_for(name), f"xrv:{name}", xrv.preprocessing(name), ", ".join(datasets), xrv_file)
        )
    return rows


def _source_row(model: str, weights: str, contract: Preprocessing, trained_on: str, path: Path | None) -> dict:
    channels = "1 channel (grey)" if contract.channels == 1 else "3 channels"
    return {
        "weights": weights,
        "model": model,
        "input": f"{contract.input_size} px, {channels}, {contract.norm}",
        "trained_on": trained_on,
        "file": "install lowmed[xrv]" if path is None else f"{path} ({'present' if path.is_file() else 'missing'})",
    }


def weights_preprocessing(weights: str, spec: ModelSpec) -> Preprocessing:
    """What the weights declare they expect, without reading them: torchxrayvision's contract, else the model's
    (a lowmed run's own contract is read from its checkpoint when it is loaded)."""
    return xrv.preprocessing(xrv.check_name(weights, spec.name)) if xrv.is_xrv(weights) else spec.preprocessing


def load_weights(
    backbone: nn.Module, spec: ModelSpec, weights: str, allow_partial: bool = False, weights_dir: str | None = None
) -> WeightsReport:
    """``weights_dir``: where ``xrv:`` weight files are (default: torchxrayvision's cache)."""
    kind = weights_kind(weights, spec)
    if kind == "none":
        return WeightsReport("none")
    if kind == "imagenet":
        state, report = _imagenet_state(spec)
    elif kind == "xrv":
        name = xrv.check_name(weights, spec.name)
        path, url = xrv.expected_file(name, weights_dir)
        fetched(path, url, weights, "; or give its folder with --weights-dir")
        report = WeightsReport(
            "xrv",
            str(path),
            sha256_file(path),
            source_model=spec.name,
            source_preprocessing=xrv.preprocessing(name).to_dict(),
            trained_on=list(xrv.TRAINED_ON[name]),
            name=weights,
        )
        state = xrv.read_state(path)
    else:
        path = Path(weights).expanduser()
        if kind == "run":
            path = _run_checkpoint(path)
            report = WeightsReport("run", str(path.parent))
        else:
            report = WeightsReport("file", str(path))
        state = read_state_dict(path, report)
        report.sha256 = sha256_file(path)
    _match_into(backbone, state, report)
    if report.missing and not allow_partial:
        raise LowmedError(
            f"--weights {report.path or weights}: matched only {report.matched} of {report.backbone_tensors} "
            f"backbone tensors of {spec.name} (missing e.g. {', '.join(report.missing[:3])}); is it another "
            "architecture? Pass --allow-partial-weights to train with the rest left random"
        )
    return report


def _run_checkpoint(run_dir: Path) -> Path:
    """A run dir's best checkpoint, else its last."""
    run = RunDir(run_dir)
    for path in (run.best, run.last):
        if path.is_file():
            return path
    raise LowmedError(f"{run_dir}: no {run.best.name} or {run.last.name}; expected a lowmed run dir")


def read_state_dict(path: Path, report: WeightsReport) -> dict[str, torch.Tensor]:
    """A backbone state dict from a plain state dict, a lowmed checkpoint or a {"state_dict": ...} file."""
    loaded = load_weights_file(path)
    if not isinstance(loaded, dict):
        raise LowmedError(f"{path}: expected a state dict (a mapping of names to tensors)")
    if Checkpoint.is_lowmed(loaded):
        checkpoint = Checkpoint.from_file(loaded, path)
        report.source_model = checkpoint.header.model_name
        report.source_preprocessing = checkpoint.header.preprocessing
        return {k.removeprefix("backbone."): v for k, v in checkpoint.model.items() if k.startswith("backbone.")}
    state = loaded.get("state_dict", loaded)
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise LowmedError(f"{path}: entry {key!r} is not a tensor; expected a state dict")
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def _imagenet_state(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], WeightsReport]:
    if spec.timm_name:
        import timm

        try:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0)
        except Exception as exc:  # timm fetches from the Hugging Face hub; any failure there means no weights
            raise LowmedError(
                f"--weights imagenet: timm could not load pretrained {spec.timm_name} ({exc}); "
                "offline, download them elsewhere and pass the file with --weights PATH"
            ) from None
        return model.state_dict(), WeightsReport("imagenet", f"timm:{spec.timm_name}")
    path, url = _imagenet_file(spec)
    fetched(path, url, "imagenet")
    report = WeightsReport("imagenet", str(path), sha256_file(path))
    return read_state_dict(path, report), report


def fetched(path: Path, url: str, weights: str, hint: str = "") -> Path:
    """``path``, downloaded from ``url`` first if it is not there (whole or not at all); offline, an error naming
    the file, the URL and the folder to put it in."""
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(partial), progress=True)
        except (URLError, OSError, ConnectionError) as exc:
            partial.unlink(missing_ok=True)
            raise LowmedError(
                f"--weights {weights}: {path.name} is not cached and cannot be downloaded ({exc}); "
                f"fetch {url} and put it in {path.parent}{hint}"
            ) from None
        os.replace(partial, path)
    return path


def _imagenet_file(spec: ModelSpec) -> tuple[Path, str]:
    """Where torchvision's ImageNet weights of ``spec`` belong (the torch hub cache), and their URL."""
    url = torchvision.models.get_weight(spec.imagenet_weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _match_into(backbone: nn.Module, state: dict[str, torch.Tensor], report: WeightsReport) -> None:
    """Copy tensors whose name and shape match; adapt 1↔3-channel stems explicitly."""
    target = backbone.state_dict()
    matched = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            matched[key] = value
        elif _channel_adaptable(value, target[key]):
            # 1 → 3: a grey image copied into three channels gives the same response; 3 → 1: the sum.
            matched[key] = value.repeat(1, 3, 1, 1) / 3 if value.shape[1] == 1 else value.sum(1, keepdim=True)
            report.adapted.append(key)
        else:
            report.shape_mismatch.append(f"{key} {tuple(value.shape)} → {tuple(target[key].shape)}")
    backbone.load_state_dict(matched, strict=False)
    counted = [k for k in target if not k.endswith("num_batches_tracked")]  # a counter, not a weight
    report.matched = sum(k in matched for k in counted)
    report.backbone_tensors = len(counted)
    report.missing = [k for k in counted if k not in matched]
    report.unexpected = [k for k in report.unexpected if not k.endswith("num_batches_tracked")]


def _channel_adaptable(source: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        source.ndim == 4
        and target.ndim == 4
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
        and {source.shape[1], target.shape[1]} == {1, 3}
    )
