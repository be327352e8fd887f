"""Per-image random augmentation applied to whole batches of tensors (CPU or GPU).

One affine warp per image (rotation, shift, scale, horizontal flip) through one ``affine_grid`` and
``grid_sample`` for the whole batch, then brightness and contrast. All draws come from an explicit CPU
generator, so an epoch's augmentation is reproducible — and identical after a resume — and reach a GPU in
one transfer per batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
    draws = torch.rand(7, images.shape[0], generator=generator)
    if images.device.type == "cuda":
        draws = draws.pin_memory().to(images.device, non_blocking=True)
    signed = draws * 2 - 1
    limits = (math.radians(MAX_ROTATION_DEG), MAX_SCALE, 2 * MAX_SHIFT, 2 * MAX_SHIFT)  # grid coordinates span 2
    angle, scale_change, shift_x, shift_y = (signed[i] * limit * strength for i, limit in enumerate(limits))
    scale = 1 + scale_change
    flip = torch.where(draws[4] < 0.5, -1.0, 1.0)
    brightness, contrast = (1 + signed[i] * MAX_INTENSITY * strength for i in (5, 6))

    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift_x], dim=1),
            torch.stack([sin * flip, cos, shift_y], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    adjusted = (warped - mean) * contrast.view(-1, 1, 1, 1).to(images.dtype) + mean
    return (adjusted * brightness.view(-1, 1, 1, 1).to(images.dtype)).clamp(0, 1)
