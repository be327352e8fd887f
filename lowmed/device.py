"""Where models run and at what precision."""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from lowmed.config import DEVICE_EXPECTED, is_device_name
from lowmed.errors import LowmedError


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; asking for one that is absent is an input error."""
    if not is_device_name(requested):
        raise LowmedError(f"--device {requested!r}: expected {DEVICE_EXPECTED}")
    mps = getattr(torch.backends, "mps", None)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps and mps.is_available() else torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise LowmedError(f"--device {requested}: no CUDA device is available here; use --device cpu or auto")
    if requested.startswith("cuda:") and int(requested[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise LowmedError(f"--device {requested}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if requested == "mps" and not (mps and mps.is_available()):
        raise LowmedError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    return torch.device(requested)


UNKNOWN_MEMORY_BYTES = 4 * 2**30  # the CPU memory assumed where /proc/meminfo does not say


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: a GPU's free memory, or the CPU's MemAvailable (Linux)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return UNKNOWN_MEMORY_BYTES


@cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively, as Linux reports it; elsewhere no (the CPU stays fp32)."""
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """x86 AVX512-BF16 or AMX-BF16 in the ``flags`` of /proc/cpuinfo, or Arm BF16 in its ``Features``."""
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith(("flags", "Features"))
        for flag in line.split(":", 1)[1].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def native_amp(device: torch.device) -> bool:
    """Whether mixed precision runs natively here: on CUDA, or on a CPU with bfloat16 arithmetic (where bf16 with
    channels-last pays, benchmarks/cpu_precision.py). The CPU default stays fp32 all the same: on the shared pack
    bf16 moved test AUROC by more than the A–B gap (benchmarks/README.md, "CPU bfloat16")."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())


CPU_INFERENCE_BATCH = 16
ACCELERATOR_INFERENCE_BATCH = 64  # images per forward pass when evaluating or predicting on a GPU


def inference_batch_size(device: torch.device, elsewhere: int) -> int:
    """Images per forward pass without gradients (validation, caching, evaluation): 16 on a CPU, where larger
    batches were slower for every model measured (benchmarks/cpu_precision.py), ``elsewhere`` on accelerators."""
    return CPU_INFERENCE_BATCH if device.type == "cpu" else elsewhere


def channels_last(device: torch.device) -> bool:
    """Whether images and weights go channels-last: on CUDA, and on CPUs, where oneDNN's channels-last kernels
    are faster in fp32 as well as bf16 for every model measured (benchmarks/cpu_precision.py)."""
    return device.type in ("cuda", "cpu")


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


def device_name(device: torch.device) -> str:
    """The GPU's name, or the processor's model name (Linux reports it in /proc/cpuinfo; ``platform.processor()``
    is often empty)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def software_versions() -> dict[str, str]:
    """What a run records it ran with."""
    import torchvision

    import lowmed

    return {
        "lowmed": lowmed.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
