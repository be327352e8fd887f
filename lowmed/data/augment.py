"""Per-image random augmentation applied to whole batches of tensors (CPU or GPU).

One affine warp per image (rotation, shift, scale, horizontal flip) through ``affine_grid`` and
``grid_sample``, then brightness and contrast. All draws come from an explicit CPU generator, so an
epoch's augmentation is reproducible — and identical after a resume.
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
    batch = images.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return ((torch.rand(batch, generator=generator) * 2 - 1) * scale * strength).to(images.device)

    angle = uniform(math.radians(MAX_ROTATION_DEG))
    scale = 1 + uniform(MAX_SCALE)
    shift_x, shift_y = uniform(2 * MAX_SHIFT), uniform(2 * MAX_SHIFT)  # grid coordinates span 2
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0).to(images.device)
    brightness, contrast = 1 + uniform(MAX_INTENSITY), 1 + uniform(MAX_INTENSITY)

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
