"""Optimiser and learning-rate schedule from plain settings."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from seg_ext.errors import SegExtError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "none")


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD with momentum over the parameters that require gradients."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer is {name!r}; expected one of: {', '.join(OPTIMIZERS)}")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise SegExtError("the model has no trainable parameters; check model.freeze_encoder and the model name")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def lr_factor_fn(
    scheduler: str, epochs: int, iters_per_epoch: int, step_size: int = 10, gamma: float = 0.1, warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> Callable[[int], float]:
    """Learning-rate factor for each iteration: a linear warmup times a cosine, step or constant decay.

    ``warmup_iters`` < 0 warms up over the first epoch (at most 1000 iterations), as torchvision's detection
    references do.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler is {scheduler!r}; expected one of: {', '.join(SCHEDULERS)}")
    total = max(max(epochs, 1) * iters_per_epoch, 1)
    warmup = min(1000, max(iters_per_epoch - 1, 1)) if warmup_iters < 0 else warmup_iters

    def factor(it: int) -> float:
        if scheduler == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        elif scheduler == "step":
            decay = gamma ** ((it // max(iters_per_epoch, 1)) // step_size)
        else:
            decay = 1.0
        if it < warmup:
            decay *= warmup_factor + (1 - warmup_factor) * it / warmup
        return decay

    return factor
