"""Multi-process training on PyTorch's own engine: ``torchrun`` sets the environment, lowmed joins the group.

Every rank holds the model and the (small) image tensors; each epoch a seeded ``DistributedSampler`` gives every
rank its share of the training images, ``DistributedDataParallel`` averages the gradients, validation predictions
are gathered so every rank computes the same metrics (and so makes the same early-stopping decision), and only
rank 0 writes files, logs and progress bars.

``lowmed experiment`` under torchrun trains its pretrain stages across all processes and spreads the grid's small
runs over them, one run per process at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from lowmed.device import resolve_device
from lowmed.errors import LowmedError


@dataclass(frozen=True)
class Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    enabled: bool = False  # launched by torchrun (even with one process): a process group and DDP

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, requested_device: str, timeout: timedelta | None = None) -> "Distributed":
        """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); one process otherwise.

        ``timeout`` bounds every collective wait (PyTorch's default when None); it only applies to the call that
        creates the group. A process's GPU becomes its current device, so ``cuda`` means that GPU from here on.
        """
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        world_size, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = resolve_device(requested_device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            options: dict[str, Any] = {"timeout": timeout} if timeout else {}
            dist.init_process_group("nccl" if cuda else "gloo", **options)
        return cls(world_size, int(os.environ["RANK"]), local_rank, enabled=True)

    def device(self, requested: str) -> torch.device:
        """The device this process trains on; a GPU always by its index (torchrun's processes: each its own)."""
        device = resolve_device(requested)
        if device.type != "cuda":
            return device
        if self.enabled:
            return torch.device("cuda", self.local_rank)
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def wrap(self, module: nn.Module, find_unused: bool = False) -> nn.Module:
        """The module under DistributedDataParallel (built after freezing: DDP syncs what trains at construction)."""
        if not self.enabled or not any(p.requires_grad for p in module.parameters()):
            return module
        device_ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)

    def epoch_order(self, size: int, seed: int, epoch: int) -> torch.Tensor:
        """This rank's share of a seeded shuffle; every rank gets as many images (the shuffle wraps around)."""
        sampler: DistributedSampler[int] = DistributedSampler(
            range(size),  # type: ignore[arg-type]  # a sampler reads only the dataset's length
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=seed,
        )
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def shard(self, size: int) -> slice:
        """A contiguous block of ``range(size)`` for this rank (for validation, gathered afterwards)."""
        per_rank = -(-size // self.world_size)
        return slice(self.rank * per_rank, min(size, (self.rank + 1) * per_rank))

    def gather_objects(self, value: Any) -> list:
        """Every rank's (picklable) ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, value)
        return parts

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor, concatenated in rank order, on every rank."""
        if not self.enabled:
            return tensor
        return torch.cat(self.gather_objects(tensor.cpu())).to(tensor.device)

    def share(self, value: Any) -> Any:
        """Rank 0's (picklable) ``value`` on every rank: one decision taken once, so no rank goes another way."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float, weight: float) -> float:
        """The weighted mean of one number per rank."""
        if not self.enabled:
            return value
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        totals = torch.tensor([value * weight, weight], dtype=torch.float64, device=device)  # NCCL: GPU tensors only
        dist.all_reduce(totals)
        return float(totals[0] / totals[1])

    def on_main(self, action) -> None:
        """Run ``action`` on rank 0 only (file writes); an input error there is raised on every rank, so no rank
        waits forever for one that gave up."""
        message = None
        if self.is_main:
            try:
                action()
            except LowmedError as exc:
                message = str(exc)
        message = self.share(message)
        if message:
            raise LowmedError(message)


def is_rank_zero() -> bool:
    """False in torchrun's other processes: they leave what is shown to rank 0 (the only process otherwise)."""
    return os.environ.get("RANK", "0") == "0"


def leave_process_group() -> None:
    """Close the process group torchrun made us join (PyTorch warns about leaked resources otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
