"""Images at their true size: the training scale (``data.resize``/``data.scale``) and prediction at that scale,
whole or by sliding window (``eval.mode``).

* ``data.resize: squash`` (the default of the configs made before) resizes every image to the network's size,
  whatever its aspect ratio; ``scale`` keeps the aspect ratio and scales by ``data.scale``: a factor (``0.5``), a
  short side (``short:384``) or a long side (``long:512``). Training then takes random crops of
  ``data.crop_size`` (padded with the ignore label, or with no instance, where the scaled image is smaller).
* ``eval.mode``: ``resize`` (squash to the network's size, then back), ``whole`` (the scaled image, padded to the
  model's size multiple, in one pass: the networks are fully convolutional) or ``slide`` (windows of
  ``eval.window`` every ``eval.stride`` pixels; overlapping probabilities averaged with weights that fall towards
  each window's edges, as MONAI's Gaussian mode does, so a window's border, where it sees least context, counts
  least).

Memory of ``slide``: the accumulated maps at the scaled size ((C + 1) float32 per pixel: C output channels and the
weight sum), the scaled input (3 float32 per pixel) and one batch of windows with the network's activations,
whatever the image's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from seg_ext.config import pixels
from seg_ext.data.scale import Scale, scale_image
from seg_ext.data.transforms import normalize_tensor
from seg_ext.errors import ConfigError

RESIZE_POLICIES = ("squash", "scale")
EVAL_MODES = ("resize", "whole", "slide")


@dataclass(frozen=True)
class DensePlan:
    """Prediction at the training scale: ``mode`` whole or slide, the ``scale``, the ``window`` and ``stride``
    (slide), the model's size ``multiple`` and how many windows go through the network at once."""

    mode: str
    scale: Scale
    window: tuple[int, int]
    stride: tuple[int, int]
    multiple: int = 1
    batch: int = 4


def resolve_eval_mode(cfg: dict[str, Any]) -> str:
    """``eval.mode`` as configured, or by default ``resize`` for ``data.resize: squash`` and ``whole`` for ``scale``."""
    mode = cfg["eval"].get("mode")
    if mode is None:
        return "whole" if cfg["data"].get("resize", "squash") == "scale" else "resize"
    return mode


def validate_resize(cfg: dict[str, Any], network_size: tuple[int, int]) -> None:
    """Check ``data.resize``, ``data.scale``, ``data.crop_size`` and ``eval.mode/window/stride`` (one sentence each)."""
    data = cfg["data"]
    resize = data.get("resize", "squash")
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"config key 'data.resize' is {resize!r}; expected one of: {', '.join(RESIZE_POLICIES)}")
    Scale.parse(data.get("scale", 1.0))
    crop_size(cfg, network_size)
    mode = resolve_eval_mode(cfg)
    if mode not in EVAL_MODES:
        raise ConfigError(f"config key 'eval.mode' is {mode!r}; expected one of: {', '.join(EVAL_MODES)}")
    if mode != "resize" and resize != "scale":
        raise ConfigError(f"config key 'eval.mode' is {mode!r}, but data.resize is {resize!r}: {mode} prediction runs "
                          "at the training scale, which needs data.resize: scale (or use eval.mode: resize)")
    if mode == "resize" and resize == "scale":
        raise ConfigError("config key 'eval.mode' is 'resize', but data.resize is 'scale': the network learnt the "
                          "images at data.scale, not squashed; expected eval.mode whole or slide")
    window_and_stride(cfg, network_size)


def ignored_keys(cfg: dict[str, Any]) -> dict[str, str]:
    """The keys that ``data.resize`` and ``eval.mode`` as configured leave unused, each with why (a clause)."""
    out: dict[str, str] = {}
    resize = cfg["data"].get("resize", "squash")
    if resize == "squash":
        for key in ("data.scale", "data.crop_size"):
            out[key] = "data.resize is 'squash', which resizes every image to the network's size"
    mode = resolve_eval_mode(cfg)
    if mode != "slide":
        for key in ("eval.window", "eval.stride", "eval.window_batch"):
            out[key] = f"eval.mode is {mode!r}; only slide prediction uses windows"
    return out


def check_crop_fits(crop: tuple[int, int], scale: Scale, sizes: Any, what: str) -> None:
    """Refuse a training crop larger than every scaled image allows (each crop would be mostly padding):
    ``sizes`` are the training images' (H, W)."""
    largest = [0, 0]
    for h, w in sizes:
        sh, sw = scale.size(h, w)
        largest = [max(largest[0], sh), max(largest[1], sw)]
    if largest[0] and (crop[0] > largest[0] or crop[1] > largest[1]):
        raise ConfigError(f"config key 'data.crop_size' is {list(crop)}, larger than {what} allows at data.scale {scale}: "
                          f"its largest scaled image is {largest[0]}x{largest[1]} (H x W); expected a crop at most that, "
                          "or a larger data.scale")


def crop_size(cfg: dict[str, Any], network_size: tuple[int, int]) -> tuple[int, int]:
    """``data.crop_size`` (null: the network's size, ``network_size``)."""
    value = cfg["data"].get("crop_size")
    return network_size if value is None else pixels(value, "data.crop_size")


def window_and_stride(cfg: dict[str, Any], network_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``eval.window`` (null: the training crop) and ``eval.stride`` (null: half the window), checked."""
    ev = cfg["eval"]
    window = pixels(ev["window"], "eval.window") if ev.get("window") is not None else crop_size(cfg, network_size)
    if ev.get("stride") is None:
        return window, (max(1, window[0] // 2), max(1, window[1] // 2))
    stride = pixels(ev["stride"], "eval.stride")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ConfigError(f"config key 'eval.stride' is {list(stride)}, larger than the window {list(window)}; "
                          "expected a stride at most the window, or pixels between windows go unpredicted")
    return window, stride


def dense_plan(cfg: dict[str, Any], network_size: tuple[int, int], multiple: int | None) -> DensePlan | None:
    """The plan of ``eval.mode`` whole or slide (None for resize), checked against the model's size ``multiple``
    (None: it predicts at its trained size only)."""
    mode = resolve_eval_mode(cfg)
    if mode == "resize":
        return None
    window, stride = window_and_stride(cfg, network_size)
    if multiple is None:  # a network of one input size (the baseline, a fixed-size ONNX export): windows of it
        if mode == "whole":
            raise ConfigError(f"config key 'eval.mode' is 'whole', but model {cfg['model'].get('name')} takes one input "
                              "size only; expected eval.mode slide (windows of that size)")
        multiple = 1
    if mode == "slide" and (window[0] % multiple or window[1] % multiple):
        raise ConfigError(f"config key 'eval.window' is {list(window)}; expected a multiple of {multiple}, the model's "
                          "size multiple")
    return DensePlan(mode, Scale.parse(cfg["data"].get("scale", 1.0)), window, stride, multiple,
                     int(cfg["eval"].get("window_batch") or 4))


def scaled_input(image: np.ndarray, scale: Scale) -> torch.Tensor:
    """The network's input at the training scale: an HxWx3 uint8 image scaled as training scales it
    (:func:`~seg_ext.data.scale.scale_image`) and normalised. Shape: (H, W, 3) -> (3, h, w) float32."""
    scaled = scale_image(image, scale.size(*image.shape[:2]))
    return normalize_tensor(torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1).float().div_(255))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where windows start along one axis: every ``stride``, the last one ending at the border (one window when
    the axis is not longer than it)."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def edge_weights(height: int, width: int) -> torch.Tensor:
    """A window's weights: a separable tent, 1 at the centre, falling linearly to 1/n at the edges (never 0, so
    an image border covered by one window still gets its prediction). Shape: (height, width)."""
    def tent(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32)
        return torch.minimum(x + 1, n - x) / math.ceil(n / 2)

    return tent(height)[:, None] * tent(width)[None, :]


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad (the normalised mean colour) a (N, 3, h, w) batch at the bottom and right to (height, width)."""
    h, w = x.shape[-2:]
    return x if (h, w) == (height, width) else F.pad(x, (0, width - w, 0, height - h))


def predict_dense(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, plan: DensePlan) -> torch.Tensor:
    """Dense outputs of one scaled, normalised image (3, h, w) -> (C, h, w) float32 on the CPU.

    ``fn`` maps a batch (N, 3, a, b) to per-pixel outputs (N, C, a, b) that may be averaged (probabilities, or
    quantities linear in them). ``whole``: the image padded to the size multiple (and, when smaller, to the
    window), one pass. ``slide``: windows,
    ``plan.batch`` at a time, averaged with :func:`edge_weights`; an image smaller than the window is padded to it.
    """
    h, w = image.shape[-2:]
    m = plan.multiple
    if plan.mode == "whole":  # padded to the size multiple, and an image smaller than the window up to it
        x = _pad_to(image[None], math.ceil(max(h, plan.window[0]) / m) * m, math.ceil(max(w, plan.window[1]) / m) * m)
        return fn(x)[0, :, :h, :w].float().cpu()
    wh, ww = plan.window
    ph, pw = max(h, wh), max(w, ww)
    padded = _pad_to(image[None], ph, pw)[0]
    boxes = [(y, x) for y in window_starts(ph, wh, plan.stride[0]) for x in window_starts(pw, ww, plan.stride[1])]
    weight = edge_weights(wh, ww)
    out: torch.Tensor | None = None
    total = torch.zeros(ph, pw)
    for i in range(0, len(boxes), plan.batch):
        chunk = boxes[i:i + plan.batch]
        batch = torch.stack([padded[:, y:y + wh, x:x + ww] for y, x in chunk])
        result = fn(batch).float().cpu()
        if out is None:
            out = torch.zeros(result.shape[1], ph, pw)
        for (y, x), r in zip(chunk, result):
            out[:, y:y + wh, x:x + ww] += r * weight
            total[y:y + wh, x:x + ww] += weight
    assert out is not None
    return out.div_(total)[:, :h, :w]


__all__ = ["DensePlan", "EVAL_MODES", "RESIZE_POLICIES", "crop_size", "dense_plan", "edge_weights", "ignored_keys",
           "check_crop_fits", "predict_dense", "resolve_eval_mode", "scaled_input", "validate_resize", "window_and_stride",
           "window_starts"]
