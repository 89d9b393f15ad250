"""Instance segmentation end to end: Penn-Fudan (or any COCO data) -> COCO files -> Mask R-CNN or the watershed
UNet -> COCO box and mask AP on val and test -> results files, ``metrics.json`` and ``report.md``.

Both methods share the data, the engine, the evaluator and the report; what differs lives in a method object
(``MaskRCNNMethod`` here, ``WatershedMethod`` in ``seg_ext.watershed``) with four parts: ``build_model``,
``loss_step``, ``predict`` (model outputs -> per-image instances) and ``dataset`` (what training batches hold).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from seg_ext.config import choice, save_config
from seg_ext.data.coco import CocoInstanceDataset, coco_dataset, collate_instances
from seg_ext.data.pennfudan import convert_pennfudan
from seg_ext.engine import (
    Precision, Trainer, build_optimizer, load_checkpoint, lr_factor_fn, make_loader, place_model, setup_run,
)
from seg_ext.errors import ConfigError, DatasetError, SegExtError
from seg_ext.evaluation import run_inference
from seg_ext.evaluation.coco import STAT_NAMES, COCOEvaluator
from seg_ext.models import build_from_block
from seg_ext.models.maskrcnn import maskrcnn
from seg_ext.report import Report, write_json
from seg_ext.tasks.common import prepare_output_dir, run_facts
from seg_ext.visualize import plot_instances, plot_loss_curves

logger = logging.getLogger(__name__)

METHODS = ("maskrcnn", "watershed")
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
    fmt = choice(data["format"], "data.format", ("auto", "pennfudan", "coco"))
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
    params = {"root": str(root.resolve()), "seed": int(data["split_seed"]), "val": val, "test": test}
    marker = coco_dir / "conversion.json"
    paths = {s: coco_dir / f"instances_{s}.json" for s in SPLITS}
    if not (marker.is_file() and json.loads(marker.read_text()) == params and all(p.is_file() for p in paths.values())):
        convert_pennfudan(root, coco_dir, params["seed"], val, test)
        marker.write_text(json.dumps(params))
    return dict(paths), root, what


# ---- methods --------------------------------------------------------------------------------------------


def _to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


class MaskRCNNMethod:
    """torchvision Mask R-CNN: the model computes its own losses in training mode."""

    name = "maskrcnn"
    registry: dict[str, Callable[..., nn.Module]] = {"maskrcnn": maskrcnn}
    collate = staticmethod(collate_instances)

    def __init__(self, cfg: dict[str, Any], device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    def dataset(self, json_path: Path, image_root: Path, train: bool) -> CocoInstanceDataset:
        return coco_dataset(self.cfg, json_path, image_root, train)

    def build_model(self, num_classes: int) -> nn.Module:
        return build_from_block(self.registry, self.cfg["model"], {"num_classes": num_classes})

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        losses = model([i.to(self.device, non_blocking=True) for i in images], _to_device(targets, self.device))
        total = sum(losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    def predict(self, model: nn.Module, images: list[torch.Tensor], sizes: Any = None) -> list[dict[str, torch.Tensor]]:
        """Detections in each input image's own pixels (torchvision resizes internally and maps back)."""
        outputs = model([i.to(self.device, non_blocking=True) for i in images])
        return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]

    def extra_panel(self, model: nn.Module, image: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, str] | None:
        return None


def make_method(cfg: dict[str, Any], device: torch.device):
    """The method object named by ``cfg['method']``."""
    method = choice(cfg["method"], "method", METHODS)
    if method == "maskrcnn":
        return MaskRCNNMethod(cfg, device)
    from seg_ext.watershed import WatershedMethod

    return WatershedMethod(cfg, device)


# ---- training and evaluation ----------------------------------------------------------------------------


def _forward(method, precision: Precision):
    def forward(model: nn.Module, batch: Any) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
        images, targets = batch
        with precision.autocast():
            outputs = method.predict(model, images, [t["orig_size"] for t in targets])
        return outputs, targets

    return forward


def _eval_loaders(method, datasets: dict[str, Any], cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Loaders of the val and test splits, built once (their workers persist across evaluations)."""
    return {
        s: make_loader(datasets[s], batch_size=int(cfg["data"]["batch_size"]), shuffle=False,
                       num_workers=int(cfg["data"]["num_workers"]), seed=int(cfg["train"]["seed"]),
                       collate_fn=method.collate, pin_memory=device.type == "cuda")
        for s in ("val", "test") if datasets[s] is not None and len(datasets[s])
    }


def _evaluate(method, model, dataset: CocoInstanceDataset, loader, cfg, precision: Precision,
              desc: str) -> tuple[dict[str, float], COCOEvaluator]:
    evaluator = COCOEvaluator(dataset.coco, dataset.category_of, mask_threshold=float(cfg["eval"]["mask_threshold"]),
                              backend=cfg["eval"]["backend"])
    metrics = run_inference(model, loader, evaluator, _forward(method, precision), desc=desc)
    return metrics, evaluator


def _datasets(method, cfg, output_dir: Path) -> tuple[dict[str, Any], str]:
    paths, root, what = instance_data(cfg, output_dir)
    datasets = {s: method.dataset(paths[s], root, train=(s == "train")) if paths[s] else None for s in SPLITS}
    if datasets["train"].class_names != datasets["val"].class_names:
        raise DatasetError(f"{paths['train']} and {paths['val']} have different categories; expected the same")
    for s in ("train", "val"):
        if not len(datasets[s]):
            raise DatasetError(f"the {s} split ({paths[s]}) holds no image")
    logger.info("dataset %s: %s; categories %s", what,
                ", ".join(f"{s} {len(d)} images" for s, d in datasets.items() if d is not None), datasets["train"].class_names)
    return datasets, what


def train_instance(cfg: dict[str, Any], output_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train Mask R-CNN or the watershed UNet, evaluate the best checkpoint on val and test, write the report."""
    output_dir = prepare_output_dir(Path(output_dir), resume)
    device = setup_run(cfg["train"])
    method = make_method(cfg, device)
    datasets, what = _datasets(method, cfg, output_dir)
    save_config(cfg, output_dir / "config.yaml")
    train_set = datasets["train"]
    model, precision = place_model(method.build_model(train_set.num_classes), cfg["train"], device)
    logger.info("%s: %s parameters, device %s", cfg["model"]["name"], f"{sum(p.numel() for p in model.parameters()):,}", device)

    train_loader = make_loader(train_set, batch_size=int(cfg["data"]["batch_size"]), shuffle=True,
                               num_workers=int(cfg["data"]["num_workers"]), seed=int(cfg["train"]["seed"]),
                               collate_fn=method.collate, drop_last=len(train_set) > int(cfg["data"]["batch_size"]),
                               pin_memory=device.type == "cuda")
    loaders = _eval_loaders(method, datasets, cfg, device)
    optimizer = build_optimizer(model.parameters(), cfg["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg["train"], len(train_loader)))
    trainer = Trainer(
        model, optimizer, scheduler, train_loader, method.loss_step,
        lambda m: _evaluate(method, m, datasets["val"], loaders["val"], cfg, precision, "val")[0], output_dir,
        epochs=int(cfg["train"]["epochs"]), best_metric=cfg["train"]["best_metric"], precision=precision,
        grad_clip=cfg["train"]["grad_clip"], eval_every=int(cfg["train"]["eval_every"]),
        meta={"config": cfg, "class_names": train_set.class_names, "task": "instance"},
    )
    if resume:
        trainer.resume(output_dir / "last.pt")
    start = time.perf_counter()
    state = vars(trainer.fit())
    best = output_dir / ("best.pt" if (output_dir / "best.pt").is_file() else "last.pt")
    model.load_state_dict(load_checkpoint(best)["model"])
    logger.info("training took %.1fs; evaluating %s (epoch %s)", time.perf_counter() - start, best.name, state["best_epoch"])
    return _finish(method, model, datasets, loaders, cfg, precision, output_dir, state, int(cfg["train"]["epochs"]), what,
                   command)


def evaluate_instance(cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str = "") -> dict[str, Any]:
    """Evaluate a checkpoint on val and test; writes results files, metrics.json and the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") != "instance":
        raise SegExtError(f"checkpoint {checkpoint} is not from an instance-segmentation run")
    device = setup_run(cfg["train"])
    method = make_method(cfg, device)
    datasets, what = _datasets(method, cfg, output_dir)
    save_config(cfg, output_dir / "config.yaml")
    model, precision = place_model(method.build_model(datasets["train"].num_classes), cfg["train"], device)
    model.load_state_dict(ckpt["model"])
    state = ckpt.get("state", {})
    loaders = _eval_loaders(method, datasets, cfg, device)
    return _finish(method, model, datasets, loaders, cfg, precision, output_dir, state, state.get("epoch"), what, command,
                   checkpoint=str(checkpoint))


def _finish(method, model, datasets, loaders, cfg, precision: Precision, output_dir: Path, state: dict[str, Any],
            epochs: Any, what: str, command: str, **extra: Any) -> dict[str, Any]:
    """Evaluate on val and test, then write metrics.json and the report; returns the summary."""
    summary = _final_evaluation(method, model, datasets, loaders, cfg, precision, output_dir)
    summary.update(extra, method=cfg["method"])
    summary.update(run_facts(cfg, model, precision, {s: len(d) for s, d in datasets.items() if d is not None}, state, epochs))
    write_json(summary, output_dir / "metrics.json")
    _write_report(output_dir, cfg, summary, state.get("history", []), what, command)
    return summary


def _final_evaluation(method, model, datasets, loaders, cfg, precision: Precision, output_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for split in ("val", "test"):
        dataset = datasets[split]
        if split not in loaders:
            logger.warning("no %s split; not evaluated", split)
            continue
        metrics, evaluator = _evaluate(method, model, dataset, loaders[split], cfg, precision, split)
        summary[split] = metrics
        for iou_type in ("segm", "bbox"):
            evaluator.save_results(output_dir / f"results_{split}_{iou_type}.json", iou_type)
        logger.info("%s: bbox AP %.2f  segm AP %.2f  (AP50 %.2f / %.2f)", split, metrics["bbox/AP"], metrics["segm/AP"],
                    metrics["bbox/AP50"], metrics["segm/AP50"])
    split = "test" if "test" in summary else "val"
    _overlays(method, model, datasets[split], cfg, output_dir / f"overlays_{split}.png")
    return summary


def _overlays(method, model: nn.Module, dataset: CocoInstanceDataset, cfg: dict[str, Any], path: Path) -> None:
    count = int(cfg["report"]["num_overlays"])
    if count <= 0 or dataset is None or not len(dataset):
        return
    rows = []
    model.eval()
    with torch.no_grad():
        for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int):
            image, target = dataset[int(i)]
            raw_image, gt_masks = dataset.raw(int(i))
            size = tuple(raw_image.shape[:2])
            output = method.predict(model, [image], [size])[0]
            masks = output["masks"]
            masks = (masks[:, 0] if masks.dim() == 4 else masks).float() > float(cfg["eval"]["mask_threshold"])
            row = {
                "image": raw_image,
                "gt_masks": gt_masks,
                "pred_masks": masks.cpu().numpy(),
                "pred_scores": output["scores"].cpu().numpy(),
                "title": dataset.image_info(int(i))["file_name"].split("/")[-1],
            }
            extra = method.extra_panel(model, image, size)
            if extra is not None:
                row["extra"], row["extra_title"] = extra
            rows.append(row)
    plot_instances(rows, path, score_threshold=float(cfg["eval"]["score_threshold"]))


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
        "`last.pt`, `best.pt`: checkpoints; `log.txt`: the log",
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
