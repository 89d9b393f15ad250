"""Semantic segmentation as a method: a per-pixel classifier (``seg_ext.models.SEMANTIC_MODELS``) trained with
weighted cross entropy, scored by the semantic evaluators (confusion matrix, IoU, pixel AP), on any format of the
table that holds semantic masks. The per-pixel frequency baseline trains with a
:class:`~seg_ext.engine.CountingTrainer`.

Prediction: the image resized to ``data.image_size`` (or, with ``data.resize: scale``, scaled keeping its aspect
ratio and run whole or by windows: ``seg_ext.dense``) and normalised (:meth:`SemanticMethod.prepare`), softmax
probabilities (averaged with the mirror image's under TTA), resized bilinearly to the image's own size, then the
argmax (:meth:`SemanticMethod.postprocess`). The final val/test evaluation scores exactly that, at each image's
size (``eval.full_resolution``); per-epoch validation scores at ``data.image_size`` for speed.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from seg_ext import distributed
from seg_ext.config import CLASS_WEIGHT_MODES, TRAIN_DEFAULTS, choice, image_size, interval, pair, pixels
from seg_ext.data.files import image_size as file_image_size
from seg_ext.data.formats import find_format, get_format
from seg_ext.data.scale import stack_or_list
from seg_ext.data.semantic import SemanticSegDataset, build_semantic_datasets
from seg_ext.data.transforms import build_scaled_transforms, build_transforms
from seg_ext.dense import check_crop_fits, scaled_input, validate_resize
from seg_ext.engine import CountingTrainer, Trainer, seed_everything
from seg_ext.errors import DatasetError
from seg_ext.evaluation import Evaluator, SemanticLoss, build_evaluators, evaluator_classes, run_inference
from seg_ext.evaluation.semantic import argmax_channels
from seg_ext.losses import class_weights, weighted_cross_entropy
from seg_ext.methods.base import LossStep, Method, RunData, RunLike, init_note, overlay_indices, training_note, report_per_image, report_split
from seg_ext.models import SEMANTIC_MODELS
from seg_ext.report import Report, shown_split
from seg_ext.visualize import label_counts, palette, plot_loss_curves, plot_overlays, semantic_error_picture, semantic_overlay_picture

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "method": "semantic",
    "data": {
        "root": None,  # null: the built-in synthetic scene dataset (generated on first use)
        "format": "auto",  # auto, or a semantic format of seg_ext.data.formats (folder, stanford, pennfudan, ...)
        "image_size": [128, 128],  # (H, W): what every image is squashed to (data.resize: squash)
        # squash: each image resized to image_size, whatever its aspect ratio; scale: scaled by data.scale keeping
        # its aspect ratio, then random crops of crop_size (see seg_ext.dense)
        "resize": "squash",
        "scale": 1.0,  # with resize: scale: a factor, or short:N / long:N (the short or long side in pixels)
        "crop_size": None,  # with resize: scale: the training crop (H, W); null: image_size
        "val": None,  # size of the val split: a count or a fraction; null: the format's default
        "test": None,  # size of the test split, likewise
        "split_seed": 0,
        "splits_file": None,  # a splits.json from an earlier run, to reuse its split exactly
        "max_images": None,  # a quick try: each split cut to its first N images (null: all)
        "batch_size": 8,
        "num_workers": "auto",  # auto: min(8, CPUs this process may use / processes on the machine)
    },
    "augment": {
        "crop_scale": [0.5, 1.0],  # RandomResizedCrop area range; null: no crop (the whole image resized)
        "crop_ratio": [0.75, 1.3333333],  # RandomResizedCrop aspect-ratio range
        "hflip_prob": 0.5,
        "scale_jitter": [1.0, 1.0],  # with data.resize: scale: a random rescale in this range before the crop
    },
    "model": {"name": "unet", "base_width": 16, "depth": 3, "batch_norm": True},
    "loss": {"class_weights": "none"},  # none | inverse | median
    "train": dict(TRAIN_DEFAULTS),
    # full_resolution: the final val/test evaluation (and --eval-only) scores each image at its own size, with the
    # probabilities upsampled and the masks untouched; per-epoch validation stays at data.image_size
    # tta: horizontal-flip test-time augmentation in the final val/test evaluation (as tools/predict.py --tta)
    # mode: resize (squash to image_size, then back), whole (the image at the training scale in one pass) or slide
    # (windows of eval.window every eval.stride pixels, null: the crop and half of it); null: resize with
    # data.resize squash, whole with scale; window_batch: windows per forward pass
    "eval": {"full_resolution": True, "tta": False, "mode": None, "window": None, "stride": None, "window_batch": 4},
    "report": {"num_overlays": 6, "num_worst": 6},  # num_worst: the worst test images in the report's gallery
}


def semantic_probabilities(model: Any, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax of the logits, float32; ``tta``: averaged with the flipped images' (flipped back).
    Shape: (N, 3, h, w) -> (N, C, h, w)."""
    probs = torch.softmax(model(images).float(), 1)
    if tta:
        probs = (probs + torch.softmax(model(images.flip(-1)).float(), 1).flip(-1)) / 2
    return probs


def probabilities_at(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One image's class probabilities resized bilinearly to ``size`` (H, W). Shape: (C, h, w) -> (C, H, W)."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


class FullResolutionDataset(Dataset):
    """A split as the final evaluation reads it: the network's input (``prepare`` of the image) and the label
    map untouched, at the image's own size (``full`` False: as the evaluation transform resizes it)."""

    def __init__(self, dataset: SemanticSegDataset, prepare: Callable[[np.ndarray], torch.Tensor], full: bool = True) -> None:
        self.dataset, self.prepare, self.full = dataset, prepare, full

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = str(self.dataset.ids[index])
        if not self.full:  # the evaluation transform's resized mask (eval.full_resolution false)
            sample = self.dataset[index]
            return {"image": sample["image"], "mask": sample["mask"], "name": name}
        image, mask = self.dataset.load_pair(index)
        return {"image": self.prepare(image), "mask": torch.from_numpy(mask.astype(np.int64)), "name": name}


def collate_full_resolution(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked when they share the network's size (a list at the training scale); masks and names as
    lists (each mask at its image's size)."""
    return {"image": stack_or_list(b["image"] for b in batch), "mask": [b["mask"] for b in batch],
            "name": [b["name"] for b in batch]}


class AtImageSize(Evaluator):
    """Feeds semantic evaluators each image's class probabilities at the image's own size (the method's
    ``postprocess``), through their ``process_probs``; ``per_image`` (the final evaluation): through
    ``process_image(probs, mask, name)`` where an evaluator has it, which scores each image on its own too."""

    def __init__(self, method: "SemanticMethod", *evaluators: Evaluator, per_image: bool = False) -> None:
        self.method, self.evaluators, self.per_image = method, evaluators, per_image

    def reset(self) -> None:
        for ev in self.evaluators:
            ev.reset()

    def process(self, outputs: torch.Tensor, targets: dict[str, list]) -> None:
        for i, (mask, name) in enumerate(zip(targets["mask"], targets["name"])):
            probs = self.method.postprocess(outputs, i, tuple(mask.shape), probs=True)["probs"]
            for ev in self.evaluators:
                if self.per_image and hasattr(ev, "process_image"):
                    ev.process_image(probs, mask, name)
                else:
                    ev.process_probs(probs[None], mask[None])

    def evaluate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for ev in self.evaluators:
            results.update(ev.evaluate())
        return results

    def combine(self) -> None:
        for ev in self.evaluators:
            ev.combine()


class WeightedLoss:
    """The training loss: weighted cross entropy, the class weights (``loss.class_weights``) counted on the
    training split when it is made (the masks are read only when weights are asked for)."""

    def __init__(self, train: SemanticSegDataset, mode: str, device: torch.device) -> None:
        self.weight = None if mode == "none" else class_weights(train.class_pixel_counts(), mode)
        if self.weight is not None:
            logger.info("class weights (%s): %s", mode, np.round(self.weight.numpy(), 3).tolist())
        self.device_weight = None if self.weight is None else self.weight.to(device)
        self.device, self.ignore_index = device, train.ignore_index

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"].to(self.device, non_blocking=True))
        target = batch["mask"].to(self.device, non_blocking=True)
        return weighted_cross_entropy(logits.float(), target, self.device_weight, self.ignore_index), {}

    def of_logits(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of given logits (the evaluation's ``loss``: the evaluation loop hands it logits and targets on
        the run's device, where the weights are)."""
        return weighted_cross_entropy(logits, target, self.device_weight, self.ignore_index)


class SemanticMethod(Method):
    """Per-pixel classification of any semantic format (or the synthetic scenes) with a model of
    ``seg_ext.models.SEMANTIC_MODELS``."""

    name = "semantic"
    task = "semantic"
    title = "Semantic segmentation"
    models = SEMANTIC_MODELS
    supports_tta = True
    onnx_outputs = ("logits",)
    network_keys = ()
    prediction_folders = ("masks",)

    def __init__(self, cfg: dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
        super().__init__(cfg, device)
        self.transform = build_transforms(image_size(cfg), train=False)
        self._eval_loaders: dict[tuple[int, bool], Any] = {}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return copy.deepcopy(DEFAULTS)

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        data, augment = cfg["data"], cfg["augment"]
        pixels(data["image_size"], "data.image_size", minimum=8)
        if data["format"] != "auto":
            get_format(data["format"], cls.task)
        if augment.get("crop_scale") is not None:
            interval(pair(augment["crop_scale"], "augment.crop_scale"), "augment.crop_scale",
                     lambda lo, hi: 0 < lo <= hi <= 1, "0 < low <= high <= 1, or null for no crop")
            interval(pair(augment["crop_ratio"], "augment.crop_ratio"), "augment.crop_ratio",
                     lambda lo, hi: 0 < lo <= hi, "0 < low <= high")
        choice(cfg["loss"]["class_weights"], "loss.class_weights", CLASS_WEIGHT_MODES)
        validate_resize(cfg, image_size(cfg))
        interval(pair(augment.get("scale_jitter", [1.0, 1.0]), "augment.scale_jitter"), "augment.scale_jitter",
                 lambda lo, hi: 0 < lo <= hi, "0 < low <= high, e.g. [0.8, 1.2]")

    @classmethod
    def ignored_keys(cls, cfg: dict[str, Any]) -> dict[str, str]:
        out = super().ignored_keys(cfg)
        if cfg["data"].get("resize", "squash") == "scale":
            for key in ("augment.crop_scale", "augment.crop_ratio"):
                out[key] = "data.resize is 'scale', which trains on random crops of data.crop_size at data.scale"
        else:
            out["augment.scale_jitter"] = "data.resize is 'squash', whose crops come from augment.crop_scale"
        return out

    @property
    def network_size(self) -> tuple[int, int]:
        return image_size(self.cfg)

    # ---- data

    def transforms(self, train: bool, normalize: bool = True):
        """The augmentation (``train``) or evaluation pipeline."""
        if not train:
            return build_transforms(image_size(self.cfg), train=False, normalize=normalize)
        aug = self.cfg["augment"]
        if self.scale is not None:
            return build_scaled_transforms(self.scale, self.train_size, aug.get("scale_jitter", (1, 1)),
                                           aug["hflip_prob"], fill_mask=255, normalize=normalize, seed=self.cfg["train"]["seed"])
        return build_transforms(image_size(self.cfg), train=True, crop_scale=aug["crop_scale"], crop_ratio=aug["crop_ratio"],
                                hflip_prob=aug["hflip_prob"], normalize=normalize, seed=self.cfg["train"]["seed"])

    def _datasets(self, transforms: dict[str, Any]) -> tuple[dict[str, SemanticSegDataset], dict[str, list[str]]]:
        data = self.cfg["data"]
        return build_semantic_datasets(data["root"], transforms, format=data["format"], val=data["val"], test=data["test"],
                                       split_seed=data["split_seed"], splits_file=data["splits_file"],
                                       max_images=data["max_images"])

    def datasets(self, output_dir: Path) -> RunData:
        transforms = {"train": self.transforms(True), "val": self.transforms(False), "test": self.transforms(False)}
        datasets, splits = self._datasets(transforms)
        if not splits["val"]:
            raise DatasetError("the val split is empty; set data.val to a count or fraction of the images")
        train, data = datasets["train"], self.cfg["data"]
        if self.scale is not None:
            check_crop_fits(self.train_size, self.scale,
                            (file_image_size(train.source.items[i][0]) for i in train.ids), "the training split")
        root = Path(data["root"]).expanduser() if data["root"] else None
        description = find_format(root, data["format"], self.task).describe(root, self.task)
        return RunData(datasets, list(train.class_names), train.num_classes, description,
                       {s: len(v) for s, v in splits.items()}, files={"splits.json": splits})

    # ---- model and training

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        return {"num_classes": num_classes, "image_size": self.train_size}

    def loss(self, data: RunData) -> WeightedLoss:
        return WeightedLoss(data.datasets["train"], self.cfg["loss"]["class_weights"], self.device)

    def trainer(self, run: RunLike, model: nn.Module, loss: LossStep, meta: dict[str, Any]) -> Trainer:
        if not getattr(model, "fitted_by_counting", False):
            return super().trainer(run, model, loss, meta)
        # the baseline: count labels over the training split at the evaluation size; one 'epoch'
        train = run.data.datasets["train"]
        counting = SemanticSegDataset(train.source, train.ids, self.transforms(False))
        ignore = counting.ignore_index
        return CountingTrainer(model, run.loader(counting), lambda m, batch: m.count(batch["mask"], ignore),
                               lambda m: self.evaluate(run, m, "val"), run.output_dir, run.cfg["train"]["best_metric"],
                               run.precision, meta=meta)

    # ---- prediction

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        if self.scale is not None:
            return scaled_input(image, self.scale)
        return self.transform(image=image)["image"]

    def forward(self, model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], tta: bool = False) -> Any:
        """Class probabilities: (N, C, h, w) at the network's size, or with ``eval.mode`` whole/slide a list of
        (C, h, w) at each image's training scale."""
        if self.scale is not None:
            return self.dense_forward(model, images, lambda x: semantic_probabilities(model, x, tta))
        if not isinstance(images, torch.Tensor):
            images = torch.stack(list(images))
        return semantic_probabilities(model, images.to(self.device, non_blocking=True), tta)

    def postprocess(self, outputs: torch.Tensor, index: int, size: tuple[int, int], probs: bool = False) -> dict[str, Any]:
        """``labels`` (H, W) int64 and, with ``probs``, ``probs`` (C, H, W): the probabilities resized bilinearly
        to the image, then the argmax (the label map is never resized)."""
        full = probabilities_at(outputs[index].contiguous(), (int(size[0]), int(size[1])))
        out = {"labels": argmax_channels(full[None])[0], "num_classes": int(full.shape[0])}  # argmax over a strided dim is slow on CPUs
        if probs:
            out["probs"] = full
        return out

    def result(self, raw: dict[str, Any], score_threshold: float = 0.5) -> dict[str, np.ndarray]:
        """``labels`` (H, W) uint8 (int64 beyond 256 classes: made narrow on the device, so an eighth of the
        bytes cross to the host) and, when computed, ``probs`` (C, H, W)."""
        labels = raw["labels"]
        if 0 < raw.get("num_classes", 0) <= 256:  # (a raw without the count stays int64)
            labels = labels.to(torch.uint8)
        out = {"labels": labels.cpu().numpy()}
        if "probs" in raw:
            out["probs"] = raw["probs"].cpu().numpy()
        return out

    def write_prediction(self, raw: dict[str, Any], result: dict[str, np.ndarray], image: np.ndarray, name: str,
                         output_dir: Path, class_names: Sequence[str], overlays: bool) -> dict[str, Any]:
        """``masks/<name>.png`` (class ids, a palette PNG in the report's colours), the class shares, the overlay."""
        labels = result["labels"].astype(np.uint8, copy=False)
        mask = Image.fromarray(labels, mode="P")
        mask.putpalette(palette(len(class_names)).ravel().tolist())
        mask.save(output_dir / "masks" / f"{name}.png", compress_level=1)  # fast; label maps compress well anyway
        counts = label_counts(labels, len(class_names))
        entry = {"class_share": {c: round(float(n) / labels.size, 6) for c, n in zip(class_names, counts)}}
        if overlays:
            picture = semantic_overlay_picture(image, labels, class_names, counts=counts)
            Image.fromarray(picture).save(output_dir / "overlays" / f"{name}.jpg", quality=90)
        return entry

    # ---- evaluation

    def evaluators(self, dataset: SemanticSegDataset, loss: WeightedLoss | None = None, figures: bool = True) -> list[Evaluator]:
        """The task's evaluators (and the loss's); ``figures``: their final files include the figures."""
        evaluators = build_evaluators(self.task, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                                      class_names=dataset.class_names, num_worst=int(self.cfg["report"].get("num_worst", 6)),
                                      figures=figures)
        if loss is not None:
            evaluators.append(SemanticLoss(loss.of_logits))
        return evaluators

    def evaluate(self, run: RunLike, model: nn.Module, split: str, final: bool = False) -> dict[str, float]:
        """Per-epoch validation scores at ``data.image_size``; the final evaluation with ``eval.full_resolution``
        scores each image at its own size (probabilities from :meth:`forward`, resized by :meth:`postprocess`)."""
        dataset, precision, cfg = run.data.datasets[split], run.precision, run.cfg
        evaluators = self.evaluators(dataset, run.loss, figures=final and split == report_split(run))
        dense = self.scale is not None  # whole/slide: every evaluation at each image's size
        if dense or final:  # image by image (the final evaluation scores each image on its own too)
            key = (id(dataset), bool(final and cfg["eval"]["full_resolution"] or dense))
            loader = self._eval_loaders.get(key)
            if loader is None:  # made once per split (its workers persist across the epochs' validations)
                full = FullResolutionDataset(dataset, self.prepare, key[1])
                loader = self._eval_loaders[key] = run.loader(full, collate_fn=collate_full_resolution)
            tta = final and cfg["eval"]["tta"]

            def forward(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, list]]:
                with precision.autocast():
                    return self.forward(model, batch["image"], tta), {"mask": batch["mask"], "name": batch["name"]}

            metrics = run_inference(model, loader, AtImageSize(self, *evaluators, per_image=final), forward, desc=split, device=run.device)
        else:
            def forward(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
                images = batch["image"].to(precision.device, non_blocking=True)
                with precision.autocast():
                    logits = model(images)
                return logits.float(), batch["mask"].to(precision.device, non_blocking=True)

            metrics = run_inference(model, run.loaders[split], evaluators, forward, desc=split, device=run.device)
        if final and distributed.is_main():  # process 0 holds the whole split's state
            for ev in evaluators:
                ev.save(run.output_dir, split, metrics)
            keys = [k for cls in evaluator_classes(self.task) for k in cls.summary]
            logger.info("%s: %s", split, "  ".join(f"{k} {metrics[k]:.2f}" for k in keys))
        return metrics

    # ---- report

    def predict_labels(self, model: nn.Module, image: np.ndarray, precision: Any) -> np.ndarray:
        """The label map of one image at its size (eval mode, no gradients, the run's precision)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), precision.autocast():
                outputs = self.forward(model, [self.prepare(image)])
                return self.postprocess(outputs, 0, image.shape[:2])["labels"].cpu().numpy()
        finally:
            model.train(was_training)

    def draw_overlays(self, run: RunLike, model: nn.Module, split: str) -> None:
        """A few images of ``split`` at their own size: the ground truth and the prediction."""
        dataset = run.data.datasets[split]
        indices = overlay_indices(run.cfg["report"]["num_overlays"], len(dataset))
        if not indices:
            return
        rows, titles = [], []
        for i in indices:
            image, mask = dataset.load_pair(i)
            rows.append((image, mask, self.predict_labels(model, image, run.precision)))
            titles.append(dataset.ids[i])
        plot_overlays(rows, dataset.class_names, run.output_dir / f"overlays_{split}.png", dataset.ignore_index, titles)

    def error_picture(self, run: RunLike, model: nn.Module, split: str, row: dict[str, Any]) -> np.ndarray | None:
        """Image, ground truth, prediction and the wrong pixels of the image named in ``row``."""
        dataset = run.data.datasets[split]
        index = {str(i): k for k, i in enumerate(dataset.ids)}.get(str(row["image"]))
        if index is None:
            return None
        image, mask = dataset.load_pair(index)
        labels = self.predict_labels(model, image, run.precision)
        return semantic_error_picture(image, mask, labels, dataset.class_names, dataset.ignore_index)

    def write_report(self, run: RunLike, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        cfg, output_dir, class_names = run.cfg, run.output_dir, run.data.class_names
        report = Report(f"{self.title}: {cfg['model']['name']}", output_dir)
        report.bullets([
            f"command: `{run.command}`" if run.command else "command: (library call)",
            f"dataset: `{cfg['data']['root'] or run.data.description}` ({len(class_names)} classes: {', '.join(class_names)})",
            "split sizes: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) + " (ids in `splits.json`)",
            *self.data_notes(),
            f"{self.size_description()}; " + ("final evaluation with horizontal-flip test-time augmentation; "
                                                          if cfg["eval"]["tta"] else "") + ("the final val and test metrics score each image at its own size "
            "(probabilities upsampled, masks untouched)" + ("" if self.scale else "; per-epoch validation at the network's size")
            if cfg["eval"]["full_resolution"] else "metrics are computed at this size (masks resized)"),
            f"model: `{cfg['model']}`, {summary['parameters']:,} parameters",
            training_note(summary),
            *init_note(summary),
        ])
        for cls in evaluator_classes(self.task):
            cls.report(report, summary)
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
        report_per_image(report, output_dir, summary, "mIoU")
        report_calibration(report, output_dir, summary)
        report.heading("Files")
        report.bullets([
            "`config.yaml`: the resolved config; `splits.json`: the image ids of each split",
            "`per_image_<split>.csv`: every image's mIoU, pixel accuracy and IoU per class; `worst_<split>/`: the "
            "gallery's pictures; `report.html`: this report as one page (pictures embedded, tables sortable)",
            "`metrics.jsonl`: one line per epoch; `metrics.json`: the final val and test metrics",
            "`last.pt` (`last.prev.pt`: the one before), `best.pt`: checkpoints; `log.txt`: the log",
        ])
        report.save(output_dir / "report.md")

    # ---- looking at augmentation

    def show_augmentations(self, output: Path, num_images: int = 4, per_image: int = 4) -> Path:
        """Draw training images (resized, first column) and ``per_image`` random augmentations of each, with their
        masks blended over them and outlined, so a person can check that image and mask stay aligned."""
        from seg_ext.visualize import plot_sample_grid

        seed_everything(self.cfg["train"]["seed"])
        datasets, _ = self._datasets({})
        train = datasets["train"]
        plain, augment = self.transforms(False, normalize=False), self.transforms(True, normalize=False)
        shown = "resized"
        if self.scale is not None:  # the whole image at the training scale, as evaluation sees it
            import albumentations as A

            from seg_ext.data.scale import ScaledPipeline

            plain, shown = ScaledPipeline(self.scale, A.Compose([])), f"scaled by {self.scale}"
        samples, titles = [], []
        for i in overlay_indices(num_images, len(train)):
            image, mask = train.load_pair(i)
            out = plain(image=image, mask=mask)
            samples.append((out["image"], out["mask"]))
            titles.append(f"{train.ids[i]} ({shown})")
            for k in range(per_image):
                out = augment(image=image, mask=mask)
                samples.append((out["image"], out["mask"]))
                titles.append(f"augmented {k + 1}")
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        plot_sample_grid(samples, train.class_names, output, columns=per_image + 1, ignore_index=train.ignore_index,
                         titles=titles)
        return output


def report_calibration(report: Report, output_dir: Path, summary: dict[str, Any]) -> None:
    """The calibration section: ECE and the reliability diagram of the per-pixel top-label probability."""
    split = shown_split(summary, "calibration")
    if split is None:
        return
    cal = summary[split]["calibration"]
    report.heading(f"Calibration ({split})")
    report.text(f"Expected calibration error {cal['ece']:.2f} points over {cal['samples']:,} pixels: each pixel's "
                "highest class probability against whether that class is right, in 10 bins. A calibrated model's bars "
                "reach the diagonal; bars below it are over-confident.")
    if (Path(output_dir) / f"calibration_{split}.png").is_file():
        report.image(f"calibration_{split}.png", f"{split}: reliability of the per-pixel probabilities")


__all__ = ["SemanticMethod"]
