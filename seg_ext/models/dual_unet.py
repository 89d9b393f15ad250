"""A UNet with two heads for the watershed method: foreground logits and energy-level logits."""

from __future__ import annotations

import torch
from torch import nn

from seg_ext.models.smp_unet import smp_unet
from seg_ext.models.unet import UNet
from seg_ext.models.base import SegmentationModel


class DualHeadUNet(SegmentationModel):
    """Shared UNet features, then a 1x1 foreground head (``num_classes``: the background and each object class;
    2 for one class: background / foreground) and a 1x1 energy head (``num_levels``).

    ``encoder``: ``None`` for the hand-written UNet (``base_width``, ``depth``, ``batch_norm``), or an smp encoder
    name such as ``resnet18`` (``encoder_weights`` as for ``smp_unet``); smp's decoder then ends in one 1x1
    convolution with C + K outputs, which is the two heads side by side.

    Shape:
        input (N, in_channels, H, W) -> {"foreground": (N, C, H, W), "energy": (N, K, H, W)}
    """

    # fastest on an H200 in fp32 with channels_last (657 images/s; fp16 with it 409, fp16 alone 523; docs/gpu.md)
    cuda_amp = "off"

    def __init__(
        self,
        num_levels: int = 16,
        in_channels: int = 3,
        encoder: str | None = None,
        base_width: int = 16,
        depth: int = 4,
        batch_norm: bool = True,
        encoder_weights: str | None = None,
        image_size: tuple[int, int] | None = None,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.num_levels, self.num_classes = num_levels, int(num_classes)
        if encoder is None:
            self.body = UNet(num_classes=1, in_channels=in_channels, base_width=base_width, depth=depth, batch_norm=batch_norm)
            del self.body.head
            self.foreground_head = nn.Conv2d(self.body.out_channels, self.num_classes, kernel_size=1)
            self.energy_head = nn.Conv2d(self.body.out_channels, num_levels, kernel_size=1)
            self.smp = None
        else:
            self.smp = smp_unet(self.num_classes + num_levels, encoder_name=encoder, encoder_weights=encoder_weights,
                                in_channels=in_channels, image_size=image_size)

    @property
    def size_multiple(self) -> int:
        """32 with an smp encoder (it halves the size five times); the hand-written UNet pads any size."""
        return 1 if self.smp is None else 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.smp is not None:
            out = self.smp(x)
            return {"foreground": out[:, :self.num_classes], "energy": out[:, self.num_classes:]}
        features = self.body.forward_features(x)
        return {"foreground": self.foreground_head(features), "energy": self.energy_head(features)}
