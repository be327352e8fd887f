"""Training on cached activations: the frozen part of the network runs once per image and view, not every epoch.

Frozen layers are in eval mode (their batch-norm statistics fixed), so their output for an image depends only on
the augmentation drawn. lowmed therefore runs them over every training image in a few augmented views, and over
every validation image once, and trains the rest of the network on those outputs: epoch e uses view e mod K. In
the frozen phase the cached part is the whole backbone and the head trains on pooled features; in fine-tuning it
is every block below the first one that trains (``lowmed.models.blocks``). What trains sees the same kind of
inputs as when the whole network runs every epoch — drawn from a pool of K augmentations per image instead of a
fresh one — at a fraction of the cost. The cached part runs with its batch norms folded into the convolutions
before them (``lowmed.models.folding``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from lowmed.console import track
from lowmed.data.augment import augment_batch
from lowmed.data.loading import LabelledImages, index_chunks
from lowmed.device import Precision, free_memory, inference_batch_size
from lowmed.models.blocks import Block, backbone_blocks
from lowmed.models.folding import folded_for_inference
from lowmed.models.forward import model_input

# TrainConfig fields that act only above a cache (what trains on it, for how long, how the best epoch is picked);
# every other field, including any added later, is taken to change the cached activations
_ABOVE_THE_CACHE = {
    "arm",
    "out",
    "head",
    "epochs",
    "fine_tune_epochs",
    "fine_tune_layers",  # moves the fine-tuning boundary, which is part of the key
    "lr",
    "fine_tune_lr",
    "weight_decay",
    "patience",
    "monitor",
    "class_weights",
    "balanced_sampler",
    "accumulate",
    "compile",
    "cache_finetune",
    "workers",
}


@dataclass
class ActivationCache:
    boundary: str  # the last cached block ("backbone": pooled features)
    top: nn.Module  # what trains: from the cached activations to the logits
    above: nn.Module | None  # the backbone's blocks in ``top`` (None when the head alone trains)
    train_views: torch.Tensor  # (views, train images, *activation shape), on the training device
    val: torch.Tensor  # (val images, *activation shape)
    compute_dtype: torch.dtype  # the dtype the cached part produced (storage may be float16 to fit the budget)
    channels_last: bool
    seconds: float  # to build

    def report(self) -> dict:
        """What ``train.json`` records under ``caches``."""
        return {
            "boundary": self.boundary,
            "views": len(self.train_views),
            "shape": list(self.val.shape[1:]),
            "dtype": str(self.train_views.dtype).removeprefix("torch."),
            "megabytes": round((self.train_views.nbytes + self.val.nbytes) / 2**20, 1),
            "build_seconds": round(self.seconds, 2),
        }

    def describe(self) -> str:
        report = self.report()
        return (
            f"cached {report['views']} views after {report['boundary']}: {report['megabytes']} MB "
            f"{report['dtype']} in {report['build_seconds']} s"
        )

    def _as_input(self, activations: torch.Tensor, copy: bool) -> torch.Tensor:
        """In the dtype and memory format the top takes; ``copy`` for a view of the cache, which the top's first
        layer (an in-place ReLU) could otherwise overwrite."""
        activations = activations.to(self.compute_dtype, copy=copy)
        if self.channels_last and activations.dim() == 4:
            return activations.contiguous(memory_format=torch.channels_last)
        return activations

    def train_batch(self, phase_epoch: int, rows: torch.Tensor) -> torch.Tensor:
        """The cached activations of ``rows`` in the view this epoch uses."""
        view = self.train_views[(phase_epoch - 1) % len(self.train_views)]
        return self._as_input(view[rows], copy=False)  # indexing by rows has copied them already

    def pooled_features(self, head: nn.Module, precision: Precision, batch_size: int) -> "ActivationCache":
        """The frozen phase's cache computed from this one: the backbone's remaining blocks (frozen in that phase,
        so in eval mode) over every cached view, instead of the whole backbone over the images again."""
        started = time.perf_counter()
        assert self.above is not None  # the fine-tuning phase's cache, with the backbone blocks above it
        above = folded_for_inference(self.above.eval())
        with torch.no_grad(), precision.autocast(self.val.device):  # not inference mode: the head trains on them
            views = torch.stack([self._forward(above, view, batch_size) for view in self.train_views])
            val = self._forward(above, self.val, batch_size)
        return ActivationCache("backbone", head, None, views, val, torch.float32, False, time.perf_counter() - started)

    def val_logits(self, precision: Precision, batch_size: int) -> torch.Tensor:
        self.top.eval()
        with torch.inference_mode(), precision.autocast(self.val.device):
            return self._forward(self.top, self.val, batch_size)

    def _forward(self, module: nn.Module, activations: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``module`` over cached ``activations`` in batches, as float32 (the caller sets grad mode and autocast)."""
        starts = range(0, len(activations), batch_size)
        return torch.cat([module(self._as_input(activations[i : i + batch_size], copy=True)).float() for i in starts])


class SharedCaches:
    """Caches kept between runs that differ only above them — the trials of one tuning cell: a trial of another
    head learning rate reuses the frozen features the first trial built, instead of running the backbone again.

    A cache is reused only under the same boundary and the same value of every option that can change what the
    cached layers produce (all but ``_ABOVE_THE_CACHE``); the network must be built from the same weights, as
    every trial of a cell is. One cache per phase is kept, the latest, so the memory held stays bounded.
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple, ActivationCache]] = {}  # phase -> (key, cache)

    @staticmethod
    def key(config, boundary: str) -> tuple:
        values = config.to_dict()
        return (boundary, *((name, values[name]) for name in sorted(values) if name not in _ABOVE_THE_CACHE))

    def get(self, phase: str, key: tuple) -> ActivationCache | None:
        kept = self._kept.get(phase)
        return kept[1] if kept is not None and kept[0] == key else None

    def keep(self, phase: str, key: tuple, cache: ActivationCache) -> None:
        self._kept[phase] = (key, cache)


def _reused(kept: ActivationCache, top: nn.Module, above: nn.Module | None) -> ActivationCache:
    """A kept cache's activations under this run's modules (the top that trains belongs to this run's model)."""
    return replace(kept, top=top, above=above, seconds=0.0)


class PhaseCaches:
    """Each phase's cache, and what ``train.json`` records of them (``reports``).

    When fine-tuning follows the frozen phase, its cache is built first and the frozen phase's features are
    computed from it: the layers frozen in both phases run once per view for the two phases together. With
    ``shared`` (tuning trials), caches another run built with the same inputs are reused.
    """

    def __init__(self, inputs, config, shared: SharedCaches | None = None) -> None:
        self.inputs, self.config, self.shared = inputs, config, shared
        self.reports: dict[str, dict] = {}
        self._finetune: ActivationCache | None = None  # built ahead, during the frozen phase

    def for_phase(
        self, phase: str, frozen: list[nn.Module], finetune_frozen: list[nn.Module] | None
    ) -> ActivationCache | None:
        """``frozen``: the backbone layers frozen in this phase (``loop.frozen_layers``); ``finetune_frozen``:
        those of the fine-tuning phase that follows this frozen phase, if one does."""
        if phase == "finetune" and self._finetune is not None:
            cache, self._finetune = self._finetune, None
            return cache
        if phase == "frozen" and finetune_frozen is not None:
            ahead, report = build_cache(self.inputs, self.config, "finetune", finetune_frozen, self.shared)
            if ahead is not None:
                self._finetune, self.reports["finetune"] = ahead, report
                key = SharedCaches.key(self.config, "backbone")
                kept = self.shared.get("frozen", key) if self.shared else None
                if kept is not None:
                    pooled = _reused(kept, self.inputs.model.head, None)
                else:
                    batch = inference_batch_size(self.inputs.device, self.config.batch_size * 2)
                    pooled = ahead.pooled_features(self.inputs.model.head, self.inputs.precision, batch)
                    if self.shared:
                        self.shared.keep("frozen", key, pooled)
                reused = {"reused": kept is not None} if self.shared else {}
                self.reports["frozen"] = {**pooled.report(), "computed_from": ahead.boundary, **reused}
                return pooled
        built, self.reports[phase] = build_cache(self.inputs, self.config, phase, frozen, self.shared)
        return built


def build_cache(
    inputs, config, phase: str, frozen: list[nn.Module], shared: SharedCaches | None = None
) -> tuple[ActivationCache | None, dict]:
    """The cache for a phase, from the images (or kept in ``shared``), and what ``train.json`` records of it: its
    boundary and size, or why there is none. ``frozen``: the backbone layers frozen in that phase.
    """
    views = config.cached_views if config.augment_strength > 0 else min(config.cached_views, 1)
    if views == 0:
        return None, {"boundary": None, "reason": "--cached-views 0"}
    if phase == "finetune" and not config.cache_finetune:
        return None, {"boundary": None, "reason": "--no-cache-finetune"}
    backbone = inputs.model.backbone
    if phase == "frozen":
        lower, boundary, above, top = backbone, "backbone", None, inputs.model.head
    else:
        cut = split_at_cache(backbone, frozen)
        if isinstance(cut, str):
            return None, {"boundary": None, "reason": cut}
        below, rest = cut
        lower, boundary = nn.Sequential(*(module for _, module in below)), below[-1][0]
        above = nn.Sequential(*(module for _, module in rest))
        top = nn.Sequential(above, inputs.model.head)
    key = SharedCaches.key(config, boundary)
    kept = shared.get(phase, key) if shared else None
    if kept is not None:
        cache = _reused(kept, top, above)
        return cache, {**cache.report(), "reused": True}
    lower = folded_for_inference(lower.eval())
    # pooled features stay float32 (they are small); activations are stored as the network made them, or in
    # float16 where float32 would not fit
    produced = torch.float32 if phase == "frozen" else None
    probe = _activations(lower, inputs, inputs.train.part(slice(0, 1)), 1, inputs.precision, storage=produced)
    images = views * len(inputs.train) + len(inputs.val)
    budget = memory_budget(inputs.device)
    storage = probe.dtype
    if images * probe[0].numel() * probe.element_size() > budget and probe.dtype == torch.float32:
        storage = torch.float16
    needed = images * probe[0].numel() * torch.empty((), dtype=storage).element_size()
    if needed > budget:
        reason = f"{needed / 2**30:.1f} GiB of activations after {boundary} exceed the budget of {budget / 2**30:.1f}"
        return None, {"boundary": None, "reason": f"{reason} GiB (half the free memory)"}
    started = time.perf_counter()
    batch = inference_batch_size(inputs.device, config.batch_size * 2)
    train_views = []
    label = "Caching frozen features" if phase == "frozen" else f"Caching activations after {boundary}"
    for view in track(range(views), views, label):
        generator = torch.Generator().manual_seed(config.seed * 7919 + view)
        train_views.append(
            _activations(
                lower,
                inputs,
                inputs.train,
                batch,
                inputs.precision,
                lambda x, generator=generator: augment_batch(x, config.augment_strength, generator),
                storage,
            )
        )
    val = _activations(lower, inputs, inputs.val, batch, inputs.precision, storage=storage)
    if storage != probe.dtype and not all(torch.isfinite(t).all() for t in (*train_views, val)):
        return None, {"boundary": None, "reason": f"activations after {boundary} overflow float16 storage"}
    cache = ActivationCache(
        boundary,
        top,
        above,
        torch.stack(train_views),
        val,
        probe.dtype,
        inputs.channels_last,
        time.perf_counter() - started,
    )
    if shared:
        shared.keep(phase, key, cache)
        return cache, {**cache.report(), "reused": False}
    return cache, cache.report()


def split_at_cache(backbone: nn.Module, frozen: list[nn.Module]) -> tuple[list[Block], list[Block]] | str:
    """The backbone's blocks below the first that trains (or is random in training), whose outputs can be cached,
    and the rest, which run every epoch; or why the backbone cannot be split."""
    blocks = backbone_blocks(backbone)
    if blocks is None:
        return f"{type(backbone).__name__} is not a chain of blocks (lowmed.models.blocks)"
    frozen_ids = {id(module) for module in frozen}
    cut = next((i for i, (_, module) in enumerate(blocks) if not _same_every_epoch(module, frozen_ids)), len(blocks))
    if cut == 0:
        return f"the first block ({blocks[0][0]}) trains"
    return blocks[:cut], blocks[cut:]


def _same_every_epoch(block: nn.Module, frozen_ids: set[int]) -> bool:
    """Whether a block gives the same output for the same input every epoch: every layer with weights and every
    normalisation layer in it is frozen (so in eval mode), and nothing in it drops out at random."""
    for module in block.modules():
        has_weights = any(True for _ in module.parameters(recurse=False))
        if (has_weights or isinstance(module, nn.modules.batchnorm._NormBase)) and id(module) not in frozen_ids:
            return False
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return False
        if (getattr(module, "drop_prob", 0) or getattr(module, "drop_rate", 0) or 0) > 0:  # timm's drop-path
            return False
    return True


def memory_budget(device: torch.device) -> int:
    """Half the memory free on ``device`` now: what the cached activations may take."""
    return free_memory(device) // 2


def _activations(
    lower: nn.Module,
    inputs,
    split: LabelledImages,
    batch_size: int,
    precision: Precision,
    augment=None,
    storage: torch.dtype | None = None,
) -> torch.Tensor:
    """``lower``'s output for every image of ``split`` (no_grad, not inference mode: what trains takes them)."""
    outputs = []
    with torch.no_grad(), precision.autocast(inputs.device):
        for images, _ in split.batches(index_chunks(torch.arange(len(split)), batch_size, drop_last=False)):
            x = model_input(images, inputs.normalize, inputs.device, augment, inputs.channels_last)
            out = lower(x)
            outputs.append(out if storage is None else out.to(storage))
    return torch.cat(outputs)
