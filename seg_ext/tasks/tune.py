"""Post-processing settings of trained checkpoints, chosen on val without retraining
(``tools/tune_postprocess.py``), for methods whose post-processing has settings
(``Method.postprocess_keys``: the watershed's ``watershed.*`` settings and ``eval.mask_threshold``).

Each checkpoint's run is rebuilt through the one build path (``tasks.run.build_run``, its data from the run
folder), the network runs once over the split, and every combination of a grid of post-processing values is
then scored by the method's evaluators, as the run's own evaluation scores it. The settings are compared as a
sweep's are (``tasks.compare``): mean ± standard deviation over the checkpoints (seeds), the best mean per column
in bold. Choose on val; test is for reporting.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from seg_ext.config import merge_config
from seg_ext.errors import ConfigError, SegExtError
from seg_ext.evaluation import evaluator_classes
from seg_ext.methods import METHODS, build_method, check_config
from seg_ext.methods.checkpoints import load_weights, open_checkpoint
from seg_ext.tasks.compare import RunRecord, write_comparison
from seg_ext.tasks.run import build_run
from seg_ext.tasks.sweep import parse_grid

logger = logging.getLogger(__name__)


def tunable_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if cls.postprocess_keys()]


def settings_of(grid_items: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, each as ``{key: value}``.

    Raises:
        ConfigError: a malformed item, or a key that is not one of ``keys`` (the post-processing settings).
    """
    grid = parse_grid(grid_items)
    if not grid:
        raise ConfigError("give at least one --grid item: a post-processing key and its values, e.g. eval.mask_threshold=0.3,0.5")
    for key in grid:
        if key not in keys:
            raise ConfigError(f"grid key '{key}' is not a post-processing setting; expected one of: {', '.join(keys)} "
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
        ConfigError: a bad grid; SegExtError: a checkpoint of a method without post-processing settings, or data
            that is missing.
    """
    records, metrics_shown = [], None
    settings: list[dict[str, Any]] | None = None
    for checkpoint in checkpoints:
        ckpt = open_checkpoint(checkpoint)
        keys = ckpt.method.postprocess_keys()
        if not keys:
            raise SegExtError(f"{checkpoint} is a {ckpt.method.name} checkpoint; expected one of a method whose "
                              f"post-processing has settings ({', '.join(tunable_methods())}): the others' is part of "
                              "the network")
        settings = settings or settings_of(grid_items, keys)
        cfg = ckpt.cfg if device == "auto" else check_config(merge_config(ckpt.cfg, {"train": {"device": device}}, "--device"))
        if data_root is not None:
            cfg = check_config(merge_config(cfg, {"data": {"root": str(data_root)}}, source="--data-root"))
        run = build_run(cfg, Path(checkpoint).parent, files=False)  # the run's data (its COCO conversion, reused)
        if run.datasets.get(split) is None or split not in run.loaders:
            raise SegExtError(f"the data of {checkpoint} has no {split} split")
        load_weights(run.model, ckpt.content["model"], ckpt.path)
        model = run.model.eval()
        logger.info("%s: the network on %d %s images", checkpoint, len(run.datasets[split]), split)
        batches = []
        with torch.no_grad():
            for images, targets in run.loaders[split]:
                with run.precision.autocast():
                    batches.append((run.method.forward(model, images), targets))
        run.close()  # the network's outputs are kept; the loader's workers are not needed for the settings
        for setting in settings:
            method = build_method(check_config(merge_config(cfg, _nested(setting), source="--grid")), run.device)
            evaluators = method.evaluators(run.datasets[split])
            for outputs, targets in batches:
                detections = [method.postprocess(outputs, i, tuple(t["orig_size"])) for i, t in enumerate(targets)]
                for ev in evaluators:
                    ev.process(detections, targets)
            metrics: dict[str, float] = {}
            for ev in evaluators:
                metrics.update(ev.evaluate())
            metrics_shown = metrics_shown or [k for cls in evaluator_classes(method.task) for k in cls.summary]
            logger.info("%s  %s: %s", checkpoint, " ".join(f"{k}={v}" for k, v in setting.items()),
                        "  ".join(f"{k} {metrics[k]:.2f}" for k in metrics_shown[:1]))
            records.append(RunRecord(Path(checkpoint), {**setting, "train.seed": cfg["train"]["seed"]}, {split: metrics}, []))
    return write_comparison(records, output, title=f"Post-processing settings on {split}", metrics=metrics_shown,
                            what=f"the metrics on {split} of each checkpoint post-processed with the setting")
