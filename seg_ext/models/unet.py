"""A hand-written UNet (Ronneberger et al., 2015) in the shape of milesial/Pytorch-UNet's parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from seg_ext.models.base import SegmentationModel


class DoubleConv(nn.Module):
    """(3x3 convolution -> [batch norm] -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max pooling, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    """2x2 transposed convolution halving the channels, concatenation with the skip, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        # odd input sizes: pad the upsampled map to the skip's size (always while exporting, so an ONNX export
        # keeps the padding for every input size instead of the one it was traced at)
        if torch.compiler.is_exporting() or dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(SegmentationModel):
    """Encoder of ``depth`` Down steps, a mirrored decoder of Up steps with skip connections, 1x1 head.

    Channel widths are ``base_width * 2**level``. Any input size works (odd sizes are padded in ``Up``).

    Shape:
        input (N, in_channels, H, W) -> logits (N, num_classes, H, W)
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_width: int = 32,
        depth: int = 4,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("UNet depth must be at least 1")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0], batch_norm)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], batch_norm) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], batch_norm) for i in reversed(range(depth)))
        self.out_channels = widths[0]
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output before the head. Shape: (N, in_channels, H, W) -> (N, base_width, H, W)."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
