"""Where a model fails: per-image scores, the TIDE error breakdown of instance detections, and calibration.

Everything here works on COCO ground truth and COCO results (what :class:`~seg_ext.evaluation.COCOEvaluator`
collects and ``tools/evaluate.py`` reads), so the final evaluation, ``--eval-only`` and ``tools/predict.py
--coco-gt`` analyse the same way.

Matching (:func:`match`) is COCO's for the area range "all": per image and category, detections by decreasing
score (at most 100), each takes the unmatched ground truth of its category with the highest IoU if that IoU is
at least the threshold; a detection matching only a crowd region is ignored. So the AP computed here
(:func:`ap101`, 101 recall points) equals pycocotools' AP at that threshold (tests check it).

The error breakdown follows TIDE (Bolya et al., ECCV 2020; dbolya/tide ``quantify.py``): at IoU 0.5, each
detection that is not a true positive is, in this order, a *localisation* error (best IoU with a ground truth
of its class in [0.1, 0.5]), a *classification* error (IoU >= 0.5 with a ground truth of another class), a
*duplicate* (IoU >= 0.5 with a ground truth of its class that a higher-scoring detection took), *background*
(IoU <= 0.1 with every ground truth) or *both* (the rest); a ground truth no detection matched and no
classification or localisation error points at is *missed*. The AP an error type costs is the AP50 gained by
fixing only those errors (a classification or localisation error becomes a true positive when its ground truth
is free and it is the highest-scoring such error for it, else it is removed; the other kinds are removed; a
missed ground truth is no longer counted). TIDE's main numbers fix each type alone, so they need not add up;
fixing the types one after the other in TIDE's order (cls, loc, both, dupe, bkg, missed) reaches AP50 = 100,
so those *progressive* gains sum to exactly ``100 - AP50``; both are reported. Differences from tidecv: classes
without ground truth in the split are left out of the mean (as COCO does; tidecv counts them as AP 0), the 100
detections are per image and category (COCO's), and detections ignored by a crowd region are not errors.

Calibration (:func:`reliability`): confidences in equal-width bins; a bin's accuracy against its mean confidence
is the reliability diagram, and the expected calibration error (ECE) is the bin-size weighted mean gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

POS_IOU = 0.5
BACKGROUND_IOU = 0.1
MAX_DETS = 100
COCO_IOUS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: TIDE's order of the main error types (the progressive fixes follow it)
ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "missed")
ERROR_NAMES = {"cls": "classification", "loc": "localisation", "both": "cls + loc", "dupe": "duplicate",
               "bkg": "background", "missed": "missed"}
CALIBRATION_BINS = 10


def ap101(scores: np.ndarray, true_positive: np.ndarray, num_gt: int) -> float:
    """COCO's AP (0-100) of one category: detections ranked by score (stable), precision made monotone, read at
    101 recall points; NaN without ground truth."""
    if num_gt <= 0:
        return math.nan
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    tp = np.asarray(true_positive, dtype=bool)[order]
    tps, fps = np.cumsum(tp), np.cumsum(~tp)
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0)
    return 100.0 * float(values.mean())


@dataclass
class ImageDetections:
    """One image's detections against its ground truth (detections by decreasing score, COCO's 100 per category).

    Attributes:
        iou: (D, G) IoU of each detection with each non-crowd ground truth; crowd_iou: (D, K) with each crowd
            region (COCO's crowd IoU: intersection over the detection's area).
    """

    image_id: int
    name: str
    scores: np.ndarray
    classes: np.ndarray
    gt_classes: np.ndarray
    iou: np.ndarray
    crowd_classes: np.ndarray
    crowd_iou: np.ndarray
    result_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: :func:`match` of each IoU threshold, made once (the per-image AP, TIDE and calibration all need IoU 0.5)
    matches: dict[float, "Matches"] = field(default_factory=dict, repr=False)


def result_rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    """A COCO result's RLE as pycocotools takes it (counts as bytes, not the JSON string)."""
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _geometry(item: dict[str, Any], iou_type: str, coco_gt: COCO | None = None) -> Any:
    if iou_type == "bbox":
        return item["bbox"]
    if coco_gt is not None:  # a ground-truth annotation: polygons, RLE or uncompressed RLE
        return coco_gt.annToRLE(item)
    return result_rle(item["segmentation"])


def _ious(dets: list, gts: list, crowd: bool) -> np.ndarray:
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_utils.iou(dets, gts, [int(crowd)] * len(gts)), dtype=np.float64).reshape(len(dets), len(gts))


def image_detections(coco_gt: COCO, results: Sequence[dict[str, Any]], iou_type: str = "segm",
                     image_ids: Sequence[int] | None = None) -> list[ImageDetections]:
    """Group COCO ``results`` by image against ``coco_gt`` (every image of ``image_ids``, default all), with the
    IoUs of every detection against every ground truth."""
    ids = sorted(set(int(i) for i in (coco_gt.getImgIds() if image_ids is None else image_ids)))
    by_image: dict[int, list[int]] = {i: [] for i in ids}
    for k, res in enumerate(results):
        if int(res["image_id"]) in by_image:
            by_image[int(res["image_id"])].append(k)
    out = []
    for image_id in ids:
        keep: list[int] = []
        per_class: dict[int, int] = {}
        for k in sorted(by_image[image_id], key=lambda k: -float(results[k]["score"])):  # stable: COCO's order
            c = int(results[k]["category_id"])
            if per_class.get(c, 0) < MAX_DETS:
                per_class[c] = per_class.get(c, 0) + 1
                keep.append(k)
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        plain = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        dets = [_geometry(results[k], iou_type) for k in keep]
        info = coco_gt.imgs[image_id]
        out.append(ImageDetections(
            image_id=image_id, name=str(info.get("file_name", image_id)).split("/")[-1],
            scores=np.array([float(results[k]["score"]) for k in keep], dtype=np.float64),
            classes=np.array([int(results[k]["category_id"]) for k in keep], dtype=np.int64),
            gt_classes=np.array([int(a["category_id"]) for a in plain], dtype=np.int64),
            iou=_ious(dets, [_geometry(a, iou_type, coco_gt) for a in plain], False),
            crowd_classes=np.array([int(a["category_id"]) for a in crowd], dtype=np.int64),
            crowd_iou=_ious(dets, [_geometry(a, iou_type, coco_gt) for a in crowd], True),
            result_index=np.array(keep, dtype=np.int64),
        ))
    return out


@dataclass
class Matches:
    """The matching of one image at one IoU threshold: ``det_gt`` (D,) the matched ground truth or -1,
    ``ignored`` (D,) detections that only a crowd region matched, ``gt_det`` (G,) the matching detection or -1."""

    det_gt: np.ndarray
    ignored: np.ndarray
    gt_det: np.ndarray


def match(image: ImageDetections, threshold: float = POS_IOU) -> Matches:
    """COCO's greedy matching of one image at ``threshold`` (see the module docstring); kept on the image."""
    if float(threshold) not in image.matches:
        image.matches[float(threshold)] = _match(image, threshold)
    return image.matches[float(threshold)]


def _match(image: ImageDetections, threshold: float) -> Matches:
    d, g = image.iou.shape
    det_gt, gt_det, ignored = np.full(d, -1), np.full(g, -1), np.zeros(d, dtype=bool)
    same = image.classes[:, None] == image.gt_classes[None, :]
    for i in range(d):
        candidates = np.where(same[i] & (gt_det < 0), image.iou[i], -1.0)
        if g and candidates.max() >= threshold:
            j = int(candidates.argmax())
            det_gt[i], gt_det[j] = j, i
        elif image.crowd_iou.shape[1] and (
                np.where(image.crowd_classes == image.classes[i], image.crowd_iou[i], -1.0).max() >= threshold):
            ignored[i] = True
    return Matches(det_gt, ignored, gt_det)


def mean_ap(images: Sequence[ImageDetections], threshold: float, categories: Sequence[int] | None = None) -> float:
    """COCO AP (0-100) at one IoU threshold over ``images``: the mean over categories with ground truth."""
    matches = [match(im, threshold) for im in images]
    cats = sorted(set(categories) if categories is not None else
                  {int(c) for im in images for c in np.concatenate([im.classes, im.gt_classes])})
    aps = []
    for c in cats:
        scores, tps, num_gt = [], [], 0
        for im, m in zip(images, matches):
            own = (im.classes == c) & ~m.ignored
            scores.append(im.scores[own])
            tps.append(m.det_gt[own] >= 0)
            num_gt += int((im.gt_classes == c).sum())
        ap = ap101(np.concatenate(scores) if scores else np.zeros(0), np.concatenate(tps) if tps else np.zeros(0, bool), num_gt)
        if not math.isnan(ap):
            aps.append(ap)
    return float(np.mean(aps)) if aps else math.nan


def image_scores(image: ImageDetections, score_threshold: float) -> dict[str, Any]:
    """One image's row: ground truth, detections above ``score_threshold``, of them matched at IoU 0.5, false,
    and the ground truth they missed; the image's COCO AP (0.50:0.95) and AP50 from all its detections
    (NaN without ground truth)."""
    m = match(image, POS_IOU)
    shown = (image.scores >= score_threshold) & ~m.ignored
    matched = int((shown & (m.det_gt >= 0)).sum())
    aps = [mean_ap([image], t) for t in COCO_IOUS] if len(image.gt_classes) else [math.nan]  # COCO_IOUS[0] is 0.5
    return {
        "image": image.name, "image_id": image.image_id, "ground_truth": int(len(image.gt_classes)),
        "detections": int(shown.sum()), "matched": matched, "false": int(shown.sum()) - matched,
        "missed": int(len(image.gt_classes)) - matched, "AP": float(np.mean(aps)), "AP50": aps[0],
    }


# ---- TIDE -------------------------------------------------------------------------------------------------


@dataclass
class ErrorLabels:
    """TIDE's labels of one image's detections and ground truth at IoU 0.5.

    Attributes:
        det_kind: (D,) ``tp``, ``ignored`` or an error type of :data:`ERROR_TYPES` (not ``missed``).
        det_target: (D,) the ground truth a cls/loc error points at (-1 otherwise).
        gt_kind: (G,) ``matched``, ``missed`` or ``fixable`` (unmatched, but a cls/loc error points at it).
    """

    det_kind: list[str]
    det_target: np.ndarray
    gt_kind: list[str]
    matches: Matches


def error_labels(image: ImageDetections) -> ErrorLabels:
    """Label each detection and ground truth of one image as TIDE does (see the module docstring)."""
    m = match(image, POS_IOU)
    d, g = image.iou.shape
    same = image.classes[:, None] == image.gt_classes[None, :]
    used = m.gt_det >= 0
    kinds, target = [], np.full(d, -1)
    for i in range(d):
        if m.det_gt[i] >= 0:
            kinds.append("tp")
            continue
        if m.ignored[i]:
            kinds.append("ignored")
            continue
        if g == 0:
            kinds.append("bkg")
            continue
        cls_iou = np.where(same[i], image.iou[i], 0.0)
        other_iou = np.where(~same[i], image.iou[i], 0.0)
        j = int(cls_iou.argmax())
        if BACKGROUND_IOU <= cls_iou[j] <= POS_IOU:
            kinds.append("loc")
            target[i] = j
            continue
        j = int(other_iou.argmax())
        if other_iou[j] >= POS_IOU:
            kinds.append("cls")
            target[i] = j
            continue
        if np.where(used, cls_iou, 0.0).max() >= POS_IOU:
            kinds.append("dupe")
            continue
        kinds.append("bkg" if image.iou[i].max() <= BACKGROUND_IOU else "both")
    gt_kind = ["matched" if used[j] else "missed" for j in range(g)]
    for i in range(d):
        if kinds[i] in ("cls", "loc") and not used[target[i]]:
            gt_kind[target[i]] = "fixable"
    return ErrorLabels(kinds, target, gt_kind, m)


@dataclass
class _Point:
    category: int
    score: float
    kind: str  # tp, or an error type
    fix_to: int = -1  # cls/loc: the category it counts in once fixed (-1: removed when fixed)


def tide_breakdown(images: Sequence[ImageDetections]) -> dict[str, Any]:
    """TIDE's error counts and AP costs over a split (see the module docstring).

    Returns:
        ``AP50`` (the base), ``counts`` (detections or ground truth of each error type), ``dAP`` (each type fixed
        alone), ``dAP_progressive`` (fixed one after the other in :data:`ERROR_TYPES`' order; sums to
        ``100 - AP50``), ``dAP_false_positives`` and ``dAP_false_negatives`` (TIDE's special errors: every false
        positive scored below every true one; every unmatched ground truth not counted).
    """
    points: list[_Point] = []
    num_gt: dict[int, int] = {}
    missed: dict[int, int] = {}
    unmatched: dict[int, int] = {}
    best: dict[tuple[int, int], tuple[float, int]] = {}  # (image, gt) -> the highest-scoring cls/loc error
    counts = {t: 0 for t in ERROR_TYPES}
    for n, image in enumerate(images):
        labels = error_labels(image)
        for c in image.gt_classes:
            num_gt[int(c)] = num_gt.get(int(c), 0) + 1
        for i, kind in enumerate(labels.det_kind):
            if kind == "ignored":
                continue
            point = _Point(int(image.classes[i]), float(image.scores[i]), kind)
            if kind in ("cls", "loc"):
                j = int(labels.det_target[i])
                if labels.gt_kind[j] == "fixable":
                    key = (n, j)
                    if key not in best or best[key][0] < point.score:
                        best[key] = (point.score, len(points))
                    point.fix_to = int(image.gt_classes[j])
            if kind != "tp":
                counts[kind] += 1
            points.append(point)
        for j, kind in enumerate(labels.gt_kind):
            c = int(image.gt_classes[j])
            if kind != "matched":
                unmatched[c] = unmatched.get(c, 0) + 1
            if kind == "missed":
                missed[c] = missed.get(c, 0) + 1
                counts["missed"] += 1
    winners = {index for _, index in best.values()}
    categories = sorted(num_gt)

    def ap_with(fixed: set[str], all_false_last: bool = False, drop_unmatched: bool = False) -> float:
        scores: dict[int, list[float]] = {c: [] for c in categories}
        tps: dict[int, list[bool]] = {c: [] for c in categories}
        for k, p in enumerate(points):
            category, score, tp = p.category, p.score, p.kind == "tp"
            if p.kind in fixed:
                if p.kind in ("cls", "loc") and k in winners:
                    category, tp = p.fix_to, True
                else:
                    continue
            if all_false_last:
                score = 1.0 if tp else 0.0
            if category in scores:
                scores[category].append(score)
                tps[category].append(tp)
        aps = []
        for c in categories:
            gt = num_gt[c] - (missed.get(c, 0) if "missed" in fixed else 0) - (unmatched.get(c, 0) if drop_unmatched else 0)
            if gt > 0:
                aps.append(ap101(np.array(scores[c]), np.array(tps[c], dtype=bool), gt))
        return float(np.mean(aps)) if aps else 100.0

    base = ap_with(set()) if categories else math.nan
    out: dict[str, Any] = {"AP50": base, "counts": counts, "dAP": {}, "dAP_progressive": {}}
    if not categories:
        return out
    fixed: set[str] = set()
    last = base
    for kind in ERROR_TYPES:
        out["dAP"][kind] = max(ap_with({kind}) - base, 0.0)
        fixed.add(kind)
        now = ap_with(fixed)
        out["dAP_progressive"][kind] = now - last
        last = now
    out["dAP_false_positives"] = ap_with(set(), all_false_last=True) - base
    out["dAP_false_negatives"] = ap_with(set(), drop_unmatched=True) - base
    return out


# ---- calibration ------------------------------------------------------------------------------------------


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Per-bin (count, summed confidence, correct count) of confidences in [0, 1]. Shape: (bins, 3)."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    index = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)
    out = np.zeros((bins, 3))
    out[:, 0] = np.bincount(index, minlength=bins)
    out[:, 1] = np.bincount(index, weights=confidence, minlength=bins)
    out[:, 2] = np.bincount(index, weights=np.asarray(correct, dtype=np.float64).ravel(), minlength=bins)
    return out


def reliability(table: np.ndarray) -> dict[str, Any]:
    """The reliability diagram's points and the ECE (0-100) of a :func:`calibration_bins` table (summed over
    batches). Empty bins have NaN confidence and accuracy."""
    table = np.asarray(table, dtype=np.float64)
    count = table[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, table[:, 1] / count, np.nan)
        acc = np.where(count > 0, table[:, 2] / count, np.nan)
    total = count.sum()
    ece = float(np.nansum(count * np.abs(acc - conf)) / total) if total else math.nan
    return {"ece": 100 * ece, "confidence": conf.tolist(), "accuracy": acc.tolist(), "count": count.astype(int).tolist(),
            "samples": int(total)}


def detection_calibration(images: Sequence[ImageDetections], bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Calibration of detection scores: a detection is right when it matches a ground truth at IoU 0.5
    (crowd-ignored detections left out)."""
    table = np.zeros((bins, 3))
    for image in images:
        m = match(image, POS_IOU)
        keep = ~m.ignored
        table += calibration_bins(image.scores[keep], m.det_gt[keep] >= 0, bins)
    return reliability(table)


# ---- per-image tables -------------------------------------------------------------------------------------


def split_tag(split: str) -> tuple[str, str]:
    """The file-name suffix and the title word of a split's analysis files: ``_test`` and ``test``; without a split
    (``tools/predict.py``'s ``--gt`` / ``--coco-gt``) none and ``images``."""
    return (f"_{split}", split) if split else ("", "images")


def worst_and_median(rows: Sequence[dict[str, Any]], key: str, count: int, then: Sequence[str] = ()) -> dict[str, Any]:
    """metrics.json's summary of per-image rows: the ``count`` worst by ``key`` (lowest first; ties broken by the
    keys of ``then``, lowest first; ``-name`` for highest first; images without a score left out) and the median
    image."""
    scored = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    def order(row: dict[str, Any]) -> tuple:
        return (row[key], *[-row[k[1:]] if k.startswith("-") else row[k] for k in then])

    ranked = sorted(scored, key=order)
    out: dict[str, Any] = {"score": key, "images": len(rows), "worst": ranked[:count]}
    if ranked:
        values = [r[key] for r in ranked]
        out["median"] = ranked[len(ranked) // 2] if len(ranked) % 2 else ranked[len(ranked) // 2 - 1]
        out["median_value"] = float(np.median(values))
    return out
