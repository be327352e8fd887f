"""Whether a training run fits in memory, said before it starts: a process the system kills for memory leaves the
user nothing to go on.

The estimate adds the decoded images held in memory, the model (weights, gradients, Adam's two moments) and one
batch (its images as uint8 and float, and every layer's output kept for the backward pass, measured by one forward
pass at a small size and scaled by the pixel count), and on a CPU the checkpoint copies the background writer holds
in host memory. The feature cache is not counted: it takes at most half of what is free and is skipped when it
would not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowmed.data.loading import IN_MEMORY_LIMIT_BYTES
from lowmed.device import free_memory
from lowmed.errors import LowmedError

PROBE_SIZE = 96  # the forward pass that measures activations (at least Inception's 75 px)


@dataclass(frozen=True)
class MemoryEstimate:
    images: int  # bytes of decoded train and val images held in memory (0 when decoded per batch)
    model: int  # weights, gradients and optimizer state
    batch: int  # one batch's inputs and the activations kept for its backward pass
    # the epoch-end copies of weights and Adam state the checkpoint writer holds (one being written, the newest
    # waiting); in host memory, so counted only when training runs there
    checkpoints: int = 0

    @property
    def total(self) -> int:
        return self.images + self.model + self.batch + self.checkpoints

    def describe(self) -> str:
        parts = {"images": self.images, "model": self.model, "one batch": self.batch}
        if self.checkpoints:
            parts["checkpoint copies"] = self.checkpoints
        return ", ".join(f"{name} {_gib(size)}" for name, size in parts.items())


def estimate_training_memory(
    model: nn.Module, image_size: int, batch_size: int, images: int, device: torch.device
) -> MemoryEstimate:
    """The memory a run of ``model`` on ``images`` train and val images of ``image_size`` px needs at most on
    ``device``."""
    pixels = 3 * image_size * image_size
    held = images * pixels if images * pixels <= IN_MEMORY_LIMIT_BYTES else 0
    parameters = sum(p.numel() for p in model.parameters())
    probe = min(image_size, PROBE_SIZE)
    per_image = _activation_bytes(model, probe) * (image_size / probe) ** 2
    return MemoryEstimate(
        images=held,
        model=parameters * 4 * 4,
        batch=int(batch_size * (per_image + pixels * (1 + 4))),
        checkpoints=parameters * 4 * 3 * 2 if device.type == "cpu" else 0,
    )


def check_fits(estimate: MemoryEstimate, device: torch.device, image_size: int, batch_size: int) -> None:
    """Refuse a run whose estimate exceeds the memory free on ``device`` now."""
    free = free_memory(device)
    if estimate.total > free:
        raise LowmedError(
            f"--image-size {image_size} --batch-size {batch_size}: training needs about {_gib(estimate.total)} "
            f"({estimate.describe()}), but {device.type} has {_gib(free)} free; lower --image-size or --batch-size"
        )


def _activation_bytes(model: nn.Module, size: int) -> float:
    """Bytes of every leaf module's float32 output for one image of ``size`` px (with as many channels as the first
    convolution takes)."""
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * 4

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return float(total)


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**27 else f"{size / 2**20:.0f} MiB"
