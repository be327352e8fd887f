"""Turning uint8 image batches into model outputs, for validation during training and for evaluation."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lowmed.data.loading import LabelledImages, index_chunks
from lowmed.device import Precision


def model_input(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → normalised float on ``device`` (channels-last if asked), augmented if asked."""
    x = images.to(device, non_blocking=True).float().div_(255)
    if augment is not None:
        x = augment(x)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def predict_logits(
    model: nn.Module,
    split: LabelledImages,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    tta: bool = False,
) -> torch.Tensor:
    """Logits for every image of ``split`` (in order), on ``device``, in inference mode.

    With ``tta`` the logits of each image and its horizontal mirror are averaged.
    """
    model.eval()
    outputs = []
    with torch.inference_mode(), precision.autocast(device):
        for images, _ in split.batches(index_chunks(torch.arange(len(split)), batch_size, drop_last=False)):
            x = model_input(images, mean, std, device, channels_last=precision.channels_last(device))
            logits = model(x).float()
            if tta:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
            outputs.append(logits)
    return torch.cat(outputs)
