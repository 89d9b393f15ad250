"""Checkpoint files: written atomically, read with a clear error."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import torch

from seg_ext.errors import SegExtError, user_message
from seg_ext.io import atomic_write

CHECKPOINT_VERSION = 1
logger = logging.getLogger(__name__)


def previous_path(path: str | Path) -> Path:
    """Where the previous version of a rotated checkpoint is kept: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_save(obj: Any, path: str | Path, keep_previous: bool = False) -> None:
    """``torch.save`` into a temporary file beside ``path``, synced, then renamed: a crash never leaves half a file.

    ``keep_previous``: the file being replaced is first renamed to :func:`previous_path` (both renames are atomic;
    the new content is complete on disk before either), so a damaged newest file still leaves the one before.

    Raises:
        SegExtError: the file cannot be written (disk full, no permission); ``path`` keeps its earlier content.
    """
    path = Path(path)
    new = path.with_name(f".{path.name}.new")
    try:
        if keep_previous and path.is_file():
            atomic_write(new, lambda fh: torch.save(obj, fh), binary=True, sync=True)
            os.replace(path, previous_path(path))
            os.replace(new, path)
        else:
            atomic_write(path, lambda fh: torch.save(obj, fh), binary=True, sync=True)
    except OSError as exc:
        new.unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or exc.__class__.__name__)
        kept = f"the earlier {path.name} is intact" if path.is_file() else "no earlier checkpoint was written"
        raise SegExtError(f"cannot write checkpoint {path}: {reason}; {kept}. Free space (or fix the folder) and continue "
                          "with --resume") from None


def resume_checkpoint(output_dir: str | Path, continuing: bool = True) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a resumed run continues from, read: ``last.pt``, or, when it is missing, truncated or
    unreadable, ``last.prev.pt``. ``continuing``: the run goes on from it, so a damaged ``last.pt`` is named in
    one warning and moved aside to ``last.pt.damaged`` (the next rotation must not push the good previous file out).

    Raises:
        SegExtError: neither can be read.
    """
    last = Path(output_dir) / "last.pt"
    prev = previous_path(last)
    try:
        return last, load_checkpoint(last)
    except SegExtError as exc:
        if not prev.is_file():
            raise
        ckpt = load_checkpoint(prev)
        if continuing:
            kept = ""
            if last.exists():
                os.replace(last, last.with_name(last.name + ".damaged"))
                kept = f" ({last.name} kept as {last.name}.damaged)"
            logger.warning("%s; continuing from %s (epoch %s) instead%s", user_message(exc), prev,
                           ckpt.get("state", {}).get("epoch"), kept)
        return prev, ckpt


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
