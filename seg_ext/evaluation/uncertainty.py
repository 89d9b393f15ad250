"""How unsure a model is of an image: the images worth labelling next come first (``tools/predict.py --rank``).

* semantic: the mean pixel entropy of the class probabilities, divided by log(classes) (0: every pixel certain,
  1: every pixel uniform), and the share of pixels whose two likeliest classes are within ``LOW_MARGIN`` of each
  other. The entropy orders the images.
* instances: the detections whose score lies within ``NEAR_SCORE`` of the score threshold (kept or not: either
  way a person has to decide them), and, where the method gives mask probabilities (Mask R-CNN), the kept masks
  whose mean probability over their own pixels is under ``SOFT_MASK``. They order the images, then the mean
  distance of the kept scores from 1 (an image of confident detections last).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

LOW_MARGIN = 0.2
NEAR_SCORE = 0.15
SOFT_MASK = 0.75


def semantic_uncertainty(probs: torch.Tensor) -> dict[str, Any]:
    """One image's uncertainty from its class probabilities (C, H, W)."""
    p = probs.detach().float().cpu().clamp_min(1e-8)
    classes = p.shape[0]
    entropy = float((-(p * p.log()).sum(0)).mean()) / math.log(classes) if classes > 1 else 0.0
    top = p.topk(min(2, classes), dim=0).values
    low = float(((top[0] - top[1]) < LOW_MARGIN).float().mean()) if classes > 1 else 0.0
    return {"uncertainty": round(entropy, 5), "mean_entropy": round(entropy, 5), "low_margin_share": round(low, 5),
            "reasons": f"mean pixel entropy {entropy:.3f} (0 certain, 1 uniform); {100 * low:.1f}% of pixels with "
                       f"their two likeliest classes within {LOW_MARGIN}"}


def instance_uncertainty(raw: dict[str, Any], score_threshold: float, mask_threshold: float = 0.5) -> dict[str, Any]:
    """One image's uncertainty from its detections (``Method.postprocess``: ``scores`` of every detection,
    ``masks`` probabilities (N, 1, H, W) or 0/1 masks)."""
    scores = raw["scores"].detach().float().cpu().numpy()
    near = int((np.abs(scores - score_threshold) < NEAR_SCORE).sum())
    kept = np.flatnonzero(scores >= score_threshold)
    masks = raw["masks"].detach()
    soft, confidence = None, []
    if masks.is_floating_point():  # probabilities: how sure each kept mask is of its own pixels
        for k in kept:
            m = masks[k].float().reshape(masks.shape[-2:])
            inside = m > mask_threshold
            confidence.append(float(m[inside].mean()) if bool(inside.any()) else 0.0)
        soft = int(sum(c < SOFT_MASK for c in confidence))
    distance = float(np.mean(1 - scores[kept])) if len(kept) else 0.0
    count = near + (soft or 0)
    reasons = [f"{near} detection(s) with a score within {NEAR_SCORE} of the threshold {score_threshold:g}"]
    if soft is not None:
        reasons.append(f"{soft} of {len(kept)} kept mask(s) with a mean probability under {SOFT_MASK}")
    reasons.append(f"kept scores {distance:.3f} from 1 on average" if len(kept) else "no detection kept")
    return {"uncertainty": round(count + distance, 5), "near_threshold": near,
            **({"soft_masks": soft} if soft is not None else {}), "reasons": "; ".join(reasons)}
