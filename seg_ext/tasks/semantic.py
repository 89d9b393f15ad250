"""Semantic segmentation end to end: data -> model -> training (or counting, for the baseline) -> val/test
evaluation with the best checkpoint -> ``metrics.json`` and ``report.md``.

``train_semantic`` and ``evaluate_semantic`` are what ``tools/train_semantic.py`` calls.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_ext.config import choice, save_config
from seg_ext.data.semantic import SemanticSegDataset, build_semantic_datasets
from seg_ext.data.transforms import build_transforms, denormalize, image_size_from
from seg_ext.engine import (
    Trainer,
    atomic_save,
    atomic_write_text,
    build_optimizer,
    load_checkpoint,
    lr_factor_fn,
    make_loader,
    place_model,
    Precision,
    seed_everything,
    setup_run,
    to_jsonable,
)
from seg_ext.errors import DatasetError, SegExtError
from seg_ext.evaluation import MeanMetric, SemSegEvaluator, run_inference
from seg_ext.losses import CLASS_WEIGHT_MODES, class_weights, weighted_cross_entropy
from seg_ext.models import build_model
from seg_ext.report import Report, write_json
from seg_ext.tasks.common import prepare_output_dir, run_facts
from seg_ext.visualize import plot_confusion, plot_loss_curves, plot_overlays

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("mIoU", "mAP", "fwIoU", "pixel_acc", "mean_acc")


def _datasets(cfg: dict[str, Any]) -> tuple[dict[str, SemanticSegDataset], dict[str, list[str]]]:
    seed = int(cfg["train"]["seed"])
    transforms = {
        "train": build_transforms(cfg, train=True, seed=seed),
        "val": build_transforms(cfg, train=False),
        "test": build_transforms(cfg, train=False),
    }
    datasets, splits = build_semantic_datasets(cfg, transforms)
    if not splits["val"]:
        raise DatasetError("the val split is empty; set data.val to a count or fraction of the images")
    return datasets, splits


def _eval_loader(cfg: dict[str, Any], dataset: SemanticSegDataset, device: torch.device):
    return make_loader(
        dataset,
        batch_size=int(cfg["data"]["batch_size"]),
        shuffle=False,
        num_workers=int(cfg["data"]["num_workers"]),
        seed=int(cfg["train"]["seed"]),
        pin_memory=device.type == "cuda",
    )


def _class_weights(cfg: dict[str, Any], train_set: SemanticSegDataset) -> torch.Tensor | None:
    """Class weights of ``loss.class_weights``; the training masks are read only when weights are asked for."""
    mode = choice(cfg["loss"]["class_weights"], "loss.class_weights", CLASS_WEIGHT_MODES)
    return None if mode == "none" else class_weights(train_set.class_pixel_counts(), mode)


def _model(cfg: dict[str, Any], num_classes: int, device: torch.device) -> tuple[nn.Module, Precision]:
    model = build_model(cfg["model"], num_classes=num_classes, image_size=image_size_from(cfg))
    return place_model(model, cfg["train"], device)


def _forward(precision: Precision):
    device = precision.device

    def forward(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"].to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        return logits.float(), batch["mask"].to(device, non_blocking=True)

    return forward


def _evaluate(
    model: nn.Module, loader, dataset: SemanticSegDataset, precision: Precision, weight: torch.Tensor | None, desc: str,
) -> tuple[dict[str, float], SemSegEvaluator]:
    evaluator = SemSegEvaluator(dataset.num_classes, dataset.ignore_index, dataset.class_names)
    w = None if weight is None else weight.to(precision.device)
    loss = MeanMetric(
        "loss", lambda logits, target: (float(weighted_cross_entropy(logits, target, w, dataset.ignore_index)), len(target))
    )
    metrics = run_inference(model, loader, [evaluator, loss], _forward(precision), desc=desc)
    return metrics, evaluator


# ---- training -------------------------------------------------------------------------------------------


def train_semantic(cfg: dict[str, Any], output_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train the configured model, evaluate its best checkpoint on val and test, write the report.

    Returns:
        The content of ``metrics.json``.
    """
    output_dir = prepare_output_dir(Path(output_dir), resume)
    device = setup_run(cfg["train"])
    datasets, splits = _datasets(cfg)
    save_config(cfg, output_dir / "config.yaml")
    write_json(splits, output_dir / "splits.json")
    train_set = datasets["train"]
    num_classes = train_set.num_classes
    model, precision = _model(cfg, num_classes, device)
    logger.info(
        "model %s: %s parameters, device %s", cfg["model"]["name"], f"{sum(p.numel() for p in model.parameters()):,}", device
    )
    loaders = {s: _eval_loader(cfg, datasets[s], device) for s in ("val", "test")}
    meta = {"config": cfg, "class_names": train_set.class_names, "task": "semantic"}

    weight = _class_weights(cfg, train_set)
    if weight is not None:
        logger.info("class weights (%s): %s", cfg["loss"]["class_weights"], np.round(weight.numpy(), 3).tolist())

    start = time.perf_counter()
    if getattr(model, "fitted_by_counting", False):
        history = _fit_by_counting(model, cfg, datasets, loaders, precision, weight, output_dir, meta)
        state, epochs = {"epoch": 1, "best_epoch": 1, "train_seconds": time.perf_counter() - start}, 1
    else:
        train_loader = make_loader(
            train_set,
            batch_size=int(cfg["data"]["batch_size"]),
            shuffle=True,
            num_workers=int(cfg["data"]["num_workers"]),
            seed=int(cfg["train"]["seed"]),
            drop_last=len(train_set) > int(cfg["data"]["batch_size"]),
            pin_memory=device.type == "cuda",
        )
        optimizer = build_optimizer(model.parameters(), cfg["train"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg["train"], len(train_loader)))
        w = None if weight is None else weight.to(device)
        ignore = train_set.ignore_index

        def loss_step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
            logits = model(batch["image"].to(device, non_blocking=True))
            target = batch["mask"].to(device, non_blocking=True)
            return weighted_cross_entropy(logits.float(), target, w, ignore), {}

        def validate(model: nn.Module) -> dict[str, float]:
            return _evaluate(model, loaders["val"], datasets["val"], precision, weight, "val")[0]

        trainer = Trainer(
            model, optimizer, scheduler, train_loader, loss_step, validate, output_dir,
            epochs=int(cfg["train"]["epochs"]), best_metric=cfg["train"]["best_metric"],
            precision=precision, grad_clip=cfg["train"]["grad_clip"],
            eval_every=int(cfg["train"]["eval_every"]), meta=meta,
        )
        if resume:
            trainer.resume(output_dir / "last.pt")
        state, epochs = vars(trainer.fit()), int(cfg["train"]["epochs"])
        history = state["history"]
        best = output_dir / ("best.pt" if (output_dir / "best.pt").is_file() else "last.pt")
        model.load_state_dict(load_checkpoint(best)["model"])
        logger.info("training took %.1fs; evaluating %s (epoch %s)", time.perf_counter() - start, best.name, state["best_epoch"])

    summary = _final_evaluation(model, cfg, datasets, loaders, precision, weight, output_dir)
    summary.update(run_facts(cfg, model, precision, {s: len(v) for s, v in splits.items()}, state, epochs))
    write_json(summary, output_dir / "metrics.json")
    _write_report(output_dir, cfg, summary, history, datasets["train"].class_names, command)
    return summary


def _fit_by_counting(model, cfg, datasets, loaders, precision, weight, output_dir, meta) -> list[dict[str, Any]]:
    """The baseline: count labels over the training split at the evaluation size; one 'epoch'."""
    counting = SemanticSegDataset(datasets["train"].source, datasets["train"].ids, build_transforms(cfg, train=False))
    loader = _eval_loader(cfg, counting, precision.device)
    start = time.perf_counter()
    model.fit((batch["mask"] for batch in loader), ignore_index=counting.ignore_index)
    seconds = time.perf_counter() - start
    val, _ = _evaluate(model, loaders["val"], datasets["val"], precision, weight, "val")
    history = [{"epoch": 1, "train_seconds": round(seconds, 3), **{f"val/{k}": v for k, v in val.items()}}]
    ckpt = {"version": 1, "model": model.state_dict(), "state": {"epoch": 1, "history": history}, **meta}
    atomic_save(ckpt, output_dir / "last.pt")
    atomic_save(ckpt, output_dir / "best.pt")
    atomic_write_text(json.dumps(to_jsonable(history[0])) + "\n", output_dir / "metrics.jsonl")
    logger.info("baseline fitted by counting %d training masks in %.1fs", len(counting), seconds)
    return history


def _final_evaluation(model, cfg, datasets, loaders, precision, weight, output_dir) -> dict[str, Any]:
    """Evaluate on val and test, draw the confusion matrices and test overlays."""
    summary: dict[str, Any] = {}
    class_names = datasets["train"].class_names
    for split in ("val", "test"):
        if not len(datasets[split]):
            logger.warning("the %s split is empty; not evaluated", split)
            continue
        metrics, evaluator = _evaluate(model, loaders[split], datasets[split], precision, weight, split)
        summary[split] = metrics
        plot_confusion(
            evaluator.confusion_matrix(), class_names,
            [metrics[f"AP/{c}"] for c in class_names], [metrics[f"IoU/{c}"] for c in class_names],
            output_dir / f"confusion_{split}.png", title=f"{split}: mIoU {metrics['mIoU']:.1f}, mAP {metrics['mAP']:.1f}",
        )
        logger.info(
            "%s: %s", split, "  ".join(f"{k} {metrics[k]:.2f}" for k in SUMMARY_KEYS)
        )
    split = "test" if "test" in summary else "val"
    _overlays(model, datasets[split], precision.device, int(cfg["report"]["num_overlays"]), output_dir / f"overlays_{split}.png")
    return summary


def _overlays(model: nn.Module, dataset: SemanticSegDataset, device: torch.device, count: int, path: Path) -> None:
    if count <= 0 or not len(dataset):
        return
    indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    rows, titles = [], []
    model.eval()
    with torch.no_grad():
        for i in indices:
            sample = dataset[int(i)]
            logits = model(sample["image"].unsqueeze(0).to(device))
            rows.append((denormalize(sample["image"]), sample["mask"].numpy(), logits.argmax(1)[0].cpu().numpy()))
            titles.append(sample["image_id"])
    plot_overlays(rows, dataset.class_names, path, dataset.ignore_index, titles)


def _write_report(
    output_dir: Path, cfg: dict[str, Any], summary: dict[str, Any], history: list[dict[str, Any]],
    class_names: list[str], command: str,
) -> None:
    data = cfg["data"]
    report = Report(f"Semantic segmentation: {cfg['model']['name']}")
    report.bullets([
        f"command: `{command}`" if command else "command: (library call)",
        f"dataset: `{data['root'] or 'built-in synthetic scenes'}` ({len(class_names)} classes: {', '.join(class_names)})",
        "split sizes: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) + " (ids in `splits.json`)",
        f"image size (H, W): {tuple(image_size_from(cfg))}; metrics are computed at this size",
        f"model: `{cfg['model']}`, {summary['parameters']:,} parameters",
        f"training: {summary['epochs']} epoch(s), best epoch {summary['best_epoch']} by val {summary['best_metric']}, "
        f"{summary['train_seconds']:.0f} s of training on {summary['device']} ({summary['precision']})",
    ])
    report.heading("Results (best checkpoint)")
    rows = [[split, *[summary[split][k] for k in SUMMARY_KEYS]] for split in ("val", "test") if split in summary]
    report.table(["split", "mIoU", "mAP", "fwIoU", "pixel acc", "mean acc"], rows)
    report.text("All numbers are percentages. AP is per-pixel average precision (VOC all-point) pooled over the split.")
    report.heading("Per class")
    splits = [s for s in ("test", "val") if s in summary]
    headers = ["class"] + [f"{s} {m}" for s in splits for m in ("IoU", "AP")]
    report.table(headers, [[c] + [summary[s][f"{m}/{c}"] for s in splits for m in ("IoU", "AP")] for c in class_names])
    report.heading("Training curves")
    if any("train/loss" in h for h in history):
        plot_loss_curves(history, output_dir / "loss_curves.png", metrics=("mIoU", "mAP"))
        report.image("loss_curves.png", "train and val loss per epoch; val mIoU and mAP")
    else:
        report.text("The baseline is fitted by counting labels, not by gradient descent: there is no loss curve.")
    for split in ("test", "val"):
        if (output_dir / f"confusion_{split}.png").is_file():
            report.heading(f"Confusion matrix ({split})")
            report.image(f"confusion_{split}.png", f"row-normalised confusion matrix on {split}, with AP and IoU per class")
    for split in ("test", "val"):
        if (output_dir / f"overlays_{split}.png").is_file():
            report.heading(f"Examples ({split})")
            report.image(f"overlays_{split}.png", f"{split} images: ground truth and prediction overlaid")
            break
    report.heading("Files")
    report.bullets([
        "`config.yaml`: the resolved config; `splits.json`: the image ids of each split",
        "`metrics.jsonl`: one line per epoch; `metrics.json`: the final val and test metrics",
        "`last.pt`, `best.pt`: checkpoints; `log.txt`: the log",
    ])
    report.save(output_dir / "report.md")


# ---- evaluation only ------------------------------------------------------------------------------------


def evaluate_semantic(cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str = "") -> dict[str, Any]:
    """Evaluate a checkpoint on val and test of the configured dataset; write metrics.json and the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task", "semantic") != "semantic":
        raise SegExtError(f"checkpoint {checkpoint} is from a {ckpt['task']} run; expected a semantic one")
    device = setup_run(cfg["train"])
    datasets, splits = _datasets(cfg)
    if datasets["train"].class_names != ckpt.get("class_names", datasets["train"].class_names):
        raise DatasetError(
            f"checkpoint {checkpoint} was trained on classes {ckpt['class_names']}, but the dataset has "
            f"{datasets['train'].class_names}"
        )
    save_config(cfg, output_dir / "config.yaml")
    write_json(splits, output_dir / "splits.json")
    model, precision = _model(cfg, datasets["train"].num_classes, device)
    model.load_state_dict(ckpt["model"])
    loaders = {s: _eval_loader(cfg, datasets[s], device) for s in ("val", "test")}
    weight = _class_weights(cfg, datasets["train"])
    summary = _final_evaluation(model, cfg, datasets, loaders, precision, weight, output_dir)
    state = ckpt.get("state", {})
    summary["checkpoint"] = str(checkpoint)
    summary.update(run_facts(cfg, model, precision, {s: len(v) for s, v in splits.items()}, state, state.get("epoch")))
    write_json(summary, output_dir / "metrics.json")
    _write_report(output_dir, cfg, summary, state.get("history", []), datasets["train"].class_names, command)
    return summary


# ---- looking at augmentation ----------------------------------------------------------------------------


def show_augmentations(cfg: dict[str, Any], output: Path, num_images: int = 4, per_image: int = 4) -> Path:
    """Draw training images (resized, first column) and ``per_image`` random augmentations of each, with their
    masks blended over them and outlined, so a person can check that image and mask stay aligned."""
    from seg_ext.visualize import plot_sample_grid

    seed_everything(int(cfg["train"]["seed"]))
    datasets, _ = build_semantic_datasets(cfg, {})
    train = datasets["train"]
    plain = build_transforms(cfg, train=False, normalize=False)
    augment = build_transforms(cfg, train=True, normalize=False, seed=int(cfg["train"]["seed"]))
    samples, titles = [], []
    for i in np.linspace(0, len(train) - 1, min(num_images, len(train))).round().astype(int):
        image, mask = train.load_pair(int(i))
        out = plain(image=image, mask=mask)
        samples.append((out["image"], out["mask"]))
        titles.append(f"{train.ids[i]} (resized)")
        for k in range(per_image):
            out = augment(image=image, mask=mask)
            samples.append((out["image"], out["mask"]))
            titles.append(f"augmented {k + 1}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_sample_grid(samples, train.class_names, output, columns=per_image + 1, ignore_index=train.ignore_index, titles=titles)
    return output
