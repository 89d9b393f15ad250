"""Pretrained weights from explicit local files, with checks that name the file when it does not fit."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg_ext.errors import WeightsError

logger = logging.getLogger(__name__)

# sha256 of the official torchvision ImageNet ResNet files, to tell the user when theirs is one of them
KNOWN_FILES = {
    "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec": "torchvision resnet18-f37072fd.pth (IMAGENET1K_V1)",
    "5c106cde386e87d4033832f2996f5493238eda96ccf559d1d62760c4de0613f8": "legacy torchvision resnet18-5c106cde.pth",
}
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a state dict saved with ``torch.save`` (plain, or under a ``state_dict``/``model`` key).

    Raises:
        WeightsError: the file is missing, unreadable, or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; expected {what}")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"cannot read weights file {path} ({exc.__class__.__name__}); expected {what}") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors; expected {what}")
    known = KNOWN_FILES.get(sha256_of(path))
    if known:
        logger.info("weights file %s is the official %s", path, known)
    return data


def load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str, drop_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, naming the file and the first mismatch when it does not fit."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not (drop_prefixes and k.startswith(drop_prefixes))}
    # batch-norm counters: files from older torch or frozen batch norm lack them, or have them when we do not
    state = {k: v for k, v in state.items() if not (k.endswith("num_batches_tracked") and k not in own)}
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"missing key '{missing[0]}'" if missing
            else f"unexpected key '{unexpected[0]}'" if unexpected
            else f"key '{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        )
        raise WeightsError(f"weights file {path} does not fit ({detail}); expected {what}")
    module.load_state_dict(state, strict=True)
