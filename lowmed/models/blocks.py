"""Backbones as chains of blocks, so that training can cut a network where its frozen layers end.

``backbone_blocks(backbone)`` lists ``(name, module)`` pairs whose modules, applied one after the other, compute
``backbone(x)``. While fine-tuning trains only the top layers, everything below the first trainable block gives
the same output for the same augmented image every epoch; ``lowmed.training.features`` caches it there. A
backbone whose forward is not such a chain (Inception v3 and its auxiliary branch, most timm families) has no
blocks, and trains as a whole network.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

Block = tuple[str, nn.Module]


class GlobalPool(nn.Module):
    """Global average pooling to a flat feature vector; DenseNet's trunk ends in a norm layer that torchvision
    follows with a ReLU, so ``relu_first`` adds it."""

    def __init__(self, relu_first: bool = False) -> None:
        super().__init__()
        self.relu_first = relu_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu_first:
            x = torch.relu(x)
        return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)


class _TimmHead(nn.Module):
    """timm's ``forward_head``: its pooling, its dropout (when the model has one), its (identity) classifier."""

    def __init__(self, model: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.global_pool = model.get_submodule("global_pool")
        self.drop_rate = float(getattr(model, "drop_rate", 0.0) or 0.0)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


def sequential_blocks(prefix: str, module: nn.Module) -> list[Block]:
    """``nn.Sequential`` containers opened down to their non-sequential children (a ResNet bottleneck, a
    DenseNet block, an inverted-residual block), each named by its path in the backbone."""
    if type(module) is not nn.Sequential:
        return [(prefix, module)]
    return [block for name, child in module.named_children() for block in sequential_blocks(f"{prefix}.{name}", child)]


def backbone_blocks(backbone: nn.Module) -> list[Block] | None:
    """The backbone as a chain of blocks, or None where its forward is not one."""
    pool = getattr(backbone, "pool", None)
    if isinstance(pool, GlobalPool):  # lowmed's SimpleCNN and PooledFeatures
        return [*sequential_blocks("features", backbone.get_submodule("features")), ("pool", pool)]
    if isinstance(backbone, torchvision.models.ResNet):
        stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        pool = nn.Sequential(backbone.avgpool, nn.Flatten(1), backbone.fc)
        return [("stem", stem), *_resnet_layers(backbone), ("pool", pool)]
    return _timm_blocks(backbone)


def _resnet_layers(model: nn.Module) -> list[Block]:
    """ResNet's four layers, block by block (torchvision's and timm's alike)."""
    return [block for i in range(1, 5) for block in sequential_blocks(f"layer{i}", model.get_submodule(f"layer{i}"))]


def _timm_blocks(model: nn.Module) -> list[Block] | None:
    """timm's EfficientNet (MobileNet, EfficientNet-Lite…) and ResNet families, by the attributes their
    ``forward_features`` and ``forward_head`` use; gradient checkpointing changes the forward, so not with it."""
    if getattr(model, "grad_checkpointing", True) or not hasattr(model, "global_pool"):
        return None
    if all(hasattr(model, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier")):
        return [
            ("conv_stem", model.get_submodule("conv_stem")),
            ("bn1", model.get_submodule("bn1")),
            *sequential_blocks("blocks", model.get_submodule("blocks")),
            ("conv_head", model.get_submodule("conv_head")),
            ("bn2", model.get_submodule("bn2")),
            ("head", _TimmHead(model, model.get_submodule("classifier"))),
        ]
    if all(hasattr(model, name) for name in ("conv1", "bn1", "act1", "maxpool", "layer4", "fc")):
        stem = nn.Sequential(
            model.get_submodule("conv1"),
            model.get_submodule("bn1"),
            model.get_submodule("act1"),
            model.get_submodule("maxpool"),
        )
        return [("stem", stem), *_resnet_layers(model), ("head", _TimmHead(model, model.get_submodule("fc")))]
    return None
