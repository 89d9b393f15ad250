"""Post-processing settings of trained watershed checkpoints, chosen on val without retraining
(``tools/tune_postprocess.py``).

The network runs once per image of the split and checkpoint; every combination of a grid of post-processing
values (the ``watershed.*`` settings of the watershed and ``eval.mask_threshold``) is then scored with the same
COCO evaluation a run uses, and the settings are compared as a sweep's are (``tasks.compare``): mean ± standard
deviation over the checkpoints (seeds), the best mean per column in bold. Choose on val; test is for reporting.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from seg_ext.config import merge_config
from seg_ext.errors import ConfigError, SegExtError
from seg_ext.inference import Predictor
from seg_ext.methods import PostProcessing, build_method
from seg_ext.tasks.compare import RunRecord, write_comparison
from seg_ext.tasks.instance import coco_evaluator, coco_split, instance_data
from seg_ext.tasks.sweep import parse_grid

logger = logging.getLogger(__name__)

POST_KEYS = (*(f"watershed.{key}" for key in PostProcessing.watershed_keys()), "eval.mask_threshold")
METRICS = ("segm/AP", "segm/AP50", "segm/AP75", "bbox/AP")


def settings_of(grid_items: Sequence[str]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, each as ``{key: value}``.

    Raises:
        ConfigError: a malformed item, or a key that is not a post-processing setting.
    """
    grid = parse_grid(grid_items)
    if not grid:
        raise ConfigError("give at least one --grid item, e.g. watershed.split_dynamic=0,3.5")
    for key in grid:
        if key not in POST_KEYS:
            raise ConfigError(f"grid key '{key}' is not a post-processing setting; expected one of: {', '.join(POST_KEYS)} "
                              "(the rest changes the network: sweep it with tools/sweep.py)")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _nested(setting: dict[str, Any]) -> dict[str, Any]:
    """``{"watershed.split_dynamic": 3.5}`` as the config's nested blocks."""
    out: dict[str, Any] = {}
    for key, value in setting.items():
        block, name = key.split(".")
        out.setdefault(block, {})[name] = value
    return out


def tune_postprocess(checkpoints: Sequence[str | Path], grid_items: Sequence[str], output: str | Path,
                     split: str = "val", data_root: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Score every grid setting on ``split`` for every checkpoint; write the comparison to ``output`` (markdown,
    a bar chart and the numbers as JSON beside it) and return the numbers.

    Raises:
        ConfigError: a bad grid; SegExtError: a checkpoint that is not a watershed one, or data that is missing.
    """
    settings = settings_of(grid_items)
    records = []
    for checkpoint in checkpoints:
        predictor = Predictor.from_checkpoint(checkpoint, device)
        if predictor.task != "instance" or predictor.method.name != "watershed":
            raise SegExtError(f"{checkpoint} is a {predictor.method.name if predictor.method else 'semantic'} checkpoint; "
                              "expected a watershed one (the other models' post-processing is part of the network)")
        cfg = predictor.cfg
        if data_root is not None:
            cfg = merge_config(cfg, {"data": {"root": str(data_root)}}, source="--data-root")
        paths, root, _ = instance_data(cfg, Path(checkpoint).parent)  # the run's COCO conversion, reused
        if paths.get(split) is None:
            raise SegExtError(f"the data of {checkpoint} has no {split} split")
        dataset = coco_split(cfg, paths[split], root, train=False)
        logger.info("%s: the network on %d %s images", checkpoint, len(dataset), split)
        maps = []
        for i in range(len(dataset)):
            image = dataset.load_image(i)
            maps.append((predictor.forward([predictor.prepare(image)]), image.shape[:2], {"image_id": dataset.ids[i]}))
        for setting in settings:
            changed = merge_config(cfg, _nested(setting), source="--grid")
            method = build_method(changed, torch.device("cpu"))
            evaluator = coco_evaluator(dataset, changed)
            for outputs, size, target in maps:
                evaluator.process([method.postprocess(outputs, 0, size)], [target])
            metrics = evaluator.evaluate()
            logger.info("%s  %s: segm AP %.2f", checkpoint, " ".join(f"{k}={v}" for k, v in setting.items()), metrics["segm/AP"])
            records.append(RunRecord(Path(checkpoint), {**setting, "train.seed": cfg["train"]["seed"]}, {split: metrics}, []))
    return write_comparison(records, output, title=f"Post-processing settings on {split}", metrics=METRICS,
                            what=f"COCO AP on {split} of each checkpoint post-processed with the setting")
