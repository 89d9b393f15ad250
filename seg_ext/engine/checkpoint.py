"""Checkpoint files: written atomically, read with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seg_ext.errors import SegExtError
from seg_ext.io import atomic_write

CHECKPOINT_VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, synced, then renamed: a crash never leaves half a file."""
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True, sync=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the engine.

    Raises:
        SegExtError: the file is missing or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise SegExtError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SegExtError(f"cannot read checkpoint {path} ({exc.__class__.__name__}); expected a .pt written by seg_ext") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "version" not in ckpt:
        raise SegExtError(f"checkpoint {path} is not a seg_ext checkpoint; expected a last.pt or best.pt of a run")
    return ckpt
