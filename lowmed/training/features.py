"""The frozen phase on cached features: the backbone runs once per image and view, not once per epoch.

While the backbone is frozen (in eval mode, so its batch-norm statistics are fixed too) its output for an image
depends only on the augmentation drawn. So lowmed computes the features of every training image for a few
augmented views, and of every validation image once, and trains the head on those: epoch e uses view
e mod K. The head sees the same kind of inputs as when the whole network runs every epoch — drawn from a pool
of K augmentations per image instead of a fresh one — at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowmed.console import track
from lowmed.data.augment import augment_batch
from lowmed.data.loading import LabelledImages, index_chunks
from lowmed.device import Precision
from lowmed.evaluation.predict import model_input

CACHE_LIMIT_BYTES = 2 * 2**30  # beyond this the frozen phase runs the whole network every epoch


@dataclass
class FeatureCache:
    train_views: torch.Tensor  # (views, train images, features), on the training device
    val: torch.Tensor  # (val images, features)

    @classmethod
    def build(cls, inputs, config, quiet: bool) -> "FeatureCache | None":
        views = config.cached_views if config.augment_strength > 0 else min(config.cached_views, 1)
        if views == 0:
            return None
        if views * (len(inputs.train) + len(inputs.val)) * inputs.model.feature_dim * 4 > CACHE_LIMIT_BYTES:
            return None
        backbone = inputs.model.backbone.eval()
        batch = config.batch_size * 2
        train_views = []
        for view in track(range(views), views, "Caching frozen features", quiet):
            generator = torch.Generator().manual_seed(config.seed * 7919 + view)
            train_views.append(
                _features(
                    backbone,
                    inputs,
                    inputs.train,
                    batch,
                    inputs.precision,
                    lambda x, generator=generator: augment_batch(x, config.augment_strength, generator),
                )
            )
        return cls(torch.stack(train_views), _features(backbone, inputs, inputs.val, batch, inputs.precision))

    def head_logits(self, head: nn.Module, precision: Precision) -> torch.Tensor:
        head.eval()
        with torch.inference_mode(), precision.autocast(self.val.device):
            return head(self.val).float()


def _features(
    backbone: nn.Module, inputs, split: LabelledImages, batch_size: int, precision: Precision, augment=None
) -> torch.Tensor:
    """Pooled features of every image of ``split`` (no_grad, not inference mode: the head trains on them)."""
    outputs = []
    with torch.no_grad(), precision.autocast(inputs.device):
        for images, _ in split.batches(index_chunks(torch.arange(len(split)), batch_size, drop_last=False)):
            x = model_input(images, inputs.mean, inputs.std, inputs.device, augment, inputs.channels_last)
            outputs.append(backbone(x).float())
    return torch.cat(outputs)
