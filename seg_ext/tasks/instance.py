"""Instance segmentation as a :class:`~seg_ext.tasks.base.Task`: Penn-Fudan (or any COCO data) -> COCO files
-> an instance method (``seg_ext.methods``: Mask R-CNN or the watershed UNet) -> COCO box and mask AP on val and
test -> results files, ``metrics.json`` and ``report.md``. Also the watershed oracle (:func:`run_oracle`).

A new method is a class in ``seg_ext/methods/`` and an entry in ``seg_ext.methods.METHODS``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_ext import distributed
from seg_ext.config import save_config
from seg_ext.data.coco import CocoInstanceDataset
from seg_ext.data.pennfudan import convert_pennfudan
from seg_ext.data.transforms import build_instance_transforms
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.evaluation import run_inference
from seg_ext.evaluation.coco import STAT_NAMES, COCOEvaluator, binary_masks
from seg_ext.inference import Predictor
from seg_ext.io import write_json
from seg_ext.methods import IMAGE_SIZE_KEYS, WatershedMethod, build_method
from seg_ext.models import build_from_block
from seg_ext.report import Report
from seg_ext.tasks import base
from seg_ext.tasks.run import Run
from seg_ext.visualize import plot_instances, plot_loss_curves

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PENNFUDAN_SPLIT = (15, 50)  # val, test: as torchvision's tutorial keeps 50 test images
SYNTHETIC_SPLIT = (10, 20)


# ---- data -----------------------------------------------------------------------------------------------


def instance_data(cfg: dict[str, Any], output_dir: Path) -> tuple[dict[str, Path | None], Path, str]:
    """COCO files of each split, their image root, and a description of the data.

    Penn-Fudan folders (and the built-in synthetic pedestrians, written in that layout) are converted into
    ``<output_dir>/coco``; a conversion that is already there with the same parameters is reused.
    """
    data = cfg["data"]
    fmt = data["format"]
    if data["root"] is None:
        if fmt == "coco":
            raise ConfigError("config key 'data.format' is coco but data.root is null; expected the COCO image folder")
        from seg_ext.data.synthetic import ensure_synthetic_pedestrians

        root, fmt, default_split, what = ensure_synthetic_pedestrians(), "pennfudan", SYNTHETIC_SPLIT, "built-in synthetic pedestrians"
    else:
        root = Path(data["root"]).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist")
        if fmt == "auto":
            if (root / "PNGImages").is_dir() and (root / "PedMasks").is_dir():
                fmt = "pennfudan"
            elif data["train_json"]:
                fmt = "coco"
            else:
                raise DatasetError(
                    f"dataset folder {root} is not in the Penn-Fudan layout (PNGImages/, PedMasks/); for COCO data set "
                    "data.format=coco with data.train_json and data.val_json"
                )
        default_split, what = PENNFUDAN_SPLIT, str(root)
    if fmt == "coco":
        for key in ("train_json", "val_json"):
            if not data[key]:
                raise ConfigError(f"config key 'data.{key}' is empty; COCO data needs the instance files of train and val")
        return {s: Path(data[f"{s}_json"]).expanduser() if data[f"{s}_json"] else None for s in SPLITS}, root, what

    val = data["val"] if data["val"] is not None else default_split[0]
    test = data["test"] if data["test"] is not None else default_split[1]
    coco_dir = output_dir / "coco"
    params = {"root": str(root.resolve()), "seed": data["split_seed"], "val": val, "test": test}
    marker = coco_dir / "conversion.json"
    paths = {s: coco_dir / f"instances_{s}.json" for s in SPLITS}
    if not (marker.is_file() and json.loads(marker.read_text()) == params and all(p.is_file() for p in paths.values())):
        convert_pennfudan(root, coco_dir, params["seed"], val, test)
        marker.write_text(json.dumps(params))
    return dict(paths), root, what


def coco_evaluator(dataset: Any, cfg: dict[str, Any]) -> COCOEvaluator:
    """A run's COCO evaluation of ``dataset`` (a COCO split): the mask threshold and backend of ``cfg``."""
    return COCOEvaluator(dataset.coco, dataset.category_of, mask_threshold=cfg["eval"]["mask_threshold"],
                         backend=cfg["eval"]["backend"])


def coco_split(cfg: dict[str, Any], json_path: Path, image_root: Path, train: bool) -> CocoInstanceDataset:
    """One COCO split as an instance config asks for it: training gets the augmentation."""
    aug = cfg["augment"]
    transform = build_instance_transforms(train, aug["hflip_prob"], aug["scale_jitter"], aug["crop_fraction"],
                                          seed=cfg["train"]["seed"]) if train else None
    return CocoInstanceDataset(json_path, image_root, transform, cfg["data"]["min_box_size"])


# ---- the task -------------------------------------------------------------------------------------------


class InstanceTask(base.Task):
    """Instances of COCO categories, found by the configured method and scored with COCO AP."""

    name = "instance"

    def build_datasets(self, run: Run) -> None:
        self.method = build_method(run.cfg, run.device)
        self.collate = self.method.collate
        paths, root, self.what = instance_data(run.cfg, run.output_dir)
        run.datasets = {s: self.method.dataset(coco_split(run.cfg, paths[s], root, s == "train"), s == "train")
                        if paths[s] else None for s in SPLITS}
        if run.datasets["train"].class_names != run.datasets["val"].class_names:
            raise DatasetError(f"{paths['train']} and {paths['val']} have different categories; expected the same")
        for s in ("train", "val"):
            if not len(run.datasets[s]):
                raise DatasetError(f"the {s} split ({paths[s]}) holds no image")
        logger.info("dataset %s: %s; categories %s", self.what,
                    ", ".join(f"{s} {len(d)} images" for s, d in run.datasets.items() if d is not None),
                    run.datasets["train"].class_names)

    def build_model(self, run: Run) -> nn.Module:
        context = self.method.model_arguments(run.datasets["train"].num_classes)
        image_key = IMAGE_SIZE_KEYS.get(self.method.name)
        return build_from_block(self.method.models, run.cfg["model"], context,
                                context_keys={"image_size": image_key} if image_key else None)

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.method.loss_step(model, batch)

    def predictor(self, run: Run, model: nn.Module, tta: bool = False) -> Predictor:
        categories = [c["id"] for c in self.checkpoint_facts(run)["categories"]]
        return Predictor(model, run.cfg, self.name, run.datasets["train"].class_names, run.precision, self.method,
                         categories, tta=tta)

    def checkpoint_facts(self, run: Run) -> dict[str, Any]:
        """The COCO categories of the model's labels 1..K, for prediction without the dataset."""
        train = run.datasets["train"]
        names = train.class_names
        return {"categories": [{"id": int(train.category_of[k]), "name": names[k - 1] if k - 1 < len(names) else str(k)}
                               for k in sorted(train.category_of)]}

    def evaluate(self, run: Run, model: nn.Module, split: str, final: bool = False) -> dict[str, float]:
        dataset, predictor = run.datasets[split], self.predictor(run, model, tta=final and run.cfg["eval"]["tta"])
        evaluator = coco_evaluator(dataset, run.cfg)

        def forward(model: nn.Module, batch: Any) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
            images, targets = batch
            return predictor.run(images, [t["orig_size"] for t in targets]), targets

        metrics = run_inference(model, run.loaders[split], evaluator, forward, desc=split)
        if final and distributed.is_main():  # process 0 holds every process's detections
            for iou_type in ("segm", "bbox"):
                evaluator.save_results(run.output_dir / f"results_{split}_{iou_type}.json", iou_type)
            logger.info("%s: bbox AP %.2f  segm AP %.2f  (AP50 %.2f / %.2f)", split, metrics["bbox/AP"], metrics["segm/AP"],
                        metrics["bbox/AP50"], metrics["segm/AP50"])
        return metrics

    def draw_overlays(self, run: Run, model: nn.Module, split: str) -> None:
        dataset, cfg = run.datasets[split], run.cfg
        count = cfg["report"]["num_overlays"]
        if count <= 0 or dataset is None or not len(dataset):
            return
        predictor = self.predictor(run, model)
        rows = []
        for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int):
            raw_image, gt_masks = dataset.raw(int(i))
            size = tuple(raw_image.shape[:2])
            outputs = predictor.forward([predictor.prepare(raw_image)])
            output = predictor.postprocess(outputs, 0, size)
            row = {
                "image": raw_image,
                "gt_masks": gt_masks,
                "pred_masks": binary_masks(output["masks"], cfg["eval"]["mask_threshold"]),
                "pred_scores": output["scores"].cpu().numpy(),
                "title": dataset.image_info(int(i))["file_name"].split("/")[-1],
            }
            extra = self.method.extra_panel(outputs, 0, size)
            if extra is not None:
                row["extra"], row["extra_title"] = extra
            rows.append(row)
        plot_instances(rows, run.output_dir / f"overlays_{split}.png", score_threshold=cfg["eval"]["score_threshold"])

    def facts(self, run: Run) -> dict[str, Any]:
        return {"method": run.cfg["method"]}

    def write_report(self, run: Run, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        _write_report(run.output_dir, run.cfg, summary, history, self.what, run.command)


def train_instance(cfg: dict[str, Any], output_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train Mask R-CNN or the watershed UNet, evaluate the best checkpoint on val and test, write the report."""
    return base.train(InstanceTask(), cfg, output_dir, resume=resume, command=command)


def evaluate_instance(cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str = "") -> dict[str, Any]:
    """Evaluate a checkpoint on val and test; writes results files, metrics.json and the report."""
    return base.evaluate(InstanceTask(), cfg, checkpoint, output_dir, command=command)


# ---- the watershed oracle -------------------------------------------------------------------------------


def run_oracle(cfg: dict[str, Any], output_dir: Path, command: str = "") -> dict[str, Any]:
    """Post-process targets made from the ground truth (one-hot foreground and energy) and score them with the
    COCO evaluator on val and test: the AP the watershed method reaches with a perfect network."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = Run.start(cfg, output_dir, command)
    if distributed.is_distributed():
        raise ConfigError("the oracle trains nothing and runs in one process; start it without torchrun")
    task = InstanceTask()
    task.build_datasets(run)
    method = task.method
    if not isinstance(method, WatershedMethod):
        raise ConfigError("the oracle is for method watershed")
    save_config(cfg, output_dir / "config.yaml")
    summary: dict[str, Any] = {"method": "watershed oracle", "input_size": list(method.input_size), "post": method.post.as_dict()}
    for split in ("val", "test"):
        dataset = run.datasets[split]
        if dataset is None:
            continue
        evaluator = COCOEvaluator(dataset.coco, dataset.category_of, backend=cfg["eval"]["backend"])
        for i in range(len(dataset)):
            _, target = dataset[i]
            evaluator.process([method.instances(target["foreground"].numpy().astype(np.float32),
                                                target["level"].numpy().astype(np.float32), target["orig_size"])], [target])
        summary[split] = evaluator.evaluate()
        evaluator.save_results(output_dir / f"results_{split}_segm.json", "segm")
        logger.info("oracle %s: segm AP %.2f (AP50 %.2f, AP75 %.2f), bbox AP %.2f", split, summary[split]["segm/AP"],
                    summary[split]["segm/AP50"], summary[split]["segm/AP75"], summary[split]["bbox/AP"])
    summary["splits"] = task.split_sizes(run)
    write_json(summary, output_dir / "metrics.json")
    _oracle_report(output_dir, cfg, summary, task.what, command)
    return summary


# ---- reports --------------------------------------------------------------------------------------------


def _write_report(output_dir: Path, cfg: dict[str, Any], summary: dict[str, Any], history: list[dict[str, Any]],
                  what: str, command: str) -> None:
    model = cfg["model"]
    title = "Mask R-CNN" if cfg["method"] == "maskrcnn" else "dual-head UNet + watershed"
    report = Report(f"Instance segmentation: {title}")
    report.bullets([
        f"command: `{command}`" if command else "command: (library call)",
        f"dataset: {what}; split sizes (images): " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
        f"model: `{model}`, {summary['parameters']:,} parameters",
        f"training: {summary['epochs']} epoch(s), best epoch {summary['best_epoch']} by val {summary['best_metric']}, "
        f"{summary['train_seconds']:.0f} s of training on {summary['device']} ({summary['precision']})",
        *(["final evaluation with horizontal-flip test-time augmentation (eval.tta)"] if cfg["eval"]["tta"] else []),
        "COCO evaluation with pycocotools; results files: `results_<split>_segm.json` (masks, without boxes, so "
        "areas are mask areas) and `results_<split>_bbox.json`",
    ])
    _coco_tables(report, summary)
    report.text("Percentages; n/a where the split has no object of that size (COCO: small < 32², large > 96² px).")
    report.heading("Training curves")
    if history:
        plot_loss_curves(history, output_dir / "loss_curves.png", metrics=("segm/AP", "bbox/AP"))
        report.image("loss_curves.png", "training loss per epoch; validation mask and box AP")
    split = "test" if "test" in summary else "val"
    if (output_dir / f"overlays_{split}.png").is_file():
        report.heading(f"Examples ({split})")
        report.image(f"overlays_{split}.png", f"{split} images: ground-truth instances and predictions (one colour each, with scores)")
    report.heading("Files")
    report.bullets([
        "`config.yaml`: the resolved config; `coco/`: the COCO files of each split (for Penn-Fudan data)",
        "`metrics.jsonl`: one line per epoch; `metrics.json`: the final val and test metrics",
        "`last.pt` (`last.prev.pt`: the one before), `best.pt`: checkpoints; `log.txt`: the log",
    ])
    report.save(output_dir / "report.md")


def _oracle_report(output_dir: Path, cfg: dict[str, Any], summary: dict[str, Any], what: str, command: str) -> None:
    """Report of ``--oracle``: the watershed post-processing on ground-truth targets."""
    report = Report("Watershed oracle: post-processing on ground-truth targets")
    report.bullets([
        f"command: `{command}`" if command else "command: (library call)",
        f"dataset: {what}; split sizes (images): " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
        f"network input size {tuple(summary['input_size'])}; post-processing {summary['post']}",
        "foreground and energy levels computed from the ground-truth masks, as the training targets are, then the "
        "same watershed and COCO evaluation as a trained model: the AP a perfect network would reach",
    ])
    _coco_tables(report, summary)
    report.save(output_dir / "report.md")


def _coco_tables(report: Report, summary: dict[str, Any]) -> None:
    """The 12-number COCO summaries of each split, masks then boxes."""
    for iou_type, label in (("segm", "Mask AP (segm)"), ("bbox", "Box AP (bbox)")):
        report.heading(label)
        rows = [[split, *[summary[split][f"{iou_type}/{n}"] for n in STAT_NAMES]] for split in ("val", "test") if split in summary]
        report.table(["split", *STAT_NAMES], rows, digits=1)
