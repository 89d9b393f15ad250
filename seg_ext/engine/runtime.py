"""Where a run computes and how it is seeded."""

from __future__ import annotations

import random

import numpy as np
import torch

from seg_ext.errors import SegExtError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; otherwise the named device, checked to exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegExtError(f"device {name!r} was asked for but CUDA is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's operators; 0 keeps torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)
