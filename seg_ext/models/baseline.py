"""The per-pixel class-frequency baseline."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from seg_ext.models.base import SegmentationModel


class PixelFrequencyBaseline(SegmentationModel):
    """At each pixel, the class frequencies of the training set (images brought to a fixed size).

    Its prediction ignores the image: every image gets the same per-pixel class distribution, returned as
    log-probabilities (so ``softmax`` of the output gives the frequencies back). It is fitted by counting,
    not by gradient descent: call ``fit`` with batches of training masks at ``image_size``.

    Args:
        num_classes: number of classes C.
        image_size: (H, W) of the frequency map; inputs of another size get it resized bilinearly.
        pseudo_count: added to every count, so no class has probability exactly 0.
    """

    fitted_by_counting = True
    size_multiple = None  # per-pixel frequencies at the training size; other sizes are interpolated, not learnt

    def __init__(self, num_classes: int, image_size: tuple[int, int] = (128, 128), pseudo_count: float = 1e-3) -> None:
        super().__init__()
        h, w = (int(v) for v in image_size)
        self.num_classes = num_classes
        self.pseudo_count = pseudo_count
        self.register_buffer("counts", torch.zeros(num_classes, h, w, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, masks: Iterable[torch.Tensor], ignore_index: int = 255) -> "PixelFrequencyBaseline":
        """Count class labels per pixel over an iterable of mask batches.

        Shape:
            each item of masks: (N, H, W) class ids at the model's ``image_size``.
        """
        self.counts.zero_()
        for batch in masks:
            self.count(batch, ignore_index)
        return self

    @torch.no_grad()
    def count(self, masks: torch.Tensor, ignore_index: int = 255) -> None:
        """Add one batch of masks to the counts (a training step of the counting trainer).

        Shape:
            masks: (N, H, W) class ids at the model's ``image_size``.
        """
        batch = masks.to(self.counts.device).long()
        if batch.shape[-2:] != self.counts.shape[-2:]:
            raise ValueError(f"masks of size {tuple(batch.shape[-2:])}, expected {tuple(self.counts.shape[-2:])}")
        valid = batch != ignore_index
        onehot = F.one_hot(torch.where(valid, batch, 0), self.num_classes).permute(0, 3, 1, 2)
        self.counts += (onehot * valid.unsqueeze(1)).sum(0)

    def frequencies(self) -> torch.Tensor:
        """Per-pixel class frequencies. Shape: (C, H, W)."""
        counts = self.counts + self.pseudo_count
        return counts / counts.sum(0, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-frequencies for each image of the batch.

        Shape:
            x: (N, 3, H, W) -> (N, C, H, W)
        """
        logp = self.frequencies().log().float().unsqueeze(0)
        if logp.shape[-2:] != x.shape[-2:]:
            logp = F.interpolate(logp, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logp.expand(x.shape[0], -1, -1, -1).to(x.device)
