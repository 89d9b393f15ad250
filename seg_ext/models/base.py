"""What every model of the project declares about itself (capability flags with their defaults)."""

from __future__ import annotations

from torch import nn


class SegmentationModel(nn.Module):
    """Base class of the hand-written models.

    Attributes:
        fitted_by_counting: trained by counting labels (``count``), not by gradient descent.
        bf16_safe: bf16 autocast keeps its gradients close to fp32's (``benchmarks/cpu_throughput.py`` measures
            it); the engine keeps a model that holds any module declaring False in fp32 under ``train.amp=auto``.
        size_multiple: the multiple input height and width must be of (1: any size; None: only the size it was
            built for). A model whose multiple depends on how it is built overrides it with a property.
        cuda_amp, cuda_channels_last: what ``train.amp`` / ``train.channels_last`` ``auto`` pick on CUDA: the
            fastest numerically safe setting ``benchmarks/run.py --only cuda_throughput`` measured for the model
            (fp16 autocast with channels_last for most convolutional networks; docs/gpu.md).
    """

    fitted_by_counting: bool = False
    bf16_safe: bool = True
    size_multiple: int | None = 1
    cuda_amp: str = "fp16"
    cuda_channels_last: bool = True
