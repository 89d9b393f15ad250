"""Semantic-segmentation metrics: confusion matrix, IoU, and per-class average precision over pixels.

Definitions (the reference assignment's, see REFERENCES.md):

* IoU from the confusion matrix of argmax labels: ``diag / (row sum + column sum - diag)``, the denominator
  floored at 1, so a class absent from both ground truth and predictions has IoU 0. ``mIoU`` is the plain mean
  over all classes, ``fwIoU`` the mean weighted by each class's share of ground-truth pixels.
* AP of class c: every non-ignored pixel of the whole split is a sample, positive when its label is c, scored by
  the softmax probability of c. All pixels are pooled and ranked; AP is the PASCAL VOC all-point interpolated
  area under the precision/recall curve (precision made monotone from the right). ``mAP`` is the plain mean over
  the classes that have positive pixels (AP of a class without any is undefined and reported as NaN).

To keep memory constant, scores are not stored: each pixel's score is binned into a fixed histogram per class
(positives and negatives apart), and AP is computed from the histograms, every bin one step of the curve.
Bins are laid on the logit of the float32 probability, ``log p - log(1 - p)``, over [-104, 17]: that range
holds every float32 probability the sort-based reference can tell apart (the smallest positive float32 is about
1e-45, the largest below 1 is 1 - 6e-8), so saturated scores keep their order and exact 0s and 1s stay tied, as
they are for the reference. 90% of the bins are spread evenly over [-20, 17], where nearly all scores fall, the
rest over the far tail of tiny probabilities. With the default 65536 bins per class AP agrees with the
sort-based value to a few hundredths of a point.

All values are percentages.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from seg_ext.evaluation.base import Evaluator


def average_precision_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """VOC all-point AP from score histograms (bins ordered by increasing score); NaN without positives.

    Shape:
        pos, neg: (B,) counts of positive and negative samples per score bin.
    """
    pos = np.asarray(pos, dtype=np.float64)[::-1]
    neg = np.asarray(neg, dtype=np.float64)[::-1]
    keep = (pos + neg) > 0
    tp = np.cumsum(pos)[keep]
    fp = np.cumsum(neg)[keep]
    if tp.size == 0 or tp[-1] == 0:
        return math.nan
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(recall, prepend=0.0)
    return float(np.sum(steps * precision))


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU (0-1) from a confusion matrix (rows ground truth, columns prediction)."""
    confusion = confusion.astype(np.float64)
    diag = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - diag
    return diag / np.maximum(union, 1.0)


class SemSegEvaluator(Evaluator):
    """Confusion matrix, IoU and per-class pixel AP over a whole split, in constant memory.

    Args:
        num_classes: number of classes C.
        ignore_index: target value of pixels that are not scored.
        class_names: names for the ``IoU/<name>`` and ``AP/<name>`` keys (default: class indices).
        num_bins: histogram bins per class for AP.
        logit_range: (low, dense_low, high) on the logit scale: the bins cover [low, high], 90% of them
            [dense_low, high]; scores beyond go to the end bins.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        num_bins: int = 65536,
        logit_range: tuple[float, float, float] = (-104.0, -20.0, 17.0),
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.num_bins = num_bins
        self.logit_range = tuple(float(v) for v in logit_range)
        if not self.logit_range[0] < self.logit_range[1] < self.logit_range[2] or num_bins < 20:
            raise ValueError("logit_range must be increasing (low, dense_low, high) and num_bins at least 20")
        self.reset()

    def reset(self) -> None:
        c, b = self.num_classes, self.num_bins
        self._confusion = torch.zeros(c * c, dtype=torch.int64)
        self._all_hist = torch.zeros(c * b, dtype=torch.int64)  # every pixel, per class score bin
        self._pos_hist = torch.zeros(c * b, dtype=torch.int64)  # pixels whose label is the class

    def score_bins(self, logits: torch.Tensor) -> torch.Tensor:
        """Histogram bin of each class's softmax probability, on the logit scale.

        Shape:
            logits: (N, C, H, W) -> (N, C, H, W) int64 bins in [0, num_bins)
        """
        prob = torch.softmax(logits.float(), dim=1)
        logit = torch.log(prob) - torch.log1p(-prob)  # p = 0 -> -inf, p = 1 -> +inf: the end bins
        low, mid, high = self.logit_range
        tail = self.num_bins // 10
        logit = logit.clamp_(low, high)
        position = torch.where(
            logit < mid,
            (logit - low) * (tail / (mid - low)),
            tail + (logit - mid) * ((self.num_bins - tail) / (high - mid)),
        )
        return position.long().clamp_(0, self.num_bins - 1)

    def process(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch of raw logits and their targets.

        Shape:
            logits: (N, C, H, W) raw scores; target: (N, H, W) class ids or ``ignore_index``.
        """
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape (N, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        c, b = self.num_classes, self.num_bins
        logits = logits.detach()
        target = target.detach().to(logits.device).long()
        if self._confusion.device != logits.device:  # accumulate where the logits are (GPU or CPU)
            self._confusion, self._all_hist, self._pos_hist = (
                t.to(logits.device) for t in (self._confusion, self._all_hist, self._pos_hist)
            )
        valid = target != self.ignore_index
        labels = target[valid]
        if labels.numel() and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"target holds values outside 0..{c - 1} other than ignore_index {self.ignore_index}")
        pred = logits.argmax(1)[valid]
        self._confusion += torch.bincount(labels * c + pred, minlength=c * c)

        bins = self.score_bins(logits).permute(1, 0, 2, 3)[:, valid]  # (C, P)
        offsets = (torch.arange(c, device=bins.device) * b).unsqueeze(1)
        self._all_hist += torch.bincount((bins + offsets).reshape(-1), minlength=c * b)
        own = bins.gather(0, labels.unsqueeze(0)).squeeze(0)  # bin of each pixel's own class
        self._pos_hist += torch.bincount(labels * b + own, minlength=c * b)

    def confusion_matrix(self) -> np.ndarray:
        """Pixel counts, rows ground truth and columns prediction. Shape: (C, C)."""
        return self._confusion.view(self.num_classes, self.num_classes).cpu().numpy().copy()

    def average_precisions(self) -> np.ndarray:
        """AP (0-1) of each class; NaN for a class without positive pixels. Shape: (C,)."""
        pos = self._pos_hist.view(self.num_classes, self.num_bins).cpu().numpy()
        neg = self._all_hist.view(self.num_classes, self.num_bins).cpu().numpy() - pos
        return np.array([average_precision_from_histograms(pos[i], neg[i]) for i in range(self.num_classes)])

    def evaluate(self) -> dict[str, float]:
        conf = self.confusion_matrix().astype(np.float64)
        total = conf.sum()
        gt = conf.sum(1)
        iou = iou_from_confusion(conf)
        ap = self.average_precisions()
        acc = np.diag(conf) / np.maximum(gt, 1)
        present = gt > 0
        results = {
            "mIoU": 100 * float(iou.mean()),
            "mAP": 100 * float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan,
            "fwIoU": 100 * float((gt / max(total, 1) * iou).sum()),
            "pixel_acc": 100 * float(np.trace(conf) / max(total, 1)),
            "mean_acc": 100 * float(acc[present].mean()) if present.any() else math.nan,
        }
        for name, value in zip(self.class_names, iou):
            results[f"IoU/{name}"] = 100 * float(value)
        for name, value in zip(self.class_names, ap):
            results[f"AP/{name}"] = 100 * float(value)
        return results
