"""Model A: a small CNN trained from scratch, the baseline transfer learning has to beat."""

from torch import nn

from lowmed.models.blocks import GlobalPool


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SimpleCNN(nn.Module):
    """A stride-2 stem, four conv–BN–ReLU ×2 + max-pool blocks (32→256 channels), global average pooling.

    About 1.2 M parameters and 0.75 GMAC per 224 px image — cheap enough for a laptop CPU. Global
    pooling makes the feature size independent of the input size (32 px and up).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers = conv_bn_relu(3, widths[0], stride=2)
        for in_channels, out_channels in zip((widths[0], *widths), widths):
            layers += [
                *conv_bn_relu(in_channels, out_channels),
                *conv_bn_relu(out_channels, out_channels),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = GlobalPool()
        self.feature_dim = widths[-1]

    def forward(self, x):
        return self.pool(self.features(x))
