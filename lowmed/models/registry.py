"""The model registry: name → backbone builder, feature size, preprocessing, ImageNet weights.

Every backbone maps an image batch to pooled features; lowmed puts its own head on top. Keeping the
torchvision module names inside each backbone means torchvision's (and timm's) own state dicts load
by name, with only the original classifier left over.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

import torchvision
from torch import nn

from lowmed.errors import LowmedError
from lowmed.models.blocks import GlobalPool
from lowmed.models.heads import build_head
from lowmed.models.simple_cnn import SimpleCNN
from lowmed.preprocessing import Preprocessing


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build_backbone: Callable[[], nn.Module]
    feature_dim: int
    preprocessing: Preprocessing
    description: str
    imagenet_weights: str | None = None  # torchvision weights enum, e.g. "ResNet50_Weights.IMAGENET1K_V2"
    timm_name: str | None = None  # for timm:<name> entries (ImageNet weights come through timm)
    min_input_size: int = 32
    # the backbone's module whose output maps Grad-CAM explains: its last spatial feature map
    cam_layer: str = "features"


class PooledFeatures(nn.Module):
    """torchvision's ``features`` trunk + global average pooling (VGG, DenseNet, EfficientNet)."""

    def __init__(self, features: nn.Module, final_relu: bool = False) -> None:
        super().__init__()
        self.features = features
        self.pool = GlobalPool(relu_first=final_relu)

    def forward(self, x):
        return self.pool(self.features(x))


def _resnet(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = getattr(torchvision.models, name)(weights=None)
        model.fc = nn.Identity()
        return model

    return build


def _trunk(name: str, final_relu: bool = False) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return PooledFeatures(getattr(torchvision.models, name)(weights=None).features, final_relu)

    return build


def _inception() -> nn.Module:
    """Inception v3 with both classifiers removed: returns features, and (features, aux features)
    in training mode; ``transform_input`` as torchvision sets it for its ImageNet weights."""
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    model.fc = nn.Identity()
    model.AuxLogits.fc = nn.Identity()
    return model


_SPECS = [
    ModelSpec(
        "simplecnn",
        SimpleCNN,
        256,
        Preprocessing(224),
        "Model A: 4 conv blocks, trained from scratch",
        min_input_size=32,
        cam_layer="features.29",  # the last ReLU, before the final max-pool halves the map
    ),
    ModelSpec(
        "resnet18",
        _resnet("resnet18"),
        512,
        Preprocessing(224),
        "ResNet-18",
        "ResNet18_Weights.IMAGENET1K_V1",
        cam_layer="layer4",
    ),
    ModelSpec(
        "resnet50",
        _resnet("resnet50"),
        2048,
        Preprocessing(224),
        "ResNet-50",
        "ResNet50_Weights.IMAGENET1K_V2",
        cam_layer="layer4",
    ),
    ModelSpec("vgg19", _trunk("vgg19"), 512, Preprocessing(224), "VGG-19 conv trunk", "VGG19_Weights.IMAGENET1K_V1"),
    ModelSpec(
        "vgg19_bn",
        _trunk("vgg19_bn"),
        512,
        Preprocessing(224),
        "VGG-19 with batch norm",
        "VGG19_BN_Weights.IMAGENET1K_V1",
    ),
    # the auxiliary classifier's 5x5 convolution needs the full 299 px input
    ModelSpec(
        "inception_v3",
        _inception,
        2048,
        Preprocessing(299),
        "Inception v3 (299 px, auxiliary head)",
        "Inception_V3_Weights.IMAGENET1K_V1",
        min_input_size=299,
        cam_layer="Mixed_7c",
    ),
    ModelSpec(
        "densenet121",
        _trunk("densenet121", final_relu=True),
        1024,
        Preprocessing(224),
        "DenseNet-121",
        "DenseNet121_Weights.IMAGENET1K_V1",
    ),
    ModelSpec(
        "efficientnet_b0",
        _trunk("efficientnet_b0"),
        1280,
        Preprocessing(224),
        "EfficientNet-B0",
        "EfficientNet_B0_Weights.IMAGENET1K_V1",
    ),
]
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
ALIASES = {"inceptionv3": "inception_v3"}  # the seed project's spelling


def get_model_spec(name: str) -> ModelSpec:
    name = ALIASES.get(name, name)
    if name.startswith("timm:"):
        return _timm_spec(name)
    if name not in MODELS:
        raise LowmedError(f"--model {name!r} is not known; expected one of {', '.join(MODELS)} or timm:<name>")
    return MODELS[name]


def _timm_spec(name: str) -> ModelSpec:
    if importlib.util.find_spec("timm") is None:
        raise LowmedError(f"--model {name}: timm is not installed; install it with: pip install 'lowmed[timm]'")
    import timm

    timm_name = name.split(":", 1)[1]
    if not timm.list_models(timm_name):
        raise LowmedError(f"--model {name}: timm has no model named {timm_name!r}")

    def build() -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, num_classes=0)

    probe: Any = build()  # a timm model: its attributes are timm's
    cfg = probe.pretrained_cfg
    preprocessing = Preprocessing(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
    return ModelSpec(
        name,
        build,
        # what forward gives with no classifier: wider than num_features where timm's head has a hidden layer
        # after pooling (MobileNetV3, GhostNet)
        getattr(probe, "head_hidden_size", probe.num_features),
        preprocessing,
        f"timm {timm_name}",
        timm_name=timm_name,
        cam_layer=probe.feature_info[-1]["module"],  # timm's name for the module of its last feature map
    )


class Classifier(nn.Module):
    """Backbone features → head. Inception's auxiliary features get their own linear head in training."""

    def __init__(
        self, backbone: nn.Module, head: nn.Module, feature_dim: int, aux_head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim  # the backbone's pooled features, the head's input
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head

    def forward(self, x):
        features = self.backbone(x)
        if isinstance(features, tuple):
            main, aux = features
            return self.head(main), self.aux_head(aux)
        return self.head(features)


def build_model(spec: ModelSpec, classes: int, head: str = "mlp") -> Classifier:
    aux_head = nn.Linear(768, classes) if spec.name == "inception_v3" else None
    return Classifier(spec.build_backbone(), build_head(head, spec.feature_dim, classes), spec.feature_dim, aux_head)


def layer_groups(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's layers in forward order, as unfrozen by "the last N layers": every module
    with weights of its own (convolution, normalisation, linear)."""
    return [m for m in backbone.modules() if any(True for _ in m.parameters(recurse=False))]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
