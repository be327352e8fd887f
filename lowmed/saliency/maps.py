"""Saliency maps by captum, and the model-randomisation check that says whether they show what the network learned.

Every method returns one non-negative map per image at the model's input size, for one class's logit:

- ``gradcam``: captum's ``LayerGradCam`` at the backbone layer the model registry names (``ModelSpec.cam_layer``),
  upsampled bilinearly.
- ``gradcam++``: Grad-CAM++ (Chattopadhay et al. 2018) from the same layer's activations and gradients, both taken
  with captum (``LayerActivation``, ``LayerGradientXActivation``); captum has no Grad-CAM++ of its own, and
  pytorch-grad-cam, which has, needs OpenCV.
- ``occlusion``: captum's ``Occlusion``: how much the logit drops when a square of the image's mean colour hides
  each place (its positive part: evidence for the class). A black square would be a strong, unnatural signal of its
  own on a radiograph's bright mediastinum.
- ``integrated-gradients``: captum's ``IntegratedGradients`` from a black image, absolute value summed over the
  colour channels.

The randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps") computes the same maps with the
network's weights re-initialised and measures the per-image Spearman rank correlation with the trained network's
maps. Maps that barely change show the image, not what the network learned. Two differently re-initialised
networks give the reference: what maps share when nothing was learned.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from lowmed.errors import LowmedError
from lowmed.models.forward import Normalizer
from lowmed.models.registry import Classifier
from lowmed.numeric import finite_mean

METHODS = ("gradcam", "gradcam++", "occlusion", "integrated-gradients")
# the |mean rank correlation| between trained and randomised maps at or above which a method's maps "barely change"
UNCHANGED_CORRELATION = 0.5
INTEGRATED_GRADIENT_STEPS = 32
OCCLUSION_SQUARES = 8  # the occluding square is 1/8 of the image side, slid by half its side
BATCH = 8  # images per attribution call (integrated gradients runs its steps for each)


def check_method(method: str, count: int | None = None) -> str:
    """``method`` when lowmed has it and captum is installed (and ``count``, the images to explain per kind, is at
    least 1); else the one line that says what to do."""
    if count is not None and count < 1:
        raise LowmedError(f"--explain-count {count}: expected at least 1 image")
    if method not in METHODS:
        raise LowmedError(f"--explain {method!r}: expected one of {', '.join(METHODS)}")
    if importlib.util.find_spec("captum") is None:
        raise LowmedError(
            "--explain needs captum, which is not installed; install it with: pip install 'lowmed[explain]'"
        )
    return method


class InputSpaceModel(nn.Module):
    """[0, 1] RGB in, logits out: the run's normalisation in front of the network, so that attributions and
    baselines (a black image) live in image space."""

    def __init__(self, network: nn.Module, normalize: Normalizer) -> None:
        super().__init__()
        self.network = network
        self.normalize = normalize

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(image))


def target_layer(network: Classifier, layer: str) -> nn.Module:
    """The module of ``network`` (a lowmed ``Classifier``) whose feature maps Grad-CAM explains: ``layer`` is its
    registry entry's ``cam_layer``, a path inside the backbone."""
    return network.backbone.get_submodule(layer)


def saliency_maps(
    network: Classifier, layer: str, normalize: Normalizer, images: torch.Tensor, targets: torch.Tensor, method: str
) -> np.ndarray:
    """(N, H, W) non-negative float32 maps for ``images`` (float [0, 1], (N, 3, H, W), on the network's device),
    each explaining the logit of its ``targets`` class; ``layer``: the registry's ``cam_layer`` of the network."""
    model = InputSpaceModel(network, normalize).eval()
    module = target_layer(network, layer)
    maps = [
        _attribute(model, module, images[start : start + BATCH], targets[start : start + BATCH], method)
        for start in range(0, len(images), BATCH)
    ]
    return torch.cat(maps).float().cpu().numpy()


def _attribute(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion

    size = x.shape[-2:]
    if method == "gradcam":
        cam = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(cam, size, "bilinear").squeeze(1).detach()
    if method == "gradcam++":
        return LayerAttribution.interpolate(_gradcam_plus_plus(model, layer, x, targets), size, "bilinear").squeeze(1)
    if method == "occlusion":
        side = max(1, size[-1] // OCCLUSION_SQUARES)
        stride = max(1, side // 2)
        drop = Occlusion(model).attribute(
            x,
            target=targets,
            sliding_window_shapes=(3, side, side),
            strides=(3, stride, stride),
            baselines=x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous(),
            perturbations_per_eval=16,
        )
        return drop.clamp(min=0).mean(1).detach()
    attributions = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=targets, n_steps=INTEGRATED_GRADIENT_STEPS, internal_batch_size=64
    )
    return attributions.abs().sum(1).detach()


def _gradcam_plus_plus(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ with the closed-form weights of an exponential of the logit (Chattopadhay et al., eq. 19)."""
    from captum.attr import LayerActivation, LayerGradientXActivation

    gradients = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(x, target=targets).detach()
    activations = LayerActivation(model, layer).attribute(x).detach()
    squared = gradients**2
    denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * squared * gradients
    defined = denominator != 0
    alpha = torch.where(defined, squared / denominator.where(defined, torch.ones_like(denominator)), 0)
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)


def randomised(network: Classifier, seed: int) -> Classifier:
    """A copy of ``network`` with every layer's weights re-initialised as at construction (seeded), in eval mode."""
    device = next(network.parameters()).device
    fresh = copy.deepcopy(network).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh.to(device).eval()


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Spearman correlation of two (N, H, W) stacks of maps; NaN where a map is constant."""
    ranks_a = rankdata(a.reshape(len(a), -1), axis=1)
    ranks_b = rankdata(b.reshape(len(b), -1), axis=1)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    norms = np.sqrt((ranks_a**2).sum(axis=1) * (ranks_b**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (ranks_a * ranks_b).sum(axis=1) / norms, np.nan)


@dataclass
class RandomisationCheck:
    """The maps of the trained network set against those of the same network re-initialised, on the same images."""

    per_image: np.ndarray  # Spearman ρ(trained, randomised) per image
    reference: float  # mean ρ between two differently re-initialised networks: what maps share with nothing learned
    seed: int

    @property
    def correlation(self) -> float:
        return finite_mean(self.per_image)

    @property
    def flagged(self) -> bool:
        """Whether the maps barely change: strongly correlated with the re-initialised network's, either way (an
        inverted map that keeps its structure shows no more of what was learned)."""
        return bool(abs(self.correlation) >= UNCHANGED_CORRELATION)

    def verdict(self, method: str) -> str:
        shown = f"rank correlation with a re-initialised network {self.correlation:.2f} (two re-initialised ones: "
        shown += f"{self.reference:.2f})"
        if self.flagged:
            return (
                f"{method} maps barely change when the weights are randomised ({shown}): they show the image more "
                "than what the model learned; do not read them as the model's reasons"
            )
        return f"{method} maps depend on the learned weights ({shown})"


def randomisation_check(
    network: Classifier,
    layer: str,
    normalize: Normalizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    trained_maps: np.ndarray,
    seed: int = 0,
) -> RandomisationCheck:
    """Adebayo et al.'s model-randomisation test on ``images`` (whose trained maps are ``trained_maps``)."""
    first, second = (
        saliency_maps(randomised(network, seed + k), layer, normalize, images, targets, method) for k in (0, 1)
    )
    return RandomisationCheck(
        per_image=rank_correlations(trained_maps, first),
        reference=finite_mean(rank_correlations(first, second)),
        seed=seed,
    )


# The pointing game (Zhang et al. 2016): a map is a hit when its peak falls inside a lesion box of its image; its
# chance level is the share of the image the boxes cover.
def peak(saliency: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's maximum."""
    row, column = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return int(row), int(column)


def hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Whether each map's peak falls inside its lesion mask."""
    return np.array([mask[peak(saliency)] for saliency, mask in zip(maps, masks)], dtype=bool)
