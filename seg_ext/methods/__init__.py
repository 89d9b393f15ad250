"""Instance-segmentation methods: one module per method, all following ``methods.base.InstanceMethod``.

A new method is a class in its own module plus an entry in :data:`METHODS`, which turns its config blocks
into the method's arguments.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from seg_ext.errors import ConfigError
from seg_ext.methods.base import InstanceMethod
from seg_ext.methods.maskrcnn import MaskRCNNMethod
from seg_ext.methods.watershed import PostProcessing, WatershedMethod


def _watershed(cfg: dict[str, Any], device: torch.device) -> WatershedMethod:
    ws = cfg["watershed"]
    post = PostProcessing(**{key: ws[key] for key in PostProcessing.watershed_keys()},
                          mask_threshold=cfg["eval"]["mask_threshold"])
    return WatershedMethod(device, ws["input_size"], ws["levels"], ws["level_weights"], ws["area_weighting"],
                           ws["foreground_loss_weight"], ws["energy_loss_weight"], post)


# method name -> its builder from the config and the device
METHODS: dict[str, Callable[[dict[str, Any], torch.device], InstanceMethod]] = {
    "maskrcnn": lambda cfg, device: MaskRCNNMethod(device),
    "watershed": _watershed,
}
IMAGE_SIZE_KEYS = {"watershed": "watershed.input_size"}  # where a method's model image_size comes from


def build_method(cfg: dict[str, Any], device: torch.device) -> InstanceMethod:
    """The method object named by ``cfg['method']``."""
    if cfg["method"] not in METHODS:
        raise ConfigError(f"config key 'method' is {cfg['method']!r}; expected one of: {', '.join(METHODS)}")
    return METHODS[cfg["method"]](cfg, device)


__all__ = ["IMAGE_SIZE_KEYS", "METHODS", "InstanceMethod", "MaskRCNNMethod", "PostProcessing", "WatershedMethod", "build_method"]
