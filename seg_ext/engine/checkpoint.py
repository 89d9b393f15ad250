"""Checkpoint files: what a checkpoint holds, written atomically, read without running code.

A checkpoint is a dict of tensors and plain data (str, int, float, bool, None, lists, tuples, dicts): the model,
optimiser, schedule and gradient-scaler states, the loop's progress (``state``), each hook's own state
(``hooks``), the random states (``rng``; NumPy's as a tensor and plain numbers) and what the run adds (``meta``:
config, class names, task, ...). So it is read with ``torch.load(weights_only=True)``, which refuses any other
Python object instead of running it: a crafted file cannot run code when a tool opens it.

A model folder (``tools/export.py --format folder``: ``model.safetensors`` and ``config.json``, the layout models
are shared in) reads back as the checkpoint it was written from, without its training state
(:func:`load_model_folder`); neither file can carry code.

Checkpoints written before this layout (version 1, with NumPy objects inside) are refused with one sentence that
names ``tools/upgrade_checkpoint.py``, the explicit, one-time conversion for a file the user trusts
(:func:`upgrade_checkpoint_file`).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg_ext.data.files import read_json
from seg_ext.errors import SegExtError, user_message
from seg_ext.io import atomic_write

CHECKPOINT_VERSION = 2
MODEL_FOLDER = "seg_ext model folder"  # config.json's "format"
MODEL_FOLDER_VERSION = 1  # its "format_version": what this code reads
#: what a model folder leaves out of a checkpoint: the training state, needed only to resume
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "hooks", "rng", "rng_ranks")  # (rng_ranks: every torchrun process's)
logger = logging.getLogger(__name__)


class UnsafeCheckpointError(SegExtError):
    """A checkpoint holds Python objects that only an unsafe load (one that may run code) could read."""


def previous_path(path: str | Path) -> Path:
    """Where the previous version of a rotated checkpoint is kept: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python numbers and tensors, and paths as strings: what a
    ``weights_only`` load reads back."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


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
    except UnsafeCheckpointError:
        raise  # never fall back past a file that needs trusting: the user decides
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
    """Read a checkpoint written by the engine, safely (``weights_only``: nothing in the file can run code).

    Raises:
        UnsafeCheckpointError: the file holds other Python objects (an old or a crafted file).
        SegExtError: the file is missing, unreadable or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise SegExtError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise SegExtError(f"cannot read checkpoint {path} (UnpicklingError); expected a .pt written by seg_ext") from None
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds Python objects that only an unsafe load could read, and an unsafe load can run "
            "any code the file carries, so seg_ext refuses it; if it is a checkpoint written by seg_ext before 0.2 from "
            f"a source you trust, convert it once with: python tools/upgrade_checkpoint.py {path}") from None
    except Exception as exc:
        raise SegExtError(f"cannot read checkpoint {path} ({exc.__class__.__name__}); expected a .pt written by seg_ext") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "version" not in ckpt:
        raise SegExtError(f"checkpoint {path} is not a seg_ext checkpoint; expected a last.pt or best.pt of a run")
    return ckpt


def load_model_folder(folder: str | Path) -> dict[str, Any]:
    """A model folder read as the checkpoint it was written from: the weights from ``model.safetensors``, the rest
    (config, class names, task, the checkpoint's other facts) from ``config.json``; no training state.

    Raises:
        SegExtError: a missing or unreadable file, a folder of another kind or of a newer format, in one sentence.
    """
    from seg_ext import __version__

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise SegExtError(f"model folder {folder} has no {name}; expected a folder written by tools/export.py "
                              "--format folder")
    info = read_json(folder / "config.json", "model folder config", "the JSON tools/export.py --format folder writes",
                     dict)
    if info.get("format") != MODEL_FOLDER or not isinstance(info.get("checkpoint"), dict):
        raise SegExtError(f"{folder / 'config.json'} is not a seg_ext model folder's config; expected \"format\": "
                          f"\"{MODEL_FOLDER}\" and the checkpoint's facts")
    version = info.get("format_version")
    if not isinstance(version, int) or version > MODEL_FOLDER_VERSION:
        raise SegExtError(f"model folder {folder} is of format version {version!r}, which this seg_ext ({__version__}) "
                          f"cannot read; expected version {MODEL_FOLDER_VERSION} or older (a newer seg_ext wrote it)")
    if info.get("package_version") != __version__:
        logger.warning("model folder %s was written by seg_ext %s; this is %s", folder, info.get("package_version"),
                       __version__)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(folder / "model.safetensors"), device="cpu")
    except (OSError, SafetensorError, ValueError) as exc:
        raise SegExtError(f"cannot read {folder / 'model.safetensors'} ({exc.__class__.__name__}); expected the "
                          "weights tools/export.py --format folder writes") from None
    return {**info["checkpoint"], "model": weights}


# ---- random states as plain data ------------------------------------------------------------------------


def random_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states (and ``generator``'s), as plain data; with CUDA in use,
    the current CUDA device's generator too (dropout, random ops on the GPU)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "loader": None if generator is None else generator.get_state(),
    }


def set_random_state(rng: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`random_state` returned."""
    random.setstate(_python_state(rng["python"]))
    n = rng["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.int64).astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():  # a CUDA run's (a run resumed on the CPU has none)
        torch.cuda.set_rng_state(rng["cuda"].cpu())
    if rng.get("loader") is not None and generator is not None:
        generator.set_state(rng["loader"])


def _python_state(state: Any) -> tuple:
    version, internal, gauss = state
    return int(version), tuple(int(v) for v in internal), gauss


# ---- the one-time conversion of version-1 checkpoints -----------------------------------------------------


def upgrade_checkpoint(old: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (read by an unsafe load) in this version's layout: NumPy random states as plain
    data, the best value and the history as the validation and history hooks' state, the task named."""
    new = {k: v for k, v in old.items() if k not in ("rng", "rng_ranks", "state")}
    state = dict(old.get("state") or {})
    hooks = dict(old.get("hooks") or {})
    hooks.setdefault("Validation", {"best_value": state.pop("best_value", None), "best_epoch": state.pop("best_epoch", None)})
    hooks.setdefault("History", {"records": state.pop("history", [])})
    new["state"], new["hooks"] = state, hooks
    for key in ("rng", "rng_ranks"):
        if key in old:
            new[key] = _upgrade_rng(old[key]) if key == "rng" else [_upgrade_rng(r) for r in old[key]]
    new.setdefault("task", "semantic")  # checkpoints from before the task was recorded were semantic ones
    new["version"] = CHECKPOINT_VERSION
    return plain(new)


def _upgrade_rng(rng: Any) -> Any:
    if not isinstance(rng, dict) or not isinstance(rng.get("numpy"), tuple):
        return rng
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    return {**rng, "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
                             "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def upgrade_checkpoint_file(path: str | Path, output: str | Path) -> dict[str, Any]:
    """Read ``path`` with an unsafe load (the caller trusts the file), convert it, write it safely to ``output``
    and check that it now reads with the safe load. Returns the converted checkpoint.

    Raises:
        SegExtError: the file is missing or not a seg_ext checkpoint.
    """
    path, output = Path(path), Path(output)
    if not path.is_file():
        raise SegExtError(f"checkpoint {path} does not exist")
    try:
        old = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SegExtError(f"cannot read checkpoint {path} ({exc.__class__.__name__}); expected a .pt written by seg_ext") from None
    if not isinstance(old, dict) or "model" not in old:
        raise SegExtError(f"checkpoint {path} is not a seg_ext checkpoint; expected a last.pt or best.pt of a run")
    new = upgrade_checkpoint(old)
    atomic_save(new, output)
    load_checkpoint(output)  # refused if anything unsafe is left
    return new


def checkpoint_progress(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says of its run's training, as ``Trainer.progress`` gives it: epochs done, training
    seconds, the best validation value and epoch, every epoch's record."""
    state, hooks = ckpt.get("state", {}), ckpt.get("hooks", {})
    validation, history = hooks.get("Validation", {}), hooks.get("History", {})
    return {"epoch": state.get("epoch"), "iteration": state.get("iteration"), "train_seconds": state.get("train_seconds", 0.0),
            "best_value": validation.get("best_value"), "best_epoch": validation.get("best_epoch"),
            "history": list(history.get("records", []))}
