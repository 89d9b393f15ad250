"""Pieces both tasks use: the run folder check, and the facts about a run that metrics.json records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from seg_ext.engine import Precision
from seg_ext.errors import SegExtError


def prepare_output_dir(output_dir: Path, resume: bool) -> Path:
    """Check the run folder: a new run must not overwrite an earlier one; a resumed run must have one."""
    last = output_dir / "last.pt"
    if resume and not last.is_file():
        raise SegExtError(f"cannot resume: {last} does not exist; expected the folder of an earlier run")
    if not resume and last.is_file():
        raise SegExtError(
            f"output folder {output_dir} already holds a run ({last}); pass --resume to continue it or choose "
            "another --output-dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def run_facts(
    cfg: dict[str, Any], model: nn.Module, precision: Precision, splits: dict[str, int], state: dict[str, Any], epochs: Any
) -> dict[str, Any]:
    """What metrics.json says about the run besides the metrics: training progress (from the engine's
    ``TrainState`` or a checkpoint's ``state``), the model and where it ran."""
    return {
        "best_epoch": state.get("best_epoch", state.get("epoch")),
        "epochs": epochs,
        "best_metric": cfg["train"]["best_metric"],
        "train_seconds": round(float(state.get("train_seconds", 0.0)), 1),
        "model": cfg["model"]["name"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(precision.device),
        "precision": precision.describe(),
        "splits": splits,
    }
