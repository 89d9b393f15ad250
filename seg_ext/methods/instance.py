"""The instance-segmentation family: what every instance method shares. The data is COCO instance files of each
split, from any format of the table that holds instances (Penn-Fudan and the synthetic pedestrians are converted
into ``<output_dir>/coco``; COCO files are read as they are); every method is scored by the instance evaluators
(COCO box and mask AP, ``seg_ext.evaluation``) and reported the same way.

A method of the family (``maskrcnn.py``, ``watershed.py``) brings its network and the rest of the protocol:
:attr:`~seg_ext.methods.base.Method.models`, :meth:`InstanceMethod.dataset` (its training targets on top of a COCO
split), :meth:`InstanceMethod.loss_step`, :meth:`~seg_ext.methods.base.Method.prepare`,
:meth:`~seg_ext.methods.base.Method.forward`, :meth:`~seg_ext.methods.base.Method.postprocess` (instances at the
image's size: ``boxes`` (N, 4) xyxy float32, ``labels`` (N,) int64, ``scores`` (N,) float32, ``masks`` (N, H, W)
or (N, 1, H, W), probabilities or 0/1) and :meth:`InstanceMethod.extra_panel`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn
from torch.utils.data import Dataset

from seg_ext import distributed
from seg_ext.config import TRAIN_DEFAULTS, choice, interval, pair
from seg_ext.data.base import SplitRequest
from seg_ext.data.coco import CocoInstanceDataset, collate_instances, image_tensor
from seg_ext.data.files import read_json
from seg_ext.data.formats import find_format, get_format
from seg_ext.data.transforms import build_instance_transforms, build_scaled_transforms
from seg_ext.dense import check_crop_fits
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.evaluation import Evaluator, build_evaluators, evaluator_classes, run_inference
from seg_ext.evaluation.analysis import error_labels, image_detections, result_rle
from seg_ext.evaluation.coco import BACKENDS, binary_masks, detections_to_results
from seg_ext.methods.base import LossStep, Method, RunData, RunLike, init_note, overlay_indices, training_note, report_per_image, report_split
from seg_ext.report import Report
from seg_ext.visualize import instance_error_picture, instance_overlay_picture, plot_instances, plot_loss_curves

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

FAMILY_DEFAULTS: dict[str, Any] = {
    "method": "",
    "data": {
        # a folder of an instance format (seg_ext.data.formats: Penn-Fudan, ...) or the image folder of COCO data;
        # null: the built-in synthetic pedestrians
        "root": None,
        "format": "auto",  # auto, or an instance format of seg_ext.data.formats (pennfudan, coco, ...)
        "train_json": None,  # coco format: the instance files of each split
        "val_json": None,
        "test_json": None,
        "val": None,  # val/test images of a drawn split (null: the format's default, e.g. 15 and 50 for Penn-Fudan)
        "test": None,
        "split_seed": 0,
        "splits_file": None,  # a run's splits.json (its coco/splits.json too), to reuse its split exactly
        "max_images": None,  # a quick try: each split cut to its first N images (null: all)
        "batch_size": 2,
        "num_workers": "auto",  # auto: min(8, CPUs this process may use / processes on the machine)
        "min_box_size": 1.0,  # annotations with a narrower or lower box are dropped (with a warning)
        # methods that see a fixed size (the watershed): squash each image to it, or scale it by data.scale keeping
        # its aspect ratio and train on random crops of crop_size (null: the method's input size); seg_ext.dense
        "resize": "squash",
        "scale": 1.0,  # a factor, or short:N / long:N (the short or long side in pixels)
        "crop_size": None,
    },
    "augment": {
        "hflip_prob": 0.5,
        "scale_jitter": [1.0, 1.0],  # random rescale factor range; [1, 1]: none
        "crop_fraction": 0.0,  # crop up to this fraction from each border (not with data.resize: scale)
    },
    "model": {},
    "train": {
        **TRAIN_DEFAULTS,
        "epochs": 10,
        "optimizer": "sgd",
        "lr": 0.005,
        "weight_decay": 5.0e-4,
        "scheduler": "cosine",  # from scratch, cosine beat the tutorial's step decay (see configs/instance)
        "step_size": 3,
        "warmup_iters": -1,  # -1: linear warmup over the first epoch (at most 1000 iterations)
        "best_metric": "segm/AP",
    },
    # score_threshold: only for drawing; backend: pycocotools, or faster_coco_eval (same numbers, faster)
    # tta: horizontal-flip test-time augmentation in the final val/test evaluation (methods that support it)
    # mode: resize | whole | slide, window, stride, window_batch: as for semantic segmentation (seg_ext.dense)
    "eval": {"mask_threshold": 0.5, "score_threshold": 0.5, "backend": "pycocotools", "tta": False,
             "mode": None, "window": None, "stride": None, "window_batch": 4},
    "report": {"num_overlays": 4, "num_worst": 6},  # num_worst: the worst test images in the report's gallery
}


def instance_map(masks: np.ndarray) -> np.ndarray:
    """Instance ids of masks ordered by decreasing score: 0 background, i + 1 for ``masks[i]``; where masks
    overlap, the higher-scoring one wins. Shape: (N, H, W) bool -> (H, W) uint16 (int32 past 65535 instances)."""
    n = len(masks)
    dtype = np.uint16 if n < 65536 else np.int32
    out = np.zeros(masks.shape[1:], dtype)
    for i in range(n - 1, -1, -1):
        out[masks[i]] = i + 1
    return out


class InstanceMethod(Method):
    """Base class of the instance methods: COCO data, COCO evaluation, the instance report and prediction files."""

    task = "instance"
    coco_results = True
    prediction_folders = ("instances",)
    #: the model block by default, and changes to the family's defaults (block -> keys)
    default_model: dict[str, Any] = {}
    default_changes: dict[str, dict[str, Any]] = {}

    @classmethod
    def head_classes(cls, class_names: Sequence[str]) -> int:
        return len(class_names) + 1  # with the background

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = copy.deepcopy(FAMILY_DEFAULTS)
        cfg["method"] = cls.name
        cfg["model"] = copy.deepcopy(cls.default_model)
        for block, changes in cls.default_changes.items():
            cfg[block].update(copy.deepcopy(changes))
        report = cfg.pop("report")
        cfg.update(copy.deepcopy(cls.config_blocks))
        cfg["report"] = report
        return cfg

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        data, augment = cfg["data"], cfg["augment"]
        if data["format"] != "auto":
            get_format(data["format"], cls.task)
        interval(pair(augment["scale_jitter"], "augment.scale_jitter"), "augment.scale_jitter",
                 lambda lo, hi: 0 < lo <= hi, "0 < low <= high, e.g. [0.8, 1.2]")
        interval(float(augment["crop_fraction"]), "augment.crop_fraction", lambda c: 0 <= c < 0.5, "a fraction in [0, 0.5)")
        choice(cfg["eval"]["backend"], "eval.backend", BACKENDS)
        if cfg["eval"]["tta"] and not cls.supports_tta:
            raise ConfigError(f"config key 'eval.tta' is true, but method {cls.name} has no test-time augmentation "
                              "(its detections of the flipped image would need merging, which seg_ext does not do)")

    @classmethod
    def ignored_keys(cls, cfg: dict[str, Any]) -> dict[str, str]:
        out = super().ignored_keys(cfg)
        if cfg["data"].get("resize", "squash") == "scale":
            out["augment.crop_fraction"] = "data.resize is 'scale', which trains on random crops of data.crop_size"
        return out

    # ---- data

    def dataset(self, base: CocoInstanceDataset, train: bool) -> Dataset:
        """The dataset training and evaluation batches come from, on top of a COCO split (default: the split)."""
        return base

    def collate(self, batch: list[Any]) -> Any:
        return collate_instances(batch)

    def coco_split(self, json_path: Path, image_root: Path, train: bool) -> CocoInstanceDataset:
        """One COCO split as the config asks for it: training gets the augmentation."""
        aug = self.cfg["augment"]
        if train and self.scale is not None:
            transform = build_scaled_transforms(self.scale, self.train_size, aug["scale_jitter"],
                                                aug["hflip_prob"], fill_mask=0, instances=True, seed=self.cfg["train"]["seed"])
        else:
            transform = build_instance_transforms(train, aug["hflip_prob"], aug["scale_jitter"], aug["crop_fraction"],
                                                  seed=self.cfg["train"]["seed"]) if train else None
        return CocoInstanceDataset(json_path, image_root, transform, self.cfg["data"]["min_box_size"])

    def coco_files(self, output_dir: Path) -> tuple[dict[str, Path | None], Path, str]:
        """The COCO file of each split, the folder their images are in, and the data as the report names it."""
        data = self.cfg["data"]
        root = Path(data["root"]).expanduser() if data["root"] is not None else None
        files = {s: data.get(f"{s}_json") for s in SPLITS}
        fmt = find_format(root, data["format"], self.task, files)
        if data["splits_file"] and any(files.values()):
            raise ConfigError("config keys 'data.splits_file' and 'data.train_json' both give the split; expected one")
        request = SplitRequest(data["val"], data["test"], data["split_seed"], files, data["max_images"], data["splits_file"])
        paths, image_root = fmt.coco_splits(root, Path(output_dir), request)
        return paths, image_root, fmt.describe(root, self.task)

    def datasets(self, output_dir: Path) -> RunData:
        paths, root, what = self.coco_files(output_dir)
        datasets = {s: self.dataset(self.coco_split(paths[s], root, s == "train"), s == "train") if paths[s] else None
                    for s in SPLITS}
        if datasets["train"].class_names != datasets["val"].class_names:
            raise DatasetError(f"{paths['train']} and {paths['val']} have different categories; expected the same")
        for s in ("train", "val"):
            if not len(datasets[s]):
                raise DatasetError(f"the {s} split ({paths[s]}) holds no image")
        train = datasets["train"]
        if self.scale is not None and self.network_size is not None:
            infos = (train.image_info(i) for i in range(len(train)))
            check_crop_fits(self.train_size, self.scale,
                            ((int(i["height"]), int(i["width"])) for i in infos), f"the training split ({paths['train']})")
        logger.info("dataset %s: %s; categories %s", what,
                    ", ".join(f"{s} {len(d)} images" for s, d in datasets.items() if d is not None), train.class_names)
        names = train.class_names
        categories = [{"id": int(train.category_of[k]), "name": names[k - 1] if k - 1 < len(names) else str(k)}
                      for k in sorted(train.category_of)]
        ids = Path(output_dir) / "coco" / "splits.json"  # the image ids of each split, where the run converted them
        return RunData(datasets, list(names), train.num_classes, what,
                       {s: len(d) for s, d in datasets.items() if d is not None},
                       files={"splits.json": read_json(ids, "splits file", "a splits.json", dict)} if ids.is_file() else {},
                       checkpoint_facts={"categories": categories})

    # ---- training

    def loss(self, data: RunData) -> LossStep:
        return self.loss_step

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch and its named parts (floats, for the log)."""
        raise NotImplementedError

    # ---- prediction

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """Default: the image as a float tensor in [0, 1]."""
        return image_tensor(image)

    @property
    def mask_threshold(self) -> float:
        return float(self.cfg["eval"]["mask_threshold"])

    def result(self, raw: dict[str, Any], score_threshold: float = 0.5) -> dict[str, np.ndarray]:
        """Instances above ``score_threshold`` by decreasing score: ``masks`` (N, H, W) bool, ``boxes``, ``scores``,
        ``labels`` and ``instance_map`` (H, W), 0 background and 1..N."""
        scores = raw["scores"].detach().float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= score_threshold]
        masks = binary_masks(raw["masks"], self.mask_threshold)[order]
        return {
            "masks": masks,
            "boxes": raw["boxes"].detach().float().cpu().numpy()[order],
            "scores": scores[order],
            "labels": raw["labels"].detach().cpu().numpy()[order],
            "instance_map": instance_map(masks),
        }

    def coco_results_of(self, raw: dict[str, Any], image_id: int, category_of: dict[int, int]) -> tuple[list, list]:
        """One image's detections as COCO results (bbox, segm)."""
        return detections_to_results(raw, image_id, category_of, self.mask_threshold)

    def write_prediction(self, raw: dict[str, Any], result: dict[str, np.ndarray], image: np.ndarray, name: str,
                         output_dir: Path, class_names: Sequence[str], overlays: bool) -> dict[str, Any]:
        """``instances/<name>.png`` (16-bit ids by decreasing score), the instances with scores, boxes and areas,
        and the overlay."""
        Image.fromarray(result["instance_map"]).save(output_dir / "instances" / f"{name}.png", compress_level=1)
        entry = {"instances": [
            {"id": k + 1, "score": round(float(s), 5), "box": [round(float(v), 2) for v in b],
             "category": class_names[int(label) - 1] if 0 < int(label) <= len(class_names) else str(int(label)),
             "area": int(m.sum())}
            for k, (s, b, label, m) in enumerate(zip(result["scores"], result["boxes"], result["labels"], result["masks"]))
        ]}
        if overlays:
            picture = instance_overlay_picture(image, result["instance_map"], result["scores"], result["boxes"])
            Image.fromarray(picture).save(output_dir / "overlays" / f"{name}.jpg", quality=90)
        return entry

    def extra_panel(self, outputs: Any, index: int, size: tuple[int, int]) -> tuple[np.ndarray, str] | None:
        """An extra picture for the report's overlays from a batch's :meth:`forward` outputs (an array at
        ``size`` and its title), or None."""
        return None

    # ---- evaluation

    def evaluators(self, dataset: Any, loss: Any = None, final: bool = False, figures: bool = True) -> list[Evaluator]:
        """The task's evaluators; ``final``: with the failure analysis (per image, errors, calibration), whose
        figures are drawn with ``figures``."""
        return build_evaluators(self.task, coco_gt=dataset.coco, category_of=dataset.category_of,
                                mask_threshold=self.mask_threshold, backend=self.cfg["eval"]["backend"], analyze=final,
                                score_threshold=float(self.cfg["eval"]["score_threshold"]),
                                num_worst=int(self.cfg["report"].get("num_worst", 6)), figures=figures)

    def evaluate(self, run: RunLike, model: nn.Module, split: str, final: bool = False) -> dict[str, float]:
        dataset, precision = run.data.datasets[split], run.precision
        tta = final and run.cfg["eval"]["tta"]
        evaluators = self.evaluators(dataset, final=final, figures=final and split == report_split(run))

        def forward(model: nn.Module, batch: Any) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
            images, targets = batch
            with precision.autocast():
                outputs = self.forward(model, images, tta)
            return [self.postprocess(outputs, i, tuple(t["orig_size"])) for i, t in enumerate(targets)], targets

        # instance evaluators match on the host (pycocotools): detections come to the CPU once, here, and the
        # ground truth stays there (the run's device would send every target mask to the GPU and back)
        metrics = run_inference(model, run.loaders[split], evaluators, forward, desc=split, device=torch.device("cpu"))
        if final and distributed.is_main():  # process 0 holds every process's detections
            for ev in evaluators:
                ev.save(run.output_dir, split, metrics)
            keys = [k for cls in evaluator_classes(self.task) for k in cls.summary]
            logger.info("%s: %s", split, "  ".join(f"{k} {metrics[k]:.2f}" for k in keys))
        return metrics

    # ---- report

    def draw_overlays(self, run: RunLike, model: nn.Module, split: str) -> None:
        dataset, cfg = run.data.datasets[split], run.cfg
        if dataset is None:
            return
        rows = []
        was_training = model.training
        model.eval()
        try:
            for i in overlay_indices(cfg["report"]["num_overlays"], len(dataset)):
                raw_image, gt_masks = dataset.raw(i)
                size = tuple(raw_image.shape[:2])
                with torch.no_grad(), run.precision.autocast():
                    outputs = self.forward(model, [self.prepare(raw_image)])
                output = self.postprocess(outputs, 0, size)
                row = {
                    "image": raw_image,
                    "gt_masks": gt_masks,
                    "pred_masks": binary_masks(output["masks"], cfg["eval"]["mask_threshold"]),
                    "pred_scores": output["scores"].cpu().numpy(),
                    "title": dataset.image_info(i)["file_name"].split("/")[-1],
                }
                extra = self.extra_panel(outputs, 0, size)
                if extra is not None:
                    row["extra"], row["extra_title"] = extra
                rows.append(row)
        finally:
            model.train(was_training)
        if rows:
            plot_instances(rows, run.output_dir / f"overlays_{split}.png", score_threshold=cfg["eval"]["score_threshold"])

    def error_picture(self, run: RunLike, model: nn.Module, split: str, row: dict[str, Any]) -> np.ndarray | None:
        """The objects of the image of ``row`` (found, missed) and its detections above ``eval.score_threshold``
        marked with TIDE's error types, from the same matching as the analysis: its detections are those of the
        final evaluation (``results_<split>_segm.json``, with its test-time augmentation if any), not predicted
        again."""
        dataset = run.data.datasets[split]
        index = {int(dataset.image_info(i)["id"]): i for i in range(len(dataset))}.get(int(row["image_id"]))
        if index is None:
            return None
        image = dataset.raw(index)[0]
        segm = read_json(Path(run.output_dir) / f"results_{split}_segm.json", "results file",
                         "the final evaluation's COCO results", list)  # image_detections keeps this image's
        detected = image_detections(dataset.coco, segm, "segm", [int(row["image_id"])])[0]
        labels = error_labels(detected)
        threshold = float(run.cfg["eval"]["score_threshold"])
        shown = [i for i, kind in enumerate(labels.det_kind) if kind != "ignored" and detected.scores[i] >= threshold]
        found = {int(labels.matches.det_gt[i]) for i in shown if labels.matches.det_gt[i] >= 0}
        poorly = {int(labels.det_target[i]) for i in shown if labels.det_target[i] >= 0}
        gt_kinds = ["matched" if j in found else "fixable" if j in poorly else "missed" for j in range(len(detected.gt_classes))]
        anns = [a for a in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[int(row["image_id"])])) if not a.get("iscrowd", 0)]
        gt_masks = np.array([dataset.coco.annToMask(a) for a in anns], dtype=bool).reshape(-1, *image.shape[:2])
        det_masks = np.array([mask_utils.decode(result_rle(segm[int(detected.result_index[i])]["segmentation"])) for i in shown],
                             dtype=bool).reshape(-1, *image.shape[:2])
        return instance_error_picture(image, gt_masks, gt_kinds, det_masks, [labels.det_kind[i] for i in shown],
                                      [detected.scores[i] for i in shown])

    def facts(self) -> dict[str, Any]:
        return {"method": self.name}

    def write_report(self, run: RunLike, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        cfg, output_dir = run.cfg, run.output_dir
        report = Report(f"Instance segmentation: {self.title}", output_dir)
        report.bullets([
            f"command: `{run.command}`" if run.command else "command: (library call)",
            f"dataset: {run.data.description}; split sizes (images): " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
            *self.data_notes(),
            f"model: `{cfg['model']}`, {summary['parameters']:,} parameters",
            *filter(None, [self.size_description()]),
            training_note(summary),
            *init_note(summary),
            *(["final evaluation with horizontal-flip test-time augmentation (eval.tta)"] if cfg["eval"]["tta"] else []),
            "COCO evaluation with pycocotools; results files: `results_<split>_segm.json` (masks, without boxes, so "
            "areas are mask areas) and `results_<split>_bbox.json`",
        ])
        for cls in evaluator_classes(self.task):
            cls.report(report, summary)
        report.heading("Training curves")
        if history:
            plot_loss_curves(history, output_dir / "loss_curves.png", metrics=("segm/AP", "bbox/AP"))
            report.image("loss_curves.png", "training loss per epoch; validation mask and box AP")
        split = "test" if "test" in summary else "val"
        if (output_dir / f"overlays_{split}.png").is_file():
            report.heading(f"Examples ({split})")
            report.image(f"overlays_{split}.png", f"{split} images: ground-truth instances and predictions (one colour each, with scores)")
        report_per_image(report, output_dir, summary, "mask AP")
        report.heading("Files")
        report.bullets([
            "`config.yaml`: the resolved config; `coco/`: the COCO files of each split and, with `splits.json`, "
            "its image ids (for converted data)",
            "`metrics.jsonl`: one line per epoch; `metrics.json`: the final val and test metrics",
            "`per_image_<split>.csv`: every image's objects, detections (score >= eval.score_threshold), matched, "
            "false and missed ones at IoU 0.5, its mask AP and AP50; `worst_<split>/`: the gallery's pictures; "
            "`report.html`: this report as one page (pictures embedded, tables sortable)",
            "`last.pt` (`last.prev.pt`: the one before), `best.pt`: checkpoints; `log.txt`: the log",
        ])
        report.save(output_dir / "report.md")

    def write_oracle_report(self, output_dir: Path, summary: dict[str, Any], description: str, command: str) -> None:
        """Report of ``--oracle``: the post-processing on ground-truth targets."""
        report = Report(f"{self.title} oracle: post-processing on ground-truth targets", output_dir)
        report.bullets([
            f"command: `{command}`" if command else "command: (library call)",
            f"dataset: {description}; split sizes (images): " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
            *self.data_notes(),
            *(f"{k}: {v}" for k, v in self.oracle_facts().items()),
            "targets computed from the ground-truth masks, as the training targets are, then the same "
            "post-processing and COCO evaluation as a trained model: the AP a perfect network would reach",
        ])
        for cls in evaluator_classes(self.task):
            cls.report(report, summary)
        report.save(output_dir / "report.md")
