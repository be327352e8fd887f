"""Batch norm folded into convolutions: the same outputs, the original untouched, and only where it is valid."""

import pytest
import torch
from torch import nn

from lowmed.models.folding import folded_for_inference
from lowmed.models.registry import build_model, get_model_spec


def norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def with_running_statistics(model: nn.Module) -> nn.Module:
    """Batch norms as after training: statistics and affine parameters far from the identity."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name, left",
    [("simplecnn", 0), ("resnet18", 0), ("densenet121", 62), ("timm:efficientnet_lite0", 0)],
)
def test_folded_network_predicts_as_the_original_which_stays_untouched(name, left):
    """DenseNet normalises before each convolution (pre-activation): only the norms after one fold."""
    model = with_running_statistics(build_model(get_model_spec(name), 3))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    folded = folded_for_inference(model)
    assert norms(folded) == left < norms(model)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-6)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_channels_last_weights_stay_channels_last():
    model = with_running_statistics(build_model(get_model_spec("resnet18"), 2)).to(memory_format=torch.channels_last)
    folded = folded_for_inference(model)
    convolutions = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-6)


def test_convolution_bias_and_norm_without_affine_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, affine=False), nn.ReLU())
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.eval()
    folded = folded_for_inference(model)
    x = torch.rand(2, 3, 8, 8)
    assert norms(folded) == 0
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)


class Residual(nn.Module):
    """A convolution whose output also skips its norm: folding it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class SharedConvolution(nn.Module):
    """One convolution applied twice, each time followed by its own norm: it cannot take either norm's scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.first, self.second = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.first(self.conv(x)) + self.second(self.conv(x.flip(-1)))


class DataDependent(nn.Module):
    """A forward that branches on a tensor's value, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        if x.mean() > 0:
            x = -x
        return self.norm(self.conv(x))


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train(), id="training mode"),
        pytest.param(Residual().eval(), id="conv output used twice"),
        pytest.param(SharedConvolution().eval(), id="conv module called twice"),
        pytest.param(DataDependent().eval(), id="untraceable forward"),
        pytest.param(build_model(get_model_spec("vgg19"), 2).eval(), id="no batch norm"),
    ],
)
def test_nothing_folds_where_it_would_change_the_result(module):
    assert folded_for_inference(module) is module
