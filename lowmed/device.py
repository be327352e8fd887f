"""Where models run and at what precision."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lowmed.errors import LowmedError


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; asking for one that is absent is an input error."""
    mps = getattr(torch.backends, "mps", None)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps and mps.is_available() else torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise LowmedError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if requested == "mps" and not (mps and mps.is_available()):
        raise LowmedError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    return torch.device(requested)


@dataclass
class Precision:
    """Autocast settings: bf16 where the device supports it, fp16 with a gradient scaler otherwise."""

    enabled: bool
    dtype: torch.dtype | None = None

    @classmethod
    def choose(cls, device: torch.device, amp: bool) -> "Precision":
        if not amp:
            return cls(False)
        if device.type == "cuda":
            return cls(True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return cls(True, torch.bfloat16 if device.type == "cpu" else torch.float16)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype) if self.enabled else nullcontext()

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def describe(self) -> str:
        return str(self.dtype).removeprefix("torch.") if self.enabled else "off"
