"""COCO box and mask evaluation with pycocotools, and COCO results files.

Segmentation results are written without a ``bbox``: pycocotools' ``loadRes`` would otherwise set a result's
``area`` to its box area, which moves it between the small/medium/large buckets (torchvision's and mmdet's
evaluators do the same).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seg_ext import distributed
from seg_ext.data.coco import coco_from_dict, masks_to_rles
from seg_ext.data.files import read_json
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.evaluation.analysis import (
    ERROR_NAMES, ERROR_TYPES, detection_calibration, image_detections, image_scores, split_tag, tide_breakdown,
    worst_and_median,
)
from seg_ext.evaluation.base import Evaluator
from seg_ext.io import write_csv
from seg_ext.report import shown_split

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def binary_masks(masks: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Detections' masks as booleans: probabilities above ``threshold``, or 0/1 masks as they are.

    Shape:
        (N, 1, H, W) or (N, H, W) -> (N, H, W) bool
    """
    masks = masks.detach()
    if masks.dim() == 4:
        masks = masks[:, 0]
    return (masks > threshold if masks.is_floating_point() else masks > 0).cpu().numpy()


def detections_to_results(
    output: dict[str, torch.Tensor], image_id: int, category_of: dict[int, int], mask_threshold: float = 0.5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's detections as COCO results: (bbox results, segm results without bbox).

    ``output`` holds ``boxes`` (N, 4) xyxy, ``labels`` (N,), ``scores`` (N,) and optionally ``masks``
    (N, 1, H, W) probabilities or (N, H, W) binary; ``category_of`` maps model labels to COCO category ids.
    """
    boxes = output["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = output["scores"].detach().cpu().numpy().astype(np.float64)
    labels = output["labels"].detach().cpu().numpy()
    cats = [int(category_of[int(label)]) for label in labels]
    bbox = [
        {"image_id": int(image_id), "category_id": c, "score": round(float(s), 5),
         "bbox": [round(float(v), 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])]}
        for b, s, c in zip(boxes, scores, cats)
    ]
    segm: list[dict[str, Any]] = []
    if "masks" in output:
        binary = binary_masks(output["masks"], mask_threshold)
        segm = [
            {"image_id": int(image_id), "category_id": c, "score": round(float(s), 5), "segmentation": rle}
            for rle, s, c in zip(masks_to_rles(binary), scores, cats)
        ]
    return bbox, segm


def _results_coco(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    if results:
        return coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds keys to the dicts it is given
    # loadRes cannot take an empty list; no detections means AP 0
    return coco_from_dict(_no_annotations(coco_gt))


def _no_annotations(coco_gt: COCO) -> dict[str, Any]:
    return {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}


BACKENDS = ("pycocotools", "faster_coco_eval")


def _faster_eval(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str):
    """COCOeval_faster of faster-coco-eval over the same ground truth (its C++ evaluate and accumulate)."""
    try:
        import faster_coco_eval
    except ImportError:
        raise ConfigError(
            "the faster_coco_eval backend needs the faster-coco-eval package (pip install faster-coco-eval==1.8.0)"
        ) from None
    gt = faster_coco_eval.COCO(copy.deepcopy(coco_gt.dataset))
    if results:
        dt = gt.loadRes(copy.deepcopy(results))
    else:
        dt = faster_coco_eval.COCO(_no_annotations(coco_gt))
    return faster_coco_eval.COCOeval_faster(gt, dt, iou_type, print_function=print)


def coco_evaluate(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_type: str,
    image_ids: Sequence[int] | None = None,
    backend: str = "pycocotools",
) -> tuple[dict[str, float], str]:
    """Run COCOeval; returns ``{f"{iou_type}/{stat}": percent}`` (NaN where no ground truth fits the area range)
    and the printed 12-line summary.

    ``backend``: ``pycocotools`` (the reference) or ``faster_coco_eval`` (the same numbers, computed in C++;
    see benchmarks/README.md).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"config key 'eval.backend' is {backend!r}; expected one of: {', '.join(BACKENDS)}")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        if backend == "pycocotools":
            ev = COCOeval(coco_gt, _results_coco(coco_gt, results), iou_type)
        else:
            ev = _faster_eval(coco_gt, results, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(set(int(i) for i in image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    summary = "\n".join(line for line in text.getvalue().splitlines() if line.lstrip().startswith("Average"))
    metrics = {
        f"{iou_type}/{name}": (100 * float(v) if v >= 0 else math.nan) for name, v in zip(STAT_NAMES, ev.stats)
    }
    metrics.update(per_class_ap(ev, coco_gt, iou_type))
    return metrics, summary


def per_class_ap(ev: Any, coco_gt: COCO, iou_type: str) -> dict[str, float]:
    """AP of each category (detectron2's keys ``<iou_type>/AP-<name>``): the precision COCOeval accumulated,
    averaged over IoU thresholds and recall points, all areas, 100 detections; NaN for a category without ground
    truth in the images scored."""
    precision = np.asarray(ev.eval["precision"])  # (T, R, K, A, M)
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        out[f"{iou_type}/AP-{coco_gt.cats[cat_id]['name']}"] = 100 * float(values.mean()) if values.size else math.nan
    return out


class COCOEvaluator(Evaluator):
    """Collects detections as COCO results and scores them with COCOeval against the ground truth.

    Args:
        coco_gt: the ground truth (pycocotools COCO), e.g. ``CocoInstanceDataset.coco``.
        category_of: model label -> COCO category id.
        iou_types: any of ``bbox``, ``segm``.
        mask_threshold: probability above which a mask pixel is on.
        backend: ``pycocotools`` or ``faster_coco_eval`` (see ``coco_evaluate``).
        analyze: also analyse where the detections fail (the final evaluation; ``seg_ext.evaluation.analysis``):
            ``per_image`` (the worst and the median image by mask AP; every image in ``per_image_<split>.csv``,
            its matched, false and missed instances counted among detections scoring ``score_threshold`` or
            more), ``errors/segm`` and ``errors/bbox`` (TIDE's breakdown) and ``calibration`` (of the scores).
        score_threshold: the score from which a detection is shown (and counted per image).
        num_worst: images the per-image summary lists as the worst.
        figures: :meth:`save` also draws the analysis' figures (the report's split).
    """

    task = "instance"
    summary = ("segm/AP", "segm/AP50", "segm/AP75", "bbox/AP", "bbox/AP50")

    def __init__(
        self,
        coco_gt: COCO,
        category_of: dict[int, int],
        iou_types: Sequence[str] = IOU_TYPES,
        mask_threshold: float = 0.5,
        backend: str = "pycocotools",
        analyze: bool = False,
        score_threshold: float = 0.5,
        num_worst: int = 6,
        figures: bool = True,
    ) -> None:
        self.coco_gt, self.category_of = coco_gt, category_of
        self.iou_types = tuple(iou_types)
        self.mask_threshold = mask_threshold
        self.backend = backend
        self.analyze, self.score_threshold, self.num_worst, self.figures = analyze, score_threshold, num_worst, figures
        self.summaries: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        self.results: dict[str, list[dict[str, Any]]] = {t: [] for t in IOU_TYPES}
        self.image_ids: list[int] = []

    def process(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]) -> None:
        """Accumulate a batch: ``outputs`` and ``targets`` are lists of per-image dicts (targets hold ``image_id``)."""
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            bbox, segm = detections_to_results(output, image_id, self.category_of, self.mask_threshold)
            self.results["bbox"].extend(bbox)
            self.results["segm"].extend(segm)
            self.image_ids.append(image_id)

    def combine(self) -> None:
        """Gather every process's results and image ids on process 0 (in rank order: the shards' order)."""
        gathered = distributed.gather((self.results, self.image_ids))
        if gathered is not None:
            self.results = {t: [r for results, _ in gathered for r in results[t]] for t in IOU_TYPES}
            self.image_ids = [i for _, ids in gathered for i in ids]

    def evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for iou_type in self.iou_types:
            values, self.summaries[iou_type] = coco_evaluate(
                self.coco_gt, self.results[iou_type], iou_type, self.image_ids, self.backend
            )
            metrics.update(values)
        if self.analyze:
            metrics.update(self.analysis())
        return metrics

    def analysis(self) -> dict[str, Any]:
        """Per-image scores, TIDE's error breakdown of masks and boxes, the calibration of the scores (see
        ``seg_ext.evaluation.analysis``); keeps the per-image rows for :meth:`save`."""
        out: dict[str, Any] = {}
        for iou_type in ("segm", "bbox"):
            images = image_detections(self.coco_gt, self.results[iou_type], iou_type, self.image_ids)
            out[f"errors/{iou_type}"] = tide_breakdown(images)
            if iou_type == "segm":
                self.rows = [image_scores(image, self.score_threshold) for image in images]
                out["per_image"] = worst_and_median(self.rows, "AP", self.num_worst, then=("AP50", "matched", "-false"))
                out["calibration"] = detection_calibration(images)
        return out

    def save_results(self, path: str | Path, iou_type: str = "segm") -> None:
        """Write the accumulated results of one kind as a COCO results JSON."""
        Path(path).write_text(json.dumps(self.results[iou_type]))

    def save(self, output_dir: Path, split: str, metrics: dict[str, float]) -> None:
        """``results_<split>_segm.json`` and ``results_<split>_bbox.json``; after an analysis
        ``per_image_<split>.csv`` with its histogram ``per_image_<split>.png``, the error breakdown
        ``errors_<split>.png`` and the reliability diagram of the scores ``calibration_<split>.png``."""
        output_dir = Path(output_dir)
        for iou_type in ("segm", "bbox"):
            self.save_results(output_dir / f"results_{split}_{iou_type}.json", iou_type)
        if self.analyze and self.rows:
            save_analysis(self.rows, metrics, output_dir, split, self.figures)

    @classmethod
    def comparison_keys(cls, metrics: dict[str, Any]) -> list[str]:
        return ["segm/AP", "bbox/AP"] if "segm/AP" in metrics else []

    @classmethod
    def report(cls, report: Any, summary: dict[str, Any]) -> None:
        """The 12-number COCO summaries of each split, masks then boxes, then the AP of each class."""
        for iou_type, label in (("segm", "Mask AP (segm)"), ("bbox", "Box AP (bbox)")):
            report.heading(label)
            rows = [[split, *[summary[split][f"{iou_type}/{n}"] for n in STAT_NAMES]] for split in ("val", "test")
                    if split in summary]
            report.table(["split", *STAT_NAMES], rows, digits=1)
        report.text("Percentages; n/a where the split has no object of that size (COCO: small < 32², large > 96² px).")
        splits = [s for s in ("test", "val") if s in summary]
        classes = [k.split("AP-", 1)[1] for k in summary[splits[0]] if k.startswith("segm/AP-")] if splits else []
        if classes:
            report.heading("Per class")
            report.table(["class"] + [f"{s} {t} AP" for s in splits for t in ("mask", "box")],
                         [[c] + [summary[s].get(f"{t}/AP-{c}") for s in splits for t in ("segm", "bbox")] for c in classes],
                         digits=1)
            report.text("AP of each class (COCO's, over IoU 0.50:0.95); n/a where the split has no object of the class.")
        split = shown_split(summary, "errors/segm")
        if split is not None:
            report_errors(report, summary[split], split)


def save_analysis(rows: list[dict[str, Any]], metrics: dict[str, Any], output_dir: Path, split: str = "",
                  figures: bool = True) -> None:
    """The files of an instance analysis: per-image CSV and (``figures``) its histogram, the error breakdown, the
    calibration (``per_image_<split>.csv``, ...; without a split ``per_image.csv``, ...)."""
    from seg_ext.visualize import plot_error_breakdown, plot_reliability, plot_score_histogram

    tag, what = split_tag(split)
    write_csv(rows, output_dir / f"per_image{tag}.csv")
    if not figures:
        return
    plot_score_histogram([r["AP"] for r in rows], "mask AP", output_dir / f"per_image{tag}.png", f"{what}: {len(rows)} images")
    plot_error_breakdown({"mask": metrics["errors/segm"], "box": metrics["errors/bbox"]}, ERROR_NAMES,
                         output_dir / f"errors{tag}.png")
    plot_reliability(metrics["calibration"], output_dir / f"calibration{tag}.png",
                     f"{what}: detection scores (right = matched at IoU 0.5),", "score")


def report_errors(report: Any, metrics: dict[str, Any], split: str) -> None:
    """The error breakdown and calibration sections of an instance report (``metrics``: one split's)."""
    report.heading(f"Where it fails ({split})")
    rows = []
    for iou_type, label in (("segm", "mask"), ("bbox", "box")):
        out = metrics[f"errors/{iou_type}"]
        if not out.get("dAP"):
            continue
        rows.append([f"{label}: AP50 {out['AP50']:.1f}, count", *[out["counts"][t] for t in ERROR_TYPES], "", ""])
        rows.append([f"{label}: AP50 gained, fixed alone", *[out["dAP"][t] for t in ERROR_TYPES],
                     out["dAP_false_positives"], out["dAP_false_negatives"]])
        rows.append([f"{label}: gained, fixed in turn (sums to {100 - out['AP50']:.1f})",
                     *[out["dAP_progressive"][t] for t in ERROR_TYPES], "", ""])
    report.table(["errors (TIDE, IoU 0.5)", *[ERROR_NAMES[t] for t in ERROR_TYPES], "all false pos.", "all false neg."],
                 rows, digits=1)
    report.text(
        "TIDE's error types (Bolya et al. 2020) on detections at IoU 0.5: classification = right place, wrong class; "
        "localisation = right class, IoU 0.1-0.5; cls + loc = both wrong; duplicate = a second detection of an object "
        "already found; background = IoU under 0.1 with every object; missed = an object no detection comes near. "
        "'Fixed alone' is the AP50 gained by fixing only that type (TIDE's headline); 'fixed in turn' fixes the types "
        "one after the other in this order, which adds up to the gap to 100. The counts are of all detections, "
        "whatever their score.")
    if (Path(report.folder) / f"errors_{split}.png").is_file():
        report.image(f"errors_{split}.png", f"{split}: AP50 gained by fixing each error type alone, masks and boxes")
    cal = metrics.get("calibration")
    if cal:
        report.heading(f"Calibration of the scores ({split})")
        report.text(f"Expected calibration error {cal['ece']:.2f} points over {cal['samples']} detections: a detection "
                    "is right when it matches an object at IoU 0.5; a calibrated score is the chance that it is.")
        if (Path(report.folder) / f"calibration_{split}.png").is_file():
            report.image(f"calibration_{split}.png", f"{split}: reliability of the detection scores")


def load_results(path: str | Path, coco_gt: COCO, iou_type: str) -> list[dict[str, Any]]:
    """Read and check a COCO results file for ``iou_type`` against the ground truth.

    Raises:
        DatasetError: the file is missing or malformed, or names images or categories the ground truth lacks.
    """
    path = Path(path)
    results = read_json(path, "results file", "a list of COCO results", list)
    need = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
    for i, res in enumerate(results):
        if not isinstance(res, dict):
            raise DatasetError(f"results file {path}: entry {i} is not an object; expected keys {', '.join(need)}")
        missing = [k for k in need if k not in res]
        if missing:
            raise DatasetError(f"results file {path}: entry {i} has no '{missing[0]}'; {iou_type} results need {', '.join(need)}")
        if res["image_id"] not in coco_gt.imgs:
            raise DatasetError(f"results file {path}: entry {i} has image_id {res['image_id']}, which the ground truth does not have")
        if res["category_id"] not in coco_gt.cats:
            raise DatasetError(f"results file {path}: entry {i} has category_id {res['category_id']}, which the ground truth does not have")
    if iou_type == "segm":  # keep areas as mask areas (see the module docstring)
        results = [{k: v for k, v in res.items() if k != "bbox"} for res in results]
    return results
