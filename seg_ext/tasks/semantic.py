"""Semantic segmentation as a :class:`~seg_ext.tasks.base.Task`: image/mask datasets, a per-pixel classifier,
weighted cross entropy, the confusion matrix / IoU / pixel AP evaluator, and its report. The per-pixel frequency
baseline trains with a :class:`~seg_ext.engine.CountingTrainer`.

``train_semantic`` and ``evaluate_semantic`` are what ``tools/train_semantic.py`` calls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from seg_ext import distributed
from seg_ext.data.semantic import SemanticSegDataset, build_semantic_datasets
from seg_ext.data.transforms import build_transforms
from seg_ext.engine import CountingTrainer, Trainer, seed_everything
from seg_ext.errors import DatasetError
from seg_ext.evaluation import Evaluator, MeanMetric, SemSegEvaluator, run_inference
from seg_ext.inference import Predictor
from seg_ext.io import write_json
from seg_ext.losses import class_weights, weighted_cross_entropy
from seg_ext.models import build_model
from seg_ext.report import Report
from seg_ext.tasks import base
from seg_ext.config import image_size
from seg_ext.tasks.run import Run
from seg_ext.visualize import plot_confusion, plot_loss_curves, plot_overlays

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("mIoU", "mAP", "fwIoU", "pixel_acc", "mean_acc")


def semantic_transforms(cfg: dict[str, Any], train: bool, normalize: bool = True):
    """The augmentation (``train``) or evaluation pipeline of a semantic config."""
    if not train:
        return build_transforms(image_size(cfg), train=False, normalize=normalize)
    aug = cfg["augment"]
    return build_transforms(image_size(cfg), train=True, crop_scale=aug["crop_scale"], crop_ratio=aug["crop_ratio"],
                            hflip_prob=aug["hflip_prob"], normalize=normalize, seed=cfg["train"]["seed"])


def semantic_datasets(cfg: dict[str, Any], transforms: dict[str, Callable | None]):
    """The train/val/test datasets of a semantic config, with ``transforms[split]``, and their image ids."""
    data = cfg["data"]
    return build_semantic_datasets(data["root"], transforms, format=data["format"], val=data["val"], test=data["test"],
                                   split_seed=data["split_seed"], splits_file=data["splits_file"])


class FullResolutionDataset(Dataset):
    """A split as the final evaluation reads it: the network's input (``prepare`` of the image) and the label
    map untouched, at the image's own size (``full`` False: as the evaluation transform resizes it)."""

    def __init__(self, dataset: SemanticSegDataset, prepare: Callable[[np.ndarray], torch.Tensor], full: bool = True) -> None:
        self.dataset, self.prepare, self.full = dataset, prepare, full

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.full:  # the evaluation transform's resized mask (eval.full_resolution false, with eval.tta)
            sample = self.dataset[index]
            return {"image": sample["image"], "mask": sample["mask"]}
        image, mask = self.dataset.load_pair(index)
        return {"image": self.prepare(image), "mask": torch.from_numpy(mask.astype(np.int64))}


def collate_full_resolution(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked (they share the network's size); masks as a list (each at its image's size)."""
    return {"image": torch.stack([b["image"] for b in batch]), "mask": [b["mask"] for b in batch]}


class AtImageSize(Evaluator):
    """Feeds evaluators each image's class probabilities at the image's own size (``Predictor.postprocess``)."""

    def __init__(self, predictor: Predictor, *evaluators: Evaluator) -> None:
        self.predictor, self.evaluators = predictor, evaluators

    def reset(self) -> None:
        for ev in self.evaluators:
            ev.reset()

    def process(self, outputs: torch.Tensor, masks: list[torch.Tensor]) -> None:
        for i, mask in enumerate(masks):
            probs = self.predictor.postprocess(outputs, i, tuple(mask.shape), probs=True)["probs"][None]
            for ev in self.evaluators:
                if isinstance(ev, SemSegEvaluator):
                    ev.process_probs(probs, mask[None])
                else:
                    ev.process(probs, mask[None])

    def evaluate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for ev in self.evaluators:
            results.update(ev.evaluate())
        return results

    def combine(self) -> None:
        for ev in self.evaluators:
            ev.combine()


class SemanticTask(base.Task):
    """Per-pixel classification of a folder / Stanford Background / Penn-Fudan dataset (or synthetic scenes)."""

    name = "semantic"

    def build_datasets(self, run: Run) -> None:
        transforms = {"train": semantic_transforms(run.cfg, train=True), "val": semantic_transforms(run.cfg, train=False),
                      "test": semantic_transforms(run.cfg, train=False)}
        run.datasets, self.splits = semantic_datasets(run.cfg, transforms)
        if not self.splits["val"]:
            raise DatasetError("the val split is empty; set data.val to a count or fraction of the images")

    def split_sizes(self, run: Run) -> dict[str, int]:
        return {s: len(v) for s, v in self.splits.items()}

    def save_files(self, run: Run) -> None:
        write_json(self.splits, run.output_dir / "splits.json")

    def build_model(self, run: Run) -> nn.Module:
        return build_model(run.cfg["model"], num_classes=run.datasets["train"].num_classes, image_size=image_size(run.cfg))

    def prepare(self, run: Run) -> None:
        """Class weights of ``loss.class_weights``; the training masks are read only when weights are asked for."""
        train = run.datasets["train"]
        mode = run.cfg["loss"]["class_weights"]
        self.weight = None if mode == "none" else class_weights(train.class_pixel_counts(), mode)
        if self.weight is not None:
            logger.info("class weights (%s): %s", mode, np.round(self.weight.numpy(), 3).tolist())
        self.device_weight = None if self.weight is None else self.weight.to(run.device)
        self.device, self.ignore_index = run.device, train.ignore_index

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"].to(self.device, non_blocking=True))
        target = batch["mask"].to(self.device, non_blocking=True)
        return weighted_cross_entropy(logits.float(), target, self.device_weight, self.ignore_index), {}

    def build_trainer(self, run: Run, model: nn.Module, meta: dict[str, Any]) -> Trainer:
        if not model.fitted_by_counting:
            return super().build_trainer(run, model, meta)
        # the baseline: count labels over the training split at the evaluation size; one 'epoch'
        train = run.datasets["train"]
        counting = SemanticSegDataset(train.source, train.ids, semantic_transforms(run.cfg, train=False))
        ignore = counting.ignore_index
        return CountingTrainer(model, run.loader(counting), lambda m, batch: m.count(batch["mask"], ignore),
                               lambda m: self.evaluate(run, m, "val"), run.output_dir, run.cfg["train"]["best_metric"],
                               run.precision, meta=meta)

    def evaluate(self, run: Run, model: nn.Module, split: str, final: bool = False) -> dict[str, float]:
        """Per-epoch validation scores at ``data.image_size``; the final evaluation with ``eval.full_resolution``
        scores each image at its own size, through the :class:`~seg_ext.inference.Predictor`."""
        dataset, precision = run.datasets[split], run.precision
        evaluator = SemSegEvaluator(dataset.num_classes, dataset.ignore_index, dataset.class_names)
        if final and (run.cfg["eval"]["full_resolution"] or run.cfg["eval"]["tta"]):
            predictor = Predictor(model, run.cfg, self.name, dataset.class_names, precision, tta=run.cfg["eval"]["tta"])
            full = FullResolutionDataset(dataset, predictor.prepare, run.cfg["eval"]["full_resolution"])
            loader = run.loader(full, collate_fn=collate_full_resolution)  # the final evaluation reads each split once
            scorer = AtImageSize(predictor, evaluator, self._loss(dataset, probabilities=True))
            metrics = run_inference(model, loader, scorer, lambda m, batch: (predictor.forward(batch["image"]), batch["mask"]),
                                    desc=split)
        else:
            def forward(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
                images = batch["image"].to(precision.device, non_blocking=True)
                with precision.autocast():
                    logits = model(images)
                return logits.float(), batch["mask"].to(precision.device, non_blocking=True)

            metrics = run_inference(model, run.loaders[split], [evaluator, self._loss(dataset)], forward, desc=split)
        if final and distributed.is_main():  # process 0 holds the whole split's confusion matrix
            class_names = dataset.class_names
            plot_confusion(
                evaluator.confusion_matrix(), class_names,
                [metrics[f"AP/{c}"] for c in class_names], [metrics[f"IoU/{c}"] for c in class_names],
                run.output_dir / f"confusion_{split}.png",
                title=f"{split}: mIoU {metrics['mIoU']:.1f}, mAP {metrics['mAP']:.1f}",
            )
            logger.info("%s: %s", split, "  ".join(f"{k} {metrics[k]:.2f}" for k in SUMMARY_KEYS))
        return metrics

    def _loss(self, dataset: SemanticSegDataset, probabilities: bool = False) -> MeanMetric:
        """The mean weighted cross entropy of the batches (of logits, or of probabilities)."""
        def value(scores: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
            logits = torch.log(scores.clamp_min(1e-30)) if probabilities else scores
            return float(weighted_cross_entropy(logits, target.to(logits.device), self.device_weight, dataset.ignore_index)), len(target)

        return MeanMetric("loss", value)

    def draw_overlays(self, run: Run, model: nn.Module, split: str) -> None:
        """A few images of ``split`` at their own size: the ground truth and the prediction."""
        dataset, count = run.datasets[split], run.cfg["report"]["num_overlays"]
        if count <= 0 or not len(dataset):
            return
        predictor = Predictor(model, run.cfg, self.name, dataset.class_names, run.precision)
        indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
        rows, titles = [], []
        for i in indices:
            image, mask = dataset.load_pair(int(i))
            rows.append((image, mask, predictor(image)["labels"]))
            titles.append(dataset.ids[int(i)])
        plot_overlays(rows, dataset.class_names, run.output_dir / f"overlays_{split}.png", dataset.ignore_index, titles)

    def check_checkpoint(self, ckpt: dict[str, Any], path: Path, run: Run) -> None:
        super().check_checkpoint(ckpt, path, run)
        names = run.datasets["train"].class_names
        if names != ckpt.get("class_names", names):
            raise DatasetError(f"checkpoint {path} was trained on classes {ckpt['class_names']}, but the dataset has {names}")

    def write_report(self, run: Run, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        _write_report(run.output_dir, run.cfg, summary, history, run.datasets["train"].class_names, run.command)


def train_semantic(cfg: dict[str, Any], output_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train the configured model, evaluate its best checkpoint on val and test, write the report.

    Returns:
        The content of ``metrics.json``.
    """
    return base.train(SemanticTask(), cfg, output_dir, resume=resume, command=command)


def evaluate_semantic(cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str = "") -> dict[str, Any]:
    """Evaluate a checkpoint on val and test of the configured dataset; write metrics.json and the report."""
    return base.evaluate(SemanticTask(), cfg, checkpoint, output_dir, command=command)


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
        f"image size (H, W): {image_size(cfg)}; " + ("final evaluation with horizontal-flip test-time augmentation; "
                                                      if cfg["eval"]["tta"] else "") + ("the final val and test metrics score each image at its own size "
        "(probabilities upsampled, masks untouched); per-epoch validation at the network's size"
        if cfg["eval"]["full_resolution"] else "metrics are computed at this size (masks resized)"),
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
        "`last.pt` (`last.prev.pt`: the one before), `best.pt`: checkpoints; `log.txt`: the log",
    ])
    report.save(output_dir / "report.md")


# ---- looking at augmentation ----------------------------------------------------------------------------


def show_augmentations(cfg: dict[str, Any], output: Path, num_images: int = 4, per_image: int = 4) -> Path:
    """Draw training images (resized, first column) and ``per_image`` random augmentations of each, with their
    masks blended over them and outlined, so a person can check that image and mask stay aligned."""
    from seg_ext.visualize import plot_sample_grid

    seed_everything(cfg["train"]["seed"])
    datasets, _ = semantic_datasets(cfg, {})
    train = datasets["train"]
    plain = semantic_transforms(cfg, train=False, normalize=False)
    augment = semantic_transforms(cfg, train=True, normalize=False)
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
