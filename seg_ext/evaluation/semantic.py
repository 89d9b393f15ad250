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
The bins are logarithmic in the odds ``p / (1 - p)`` of the float32 probability, read straight off the bits of
the float (exponent and leading mantissa bits), 512 bins per factor of two, from odds of 2^-149 (the smallest
float32 probability) to 1 (infinite odds) apart. So saturated scores keep their order, exact 0s and 1s stay tied
as they are for the sort-based reference, and binning needs no logarithm. AP agrees with the sort-based value to
a few hundredths of a point (tests check 0.1) with 109,057 bins per class (0.9 MB per class per histogram).

All values are percentages.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from seg_ext import distributed
from seg_ext.evaluation.analysis import CALIBRATION_BINS, calibration_bins, reliability, split_tag, worst_and_median
from seg_ext.evaluation.base import Evaluator
from seg_ext.io import write_csv

SUMMARY_KEYS = ("mIoU", "mAP", "fwIoU", "pixel_acc", "mean_acc")
SUMMARY_HEADERS = ("mIoU", "mAP", "fwIoU", "pixel acc", "mean acc")


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


ODDS_SCALE = 2.0**64  # scales every positive float32 odds (down to 2^-149) into the normal range, exactly
ODDS_FLOOR = 2.0**-85  # added to the scaled odds: probability 0 gets the lowest bin instead of bit pattern 0
INF_BITS = 0x7F800000  # float32 +inf: probability 1


def argmax_channels(x: torch.Tensor, with_max: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``x.argmax(1)`` for (N, C, H, W), as C vectorised passes (much faster than argmax over a strided dim on
    CPUs); ties go to the lowest index, as ``argmax`` does; ``with_max``: also the maximum.
    Shape: (N, C, H, W) -> (N, H, W) int64 (and (N, H, W) values)."""
    best = x[:, 0]
    index = torch.zeros(best.shape, dtype=torch.int64, device=x.device)
    classes = x.shape[1]
    for c in range(1, classes):
        better = x[:, c] > best
        if c == 1:
            index = better.to(torch.int64)  # the first pass fills zeros: a conversion, 5x cheaper than masked_fill
        else:
            index.masked_fill_(better, c)
        if with_max or c < classes - 1:  # the last pass needs no maximum unless it is asked for
            best = torch.where(better, x[:, c], best)
    return (index, best.clone() if classes == 1 else best) if with_max else index


class SemSegEvaluator(Evaluator):
    """Confusion matrix, IoU and per-class pixel AP over a whole split, in constant memory.

    Args:
        num_classes: number of classes C.
        ignore_index: target value of pixels that are not scored.
        class_names: names for the ``IoU/<name>`` and ``AP/<name>`` keys (default: class indices).
        bins_per_octave: AP histogram resolution: bins per factor of two in the odds (a power of two, <= 2^23).
        num_worst: images ``metrics.json``'s per-image summary lists as the worst (by mIoU).
        figures: :meth:`save` also draws the per-image histogram and the reliability diagram (the report's split).

    The final evaluation (:meth:`process_image`) also scores every image on its own (``per_image`` in the
    results: the worst and the median image; ``per_image_<split>.csv``: one row per image) and the calibration
    of the top-label probability of every scored pixel (``calibration``: reliability diagram and ECE).
    """

    task = "semantic"
    summary = SUMMARY_KEYS

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        bins_per_octave: int = 512,
        num_worst: int = 6,
        figures: bool = True,
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        if bins_per_octave < 1 or bins_per_octave > 2**23 or bins_per_octave & (bins_per_octave - 1):
            raise ValueError("bins_per_octave must be a power of two up to 2^23")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.num_worst, self.figures = num_worst, figures
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.shift = 23 - int(math.log2(bins_per_octave))
        lowest = torch.tensor([ODDS_FLOOR], dtype=torch.float32).view(torch.int32).item() >> self.shift
        self.bin_base = lowest
        self.num_bins = (INF_BITS >> self.shift) - lowest + 1
        self.reset()

    def reset(self) -> None:
        c, b = self.num_classes, self.num_bins
        self._confusion = np.zeros(c * c, dtype=np.int64)
        self._all_hist = np.zeros(c * b, dtype=np.int64)  # every pixel, per class and score bin
        self._pos_hist = np.zeros(c * b, dtype=np.int64)  # pixels whose label is the class
        # the final evaluation's per-image analysis (process_image): each image's confusion matrix, and the
        # top-label confidence of every pixel against its correctness (calibration)
        self._images: list[tuple[str, np.ndarray]] = []
        self._calibration = np.zeros((CALIBRATION_BINS, 3))

    def score_bins(self, logits: torch.Tensor) -> torch.Tensor:
        """Histogram bin (0..num_bins-1, increasing with the probability) of each class's softmax probability.

        Shape:
            logits: (N, C, H, W) -> (N, C, H, W) int32
        """
        return self.probability_bins(torch.softmax(logits.float(), dim=1))

    def probability_bins(self, prob: torch.Tensor) -> torch.Tensor:
        """:meth:`score_bins` of probabilities (float32, any shape)."""
        prob = prob.float()
        scaled_complement = torch.rsub(prob, 1 / ODDS_SCALE, alpha=1 / ODDS_SCALE)  # (1 - p) / 2^64, exact scaling
        odds = torch.addcdiv(prob.new_tensor(ODDS_FLOOR), prob, scaled_complement, out=scaled_complement)
        bins = odds.view(torch.int32).bitwise_right_shift_(self.shift)
        return bins.sub_(self.bin_base)

    def process(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch of raw logits and their targets.

        Shape:
            logits: (N, C, H, W) raw scores; target: (N, H, W) class ids or ``ignore_index``.
        """
        self._accumulate(logits, target, probabilities=False)

    def process_probs(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch of class probabilities (softmax already applied, e.g. upsampled to the image's
        size) and their targets. Shape as :meth:`process`."""
        self._accumulate(probs, target, probabilities=True)

    def process_image(self, probs: torch.Tensor, target: torch.Tensor, name: str) -> None:
        """:meth:`process_probs` of one image that also keeps its per-image scores (``per_image_<split>.csv``) and
        the calibration of its pixels' probabilities. Shape: probs (C, H, W), target (H, W)."""
        self._accumulate(probs[None], target[None], probabilities=True, name=name)

    def _accumulate(self, scores: torch.Tensor, target: torch.Tensor, probabilities: bool, name: str | None = None) -> None:
        if scores.dim() != 4 or scores.shape[1] != self.num_classes:
            raise ValueError(f"expected scores of shape (N, {self.num_classes}, H, W), got {tuple(scores.shape)}")
        if target.shape != (scores.shape[0], *scores.shape[2:]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match scores {tuple(scores.shape)}")
        c, b = self.num_classes, self.num_bins
        logits = scores.detach()
        target = target.detach().to(logits.device).long()
        valid = target != self.ignore_index
        some_ignored = not bool(valid.all())
        labels = torch.where(valid, target, 0) if some_ignored else target
        if labels.numel() and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"target holds values outside 0..{c - 1} other than ignore_index {self.ignore_index}")

        predicted, top = argmax_channels(logits, with_max=True)
        if name is not None:  # top: the top-label probability; right when the argmax is the label
            self._calibration += calibration_bins(top[valid].cpu().numpy(), (predicted == labels)[valid].cpu().numpy())
        cells = labels * c + predicted
        bins = self.probability_bins(logits) if probabilities else self.score_bins(logits)
        bins += (torch.arange(c, dtype=torch.int32, device=bins.device) * b).view(1, c, 1, 1)
        own = bins.gather(1, labels.unsqueeze(1))  # each pixel's bin for its own class
        if some_ignored:  # ignored pixels go to one extra slot past the end, dropped below
            cells.masked_fill_(~valid, c * c)
            bins.masked_fill_(~valid.unsqueeze(1), c * b)
            own.masked_fill_(~valid.unsqueeze(1), c * b)
        counts = _bincount(cells, c * c + 1)[: c * c]
        self._confusion += counts
        if name is not None:
            self._images.append((name, counts.reshape(c, c)))
        self._all_hist += _bincount(bins, c * b + 1)[: c * b]
        self._pos_hist += _bincount(own, c * b + 1)[: c * b]

    def combine(self) -> None:
        """Sum the confusion matrix and the AP histograms over the processes (exact: they are counts)."""
        self._confusion = distributed.all_reduce(self._confusion)
        self._all_hist = distributed.all_reduce(self._all_hist)
        self._pos_hist = distributed.all_reduce(self._pos_hist)
        self._calibration = distributed.all_reduce(self._calibration)
        gathered = distributed.gather(self._images)
        if gathered is not None:
            self._images = [item for images in gathered for item in images]

    def confusion_matrix(self) -> np.ndarray:
        """Pixel counts, rows ground truth and columns prediction. Shape: (C, C)."""
        return self._confusion.reshape(self.num_classes, self.num_classes).copy()

    def average_precisions(self) -> np.ndarray:
        """AP (0-1) of each class; NaN for a class without positive pixels. Shape: (C,)."""
        pos = self._pos_hist.reshape(self.num_classes, self.num_bins)
        neg = self._all_hist.reshape(self.num_classes, self.num_bins) - pos
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
        if self._images:
            results["per_image"] = worst_and_median(self.image_rows(), "mIoU", self.num_worst, then=("pixel_acc",))
            results["calibration"] = reliability(self._calibration)
        return results

    def image_rows(self) -> list[dict[str, Any]]:
        """One row per image of the final evaluation: its scored pixels, mIoU (over the classes in its ground
        truth or prediction), pixel accuracy and the IoU of each such class (NaN for the others)."""
        rows = []
        for name, conf in self._images:
            conf = conf.astype(np.float64)
            iou = iou_from_confusion(conf)
            present = (conf.sum(0) + conf.sum(1)) > 0
            total = conf.sum()
            row: dict[str, Any] = {"image": name, "pixels": int(total),
                                   "mIoU": 100 * float(iou[present].mean()) if present.any() else math.nan,
                                   "pixel_acc": 100 * float(np.trace(conf) / total) if total else math.nan}
            for cname, value, p in zip(self.class_names, iou, present):
                row[f"IoU/{cname}"] = 100 * float(value) if p else math.nan
            rows.append(row)
        return rows


    @classmethod
    def comparison_keys(cls, metrics: dict[str, Any]) -> list[str]:
        """mIoU and mAP, and the IoU and AP of the object class of two-class data (Penn-Fudan's person)."""
        if "mIoU" not in metrics:
            return []
        names = ["mIoU", "mAP"]
        classes = [k.split("/", 1)[1] for k in metrics if k.startswith("IoU/")]
        if len(classes) == 2:
            names += [f"IoU/{classes[1]}", f"AP/{classes[1]}"]
        return names

    @classmethod
    def report(cls, report: Any, summary: dict[str, Any]) -> None:
        """The results table of each split and the per-class IoU and AP."""
        report.heading("Results (best checkpoint)")
        rows = [[split, *[summary[split][k] for k in SUMMARY_KEYS]] for split in ("val", "test") if split in summary]
        report.table(["split", *SUMMARY_HEADERS], rows)
        report.text("All numbers are percentages. AP is per-pixel average precision (VOC all-point) pooled over the split.")
        report.heading("Per class")
        splits = [s for s in ("test", "val") if s in summary]
        if not splits:
            return
        class_names = [k.split("/", 1)[1] for k in summary[splits[0]] if k.startswith("IoU/")]
        headers = ["class"] + [f"{s} {m}" for s in splits for m in ("IoU", "AP")]
        report.table(headers, [[c] + [summary[s][f"{m}/{c}"] for s in splits for m in ("IoU", "AP")] for c in class_names])

    def save(self, output_dir: Path, split: str, metrics: dict[str, float]) -> None:
        """``confusion_<split>.png``: the row-normalised confusion matrix with AP and IoU per class; after a
        per-image evaluation ``per_image_<split>.csv`` with its histogram ``per_image_<split>.png`` and the
        reliability diagram ``calibration_<split>.png``."""
        from seg_ext.visualize import plot_confusion, plot_reliability, plot_score_histogram

        output_dir = Path(output_dir)
        tag, what = split_tag(split)
        if self._images:
            rows = self.image_rows()
            write_csv(rows, output_dir / f"per_image{tag}.csv")
        if self._images and self.figures:
            plot_score_histogram([r["mIoU"] for r in rows], "mIoU", output_dir / f"per_image{tag}.png",
                                 f"{what}: {len(rows)} images")
            plot_reliability(metrics["calibration"], output_dir / f"calibration{tag}.png",
                             f"{what}: per-pixel top-label probability,", "probability")

        plot_confusion(
            self.confusion_matrix(), self.class_names,
            [metrics[f"AP/{c}"] for c in self.class_names], [metrics[f"IoU/{c}"] for c in self.class_names],
            output_dir / f"confusion{tag}.png",
            title=f"{what}: mIoU {metrics['mIoU']:.1f}, mAP {metrics['mAP']:.1f}",
        )


class SemanticLoss(Evaluator):
    """The mean loss over a split's batches, weighted by their size: of logits (``process``) or of one image's
    probabilities (``process_probs``, their log taken as logits).

    Args:
        loss: ``loss(logits, target) -> scalar`` (e.g. the run's weighted cross entropy).
    """

    task = "semantic"

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.loss = loss
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def process(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.total += float(self.loss(logits, target.to(logits.device))) * len(target)
        self.count += len(target)

    def process_probs(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.process(torch.log(probs.clamp_min(1e-30)), target)

    def evaluate(self) -> dict[str, float]:
        return {"loss": self.total / max(self.count, 1)}

    def combine(self) -> None:
        self.total, count = distributed.all_reduce([self.total, float(self.count)])
        self.count = int(count)


def _bincount(index: torch.Tensor, length: int) -> np.ndarray:
    """Counts of each value in ``index`` (0..length-1): NumPy's bincount on CPU (several times faster than
    torch's there), torch's on other devices."""
    if index.device.type == "cpu":
        return np.bincount(index.numpy().ravel(), minlength=length)
    return torch.bincount(index.reshape(-1).long(), minlength=length).cpu().numpy()
