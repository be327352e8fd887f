"""Per-image random augmentation applied to whole batches of tensors (CPU or GPU).

One affine warp per image (rotation, shift, scale, horizontal flip) through one ``affine_grid`` and
``grid_sample`` for the whole batch, then brightness and contrast. All draws come from an explicit CPU
generator, so an epoch's augmentation is reproducible — and identical after a resume — and reach a GPU in
one transfer per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lowmed.errors import LowmedError

# At strength 1: ±20° rotation, ±10 % shift, ±20 % scale, ±40 % brightness and contrast, flip half the images.
MAX_ROTATION_DEG = 20.0
MAX_SHIFT = 0.1
MAX_SCALE = 0.2
MAX_INTENSITY = 0.4


def augment_batch(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """``images``: float (B, C, H, W) in [0, 1]. Returns augmented images in [0, 1]."""
    if strength <= 0:
        return images
    # every draw of the batch at once, copied to the device in one asynchronous transfer
    draws = _on_device(torch.rand(7, images.shape[0], generator=generator), images.device)
    signed = draws * 2 - 1
    limits = (math.radians(MAX_ROTATION_DEG), MAX_SCALE, 2 * MAX_SHIFT, 2 * MAX_SHIFT)  # grid coordinates span 2
    angle, scale_change, shift_x, shift_y = (signed[i] * limit * strength for i, limit in enumerate(limits))
    zoom = 1 + scale_change
    flip = torch.where(draws[4] < 0.5, -1.0, 1.0)
    warped = _warp(images, angle, zoom, zoom, shift_x, shift_y, flip)
    return _intensity(warped, *(1 + signed[i] * MAX_INTENSITY * strength for i in (5, 6)))


@dataclass(frozen=True)
class ViewSettings:
    """Two views of one image for self-supervised pretraining, mild enough for medical images: a random crop of at
    least ``crop_min`` of the image's area (aspect 3:4 to 4:3) resized back, a small rotation, brightness and contrast;
    no colour jitter (a grey radiograph has no hue), and a horizontal flip only where the anatomy allows it."""

    crop_min: float = 0.5
    rotation: float = 10.0  # degrees, either way
    intensity: float = 0.2  # brightness and contrast, ± this share
    flip: bool = False  # a chest X-ray's left and right differ (heart, situs): off unless asked for

    def check(self, where: str = "--views") -> "ViewSettings":
        if not 0 < self.crop_min <= 1:
            raise LowmedError(f"{where}: crop_min {self.crop_min}: expected a share of the image above 0, at most 1")
        if not 0 <= self.rotation <= 90 or not 0 <= self.intensity < 1:
            raise LowmedError(f"{where}: rotation (0–90 degrees) or intensity (0 to below 1) out of range")
        return self


def random_views(images: torch.Tensor, settings: ViewSettings, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image (float (B, C, H, W) in [0, 1]); call twice for a positive pair."""
    batch = images.shape[0]
    draws = _on_device(torch.rand(8, batch, generator=generator), images.device)
    area = settings.crop_min + (1 - settings.crop_min) * draws[0]
    aspect = torch.exp((draws[1] * 2 - 1) * math.log(4 / 3))
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    shift_x, shift_y = (1 - width) * (draws[2] * 2 - 1), (1 - height) * (draws[3] * 2 - 1)  # the crop stays inside
    angle = (draws[4] * 2 - 1) * math.radians(settings.rotation)
    flip = torch.where(draws[5] < 0.5, -1.0, 1.0) if settings.flip else torch.ones_like(draws[5])
    warped = _warp(images, angle, 1 / width, 1 / height, shift_x, shift_y, flip)
    return _intensity(warped, *(1 + (draws[i] * 2 - 1) * settings.intensity for i in (6, 7)))


def _on_device(draws: torch.Tensor, device: torch.device) -> torch.Tensor:
    return draws.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else draws


def _warp(images, angle, zoom_x, zoom_y, shift_x, shift_y, flip) -> torch.Tensor:
    """One affine warp per image through a single ``affine_grid``: rotated by ``angle``, magnified by
    ``zoom_x``/``zoom_y`` (above 1: a crop), shifted, mirrored where ``flip`` is −1."""
    cos_x, sin_x = torch.cos(angle) / zoom_x, torch.sin(angle) / zoom_x
    cos_y, sin_y = torch.cos(angle) / zoom_y, torch.sin(angle) / zoom_y
    theta = torch.stack(
        [
            torch.stack([cos_x * flip, -sin_y, shift_x], dim=1),
            torch.stack([sin_x * flip, cos_y, shift_y], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _intensity(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    adjusted = (images - mean) * contrast.view(-1, 1, 1, 1).to(images.dtype) + mean
    return (adjusted * brightness.view(-1, 1, 1, 1).to(images.dtype)).clamp(0, 1)
