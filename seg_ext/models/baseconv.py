"""BaseConv: Conv-BN-ReLU layers at full resolution and a 1x1 classifier."""

from __future__ import annotations

from torch import nn
from seg_ext.models.base import SegmentationModel


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, batch_norm: bool = True) -> nn.Sequential:
    """A same-size convolution, optional batch norm, ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BaseConv(SegmentationModel):
    """``depth`` Conv-BN-ReLU layers of ``width`` channels at full resolution, then a 1x1 classifier.

    With no downsampling its receptive field is ``depth * (kernel_size - 1) + 1`` pixels: it sees colour and
    texture, not layout, which is what it is for (a floor for the UNets).

    Shape:
        input (N, in_channels, H, W) -> logits (N, num_classes, H, W)
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 32,
        depth: int = 4,
        kernel_size: int = 3,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers = [conv_bn_relu(in_channels if i == 0 else width, width, kernel_size, batch_norm) for i in range(depth)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width if depth else in_channels, num_classes, kernel_size=1)

    def forward(self, x):
        return self.classifier(self.features(x))
