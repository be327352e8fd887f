"""The shared forward pass: uint8 image batches into model outputs (validation, evaluation, prediction, saliency)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from lowmed.data.loading import LabelledImages, decoded_batches, index_chunks
from lowmed.device import Precision, channels_last
from lowmed.models.folding import folded_for_inference
from lowmed.preprocessing import Preprocessing


class Normalizer:
    """A run's ``Preprocessing`` on the device: grey for one-channel weights, then (x − mean) / std, in the three
    channels the backbone takes."""

    def __init__(self, preprocessing: Preprocessing, device: torch.device) -> None:
        self.grey = preprocessing.channels == 1
        self.mean = torch.tensor(preprocessing.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(preprocessing.std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.grey:
            x = x.mean(1, keepdim=True)
        x = (x - self.mean) / self.std
        return x.expand(-1, 3, -1, -1) if self.grey else x


def model_input(
    images: torch.Tensor,
    normalize: Normalizer,
    device: torch.device,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → normalised float on ``device`` (channels-last if asked), augmented if asked."""
    x = images.to(device, non_blocking=True).float().div_(255)
    if augment is not None:
        x = augment(x)
    x = normalize(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def predict_logits(
    model: nn.Module,
    split: LabelledImages,
    normalize: Normalizer,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    tta: bool = False,
) -> torch.Tensor:
    """Logits for every image of ``split`` (in order), on ``device``, in inference mode.

    With ``tta`` the logits of each image and its horizontal mirror are averaged.
    """
    batches = (images for images, _ in split.batches(index_chunks(torch.arange(len(split)), batch_size, False)))
    return batch_logits(model, batches, normalize, device, precision, tta)


def predict_files(
    model: nn.Module,
    paths: list[Path],
    size: int,
    normalize: Normalizer,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    tta: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Logits for the image files, decoded while the model works on the batch before (``decoded_batches``).

    Returns the logits of the readable files and their row numbers in ``paths``. ``on_batch`` is told how many
    files each batch held (for a progress bar).
    """
    readable: list[int] = []

    def batches() -> Iterator[torch.Tensor]:
        for start, (images, rows) in zip(range(0, len(paths), batch_size), decoded_batches(paths, size, batch_size)):
            readable.extend(rows)
            if rows:
                yield images
            if on_batch is not None:
                on_batch(min(batch_size, len(paths) - start))

    logits = batch_logits(model, batches(), normalize, device, precision, tta)
    return logits, readable


def batch_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    normalize: Normalizer,
    device: torch.device,
    precision: Precision,
    tta: bool = False,
) -> torch.Tensor:
    """The model's logits for uint8 image batches, concatenated (empty when there are none); batch norms folded
    into their convolutions for the pass."""
    model = folded_for_inference(model.eval())
    outputs = []
    with torch.inference_mode(), precision.autocast(device):
        for images in batches:
            x = model_input(images, normalize, device, channels_last=channels_last(device))
            logits = model(x).float()
            if tta:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
            outputs.append(logits)
    return torch.cat(outputs) if outputs else torch.empty(0, device=device)
