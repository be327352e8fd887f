"""Batch norm folded into the convolution before it, for passes that only predict.

A batch norm in eval mode is a fixed scale and shift per channel; where it takes a convolution's output and
nothing else does, the two merge into one convolution with new weights and bias, and a pass over the
activations disappears. On a CPU this is most of the cost of EfficientNet's early depthwise stages
(``benchmarks/README.md``). The folded network gives the same outputs up to float rounding; it is built per pass
(an evaluation, a cache of frozen activations), never trained, and shares every unchanged module with the original.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeGuard

import torch
from torch import fx, nn


class _NormAsLeaf(fx.Tracer):
    """fx's tracer, keeping every batch norm (timm's norm + activation layers too) as one call to fold."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(module, qualified_name)


def folded_for_inference(module: nn.Module) -> nn.Module:
    """``module`` with each eval-mode batch norm that follows a convolution merged into it, for use in the mode it
    is in now; ``module`` itself where nothing folds or its forward cannot be traced (torch.fx traces Python
    control flow only on module attributes, not on tensor values)."""
    try:
        graph = _NormAsLeaf().trace(module)
    except Exception:  # noqa: BLE001 - any forward fx cannot follow runs unfolded, as it is
        return module
    folded = fx.GraphModule(module, graph)  # the original's submodules, in containers of its own
    modules = dict(folded.named_modules())
    shared = {id(submodule) for submodule in module.modules()}
    calls = Counter(node.target for node in folded.graph.nodes if node.op == "call_module")
    count = 0
    for node in list(folded.graph.nodes):
        norm = modules.get(_module_name(node)) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if not (_foldable_norm(norm) and isinstance(source, fx.Node) and source.op == "call_module"):
            continue
        conv = modules[_module_name(source)]
        if type(conv) is not nn.Conv2d or len(source.users) > 1 or calls[source.target] > 1 or calls[node.target] > 1:
            continue  # the convolution's output, or either module, is used elsewhere too
        if _parents(folded, node, source) & shared:
            continue  # replacing a child of a container shared with the original would change the original
        _replace(folded, _module_name(source), _merged(conv, norm))
        if type(norm) is nn.BatchNorm2d:
            node.replace_all_uses_with(source)
            folded.graph.erase_node(node)
        else:  # timm's BatchNormAct2d: its dropout and activation stay
            _replace(folded, _module_name(node), nn.Sequential(norm.get_submodule("drop"), norm.get_submodule("act")))
        count += 1
    if count == 0:
        return module
    folded.delete_all_unused_submodules()  # the folded plain norms
    folded.recompile()
    return folded


def _module_name(node: fx.Node) -> str:
    """A ``call_module`` node's target: the qualified name of its module."""
    assert isinstance(node.target, str)
    return node.target


def _foldable_norm(module: nn.Module | None) -> TypeGuard[nn.BatchNorm2d]:
    """A 2-d batch norm in eval mode with running statistics: plain, or timm's norm + dropout + activation."""
    if not isinstance(module, nn.BatchNorm2d) or module.training or module.running_var is None:
        return False
    return type(module) is nn.BatchNorm2d or (
        type(module).__name__ == "BatchNormAct2d" and hasattr(module, "drop") and hasattr(module, "act")
    )


def _merged(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``norm(conv(x))`` with ``norm``'s running statistics."""
    assert norm.running_var is not None and norm.running_mean is not None  # _foldable_norm: it tracks them
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var + norm.eps)
        shift = -norm.running_mean * scale
        if norm.affine:
            scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
        bias = shift if conv.bias is None else conv.bias * scale + shift
        geometry: dict[str, Any] = {
            name: getattr(conv, name) for name in ("kernel_size", "stride", "padding", "dilation", "groups")
        }
        merged = nn.Conv2d(
            conv.in_channels, conv.out_channels, **geometry, bias=True, padding_mode=conv.padding_mode, device="meta"
        )
        # the product keeps the weight's memory format (channels-last where the network was converted)
        weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        merged.weight = nn.Parameter(weight, requires_grad=False)
        merged.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return merged


def _parents(root: nn.Module, *nodes: fx.Node) -> set[int]:
    return {id(root.get_submodule(_module_name(node).rpartition(".")[0])) for node in nodes}


def _replace(root: nn.Module, qualified_name: str, module: nn.Module) -> None:
    parent, _, name = qualified_name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
