"""torchxrayvision's chest X-ray weights as a weight source (``--weights xrv:<name>``): Model C with the medical
weights researchers use.

torchxrayvision (``pip install 'lowmed[xrv]'``) names the weights and their files; lowmed finds a file where
torchxrayvision keeps it (or in ``--weights-dir``), downloads it where there is a network, and reads it with torch's
weights-only unpickler. The files are whole pickled model objects, which torchxrayvision itself loads with
``weights_only=False``; lowmed allows exactly the classes such a file holds, so a tampered file is refused without
running any of it. The weights expect one channel scaled to [-1024, 1024]; that contract travels with them
(``PREPROCESSING``), and each weight lists the public datasets it was trained on, for the overlap check.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from lowmed.errors import LowmedError
from lowmed.preprocessing import INPUT_NORMS, Preprocessing

PREFIX = "xrv:"
# The public datasets behind each weight, from torchxrayvision's model descriptions. RSNA's pneumonia challenge and
# SIIM's pneumothorax challenge relabelled NIH ChestX-ray14 images, so weights trained on them have seen NIH images.
TRAINED_ON = {
    "densenet121-res224-all": ("nih", "padchest", "chexpert", "mimic-cxr", "google", "openi", "rsna"),
    "densenet121-res224-nih": ("nih",),
    "densenet121-res224-pc": ("padchest",),
    "densenet121-res224-chex": ("chexpert",),
    "densenet121-res224-rsna": ("rsna", "nih"),
    "densenet121-res224-mimic_nb": ("mimic-cxr",),
    "densenet121-res224-mimic_ch": ("mimic-cxr",),
    "resnet50-res512-all": ("padchest", "nih", "rsna", "siim", "vindr-cxr"),
}
# the target dataset's name for the overlap check, from the layout 'lowmed prepare' read it in
FORMAT_DATASETS: dict[str | None, str] = {"nih": "nih", "chexpert": "chexpert"}


def is_xrv(weights: str) -> bool:
    return weights.startswith(PREFIX)


def model_for(name: str) -> str:
    """The lowmed model a weight name belongs to."""
    return name.split("-", 1)[0]


def check_name(weights: str, model: str) -> str:
    """The weight name of ``xrv:<name>``, checked to exist and to fit ``model``."""
    name = weights.removeprefix(PREFIX)
    if name not in TRAINED_ON:
        raise LowmedError(
            f"--weights {weights}: not a torchxrayvision weight; expected xrv: and one of {', '.join(TRAINED_ON)}"
        )
    if model != model_for(name):
        raise LowmedError(f"--weights {weights}: these are {model_for(name)} weights; use --model {model_for(name)}")
    return name


def preprocessing(name: str) -> Preprocessing:
    """One channel, [-1024, 1024], at the weights' own resolution."""
    mean, std = INPUT_NORMS["xrv"]
    return Preprocessing(int(name.split("-res", 1)[1].split("-", 1)[0]), mean, std, channels=1)


def _xrv():
    try:
        import torchxrayvision
    except ImportError:
        raise LowmedError("--weights xrv:...: torchxrayvision is not installed; pip install 'lowmed[xrv]'") from None
    return torchxrayvision


def expected_file(name: str, weights_dir: str | None) -> tuple[Path, str]:
    """Where weight ``name``'s file belongs (``weights_dir`` or torchxrayvision's cache), and its URL."""
    xrv = _xrv()
    url = xrv.models.model_urls[name]["weights_url"]
    return Path(weights_dir or xrv.utils.get_cache_dir()).expanduser() / os.path.basename(url), url


def _allowed_classes() -> list:
    """Every class a torchxrayvision weight file holds, and nothing else."""
    xrv = _xrv()
    modules = (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Linear, nn.Dropout)
    own = [xrv.models.DenseNet, xrv.models._DenseLayer, xrv.models._DenseBlock, xrv.models._Transition]
    return [*own, *modules, set]


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torchxrayvision weight file (a pickled model or a state dict), read weights-only."""
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowmedError(
            f"{path}: refused: not a torchxrayvision weight file that loads weights-only ({first_line})"
        ) from None
    if isinstance(loaded, nn.Module):
        return loaded.state_dict()
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    raise LowmedError(f"{path}: refused: holds a {type(loaded).__name__}, not a model or a state dict")


def overlap(trained_on: list[str], target: str | None) -> dict:
    """Whether the target dataset may have been in the weights' pretraining data (``train.json``)."""
    if target is None:
        return {"status": "unknown", "weights_trained_on": trained_on, "target": None}
    status = "possible" if target.lower() in trained_on else "none known"
    return {"status": status, "weights_trained_on": trained_on, "target": target}
