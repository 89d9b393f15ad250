"""Use a trained model: :class:`Predictor`, the one path from a model and an image of any size to outputs at
that image's own size.

Evaluation (the final val/test scores), the report's overlays and ``tools/predict.py`` all go through it:

* ``prepare(image)``: what the network sees of one HxWx3 uint8 RGB image (the evaluation transform of the
  checkpoint's config). Runs in DataLoader workers.
* ``forward(batch)``: the network on a batch of prepared images, in the run's precision, without gradients
  (``tta``: averaged with the horizontally flipped batch).
* ``postprocess(outputs, i, size)``: image ``i`` at its own ``size``. Semantic: class probabilities resized
  bilinearly to the image, then the argmax (the label map is never resized). Instance: the method's
  post-processing (``InstanceMethod.postprocess``: the watershed, or Mask R-CNN's own detections).

``Predictor.from_checkpoint(path)`` rebuilds everything from a checkpoint (config, class names, method); the
training data is not needed. With ``onnx=FILE`` the network is an ONNX model run by onnxruntime (see
``seg_ext.export``), with the same preparation and post-processing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_ext.config import image_size, merge_config, parse_overrides, upgrade_config, validate_config
from seg_ext.data.files import read_image
from seg_ext.data.transforms import build_transforms
from seg_ext.evaluation.coco import binary_masks
from seg_ext.evaluation.semantic import argmax_channels
from seg_ext.engine import Precision, load_checkpoint, place_model, select_device
from seg_ext.errors import ConfigError, SegExtError
from seg_ext.methods import IMAGE_SIZE_KEYS, InstanceMethod, build_method
from seg_ext.models import build_from_block, build_model

# model-block keys that name pretrained weights to fetch: a checkpoint holds the trained weights already
WEIGHT_KEYS = ("weights", "backbone_weights", "encoder_weights")
ONNX_OUTPUTS = {"semantic": ["logits"], "watershed": ["foreground", "energy"], "maskrcnn": ["boxes", "labels", "scores", "masks"]}


class SemanticPreprocess:
    """The evaluation transform of a semantic run: resize to ``data.image_size``, ImageNet normalisation."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.transform = build_transforms(size, train=False)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.transform(image=image)["image"]


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


class OnnxModel:
    """An exported network run by onnxruntime, called like the PyTorch model it came from (tensors in and out)."""

    training = False

    def __init__(self, path: str | Path, device: torch.device) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SegExtError("--onnx needs the onnxruntime package (pip install -r requirements.txt)") from None
        path = Path(path)
        if not path.is_file():
            raise SegExtError(f"ONNX file {path} does not exist; expected a model written by tools/export.py")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only (Mask R-CNN's data-dependent shapes warn on every run)
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise SegExtError(f"cannot load ONNX file {path} ({exc.__class__.__name__}); expected a model written by "
                              "tools/export.py") from None
        self.path = path
        self.input = self.session.get_inputs()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def check_fits(self, kind: str, channels: Sequence[int], size: tuple[int, int]) -> None:
        """Refuse a model whose outputs or fixed input size differ from what the checkpoint's model has."""
        expected = ONNX_OUTPUTS[kind]
        outputs = self.session.get_outputs()
        got = [o.shape[1] if len(o.shape) == 4 else None for o in outputs]
        if self.output_names != expected or any(isinstance(g, int) and g != c for g, c in zip(got, channels)):
            raise SegExtError(
                f"ONNX file {self.path} has outputs {self.output_names} with {got} channels, but the checkpoint's "
                f"model has {expected} with {list(channels)}; expected an export of this checkpoint"
            )
        if kind == "maskrcnn":
            return  # takes images of the one size it was exported at (checked per image)
        h, w = self.input.shape[2:4]
        if (isinstance(h, int) and h != size[0]) or (isinstance(w, int) and w != size[1]):
            raise SegExtError(f"ONNX file {self.path} takes {h}x{w} inputs, but the checkpoint's model sees "
                              f"{size[0]}x{size[1]}; expected an export of this checkpoint")

    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> Any:
        if isinstance(images, (list, tuple)):  # Mask R-CNN: one image at a time, detections as torchvision gives them
            return [self._detections(image) for image in images]
        array = images.detach().float().cpu().contiguous().numpy()
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self.input.name: array})]
        return outputs[0] if len(outputs) == 1 else dict(zip(self.output_names, outputs))

    def _detections(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = self.input.shape[2:4]
        if (h, w) != tuple(image.shape[-2:]):
            raise SegExtError(f"the Mask R-CNN export {self.path} takes {w}x{h} images only (torchvision exports one size); "
                              f"got a {image.shape[-1]}x{image.shape[-2]} image: predict it without --onnx")
        outputs = self.session.run(None, {self.input.name: image[None].detach().float().cpu().numpy()})
        return {name: torch.from_numpy(o) for name, o in zip(self.output_names, outputs)}

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self


def read_predictor_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of a training run, checked to hold what prediction needs (config, class names)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("class_names"), list):
        raise SegExtError(f"checkpoint {path} holds no config or class names; expected a last.pt or best.pt of a run")
    return ckpt


def model_from_checkpoint(path: str | Path, device: torch.device, opts: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any], str, InstanceMethod | None, list[str], dict[str, Any]]:
    """The trained network of a checkpoint (fp32, on the CPU) with its config, task, instance method (or None),
    class names and the checkpoint itself. ``opts``: ``key=value`` overrides of the saved config (post-processing
    settings such as ``watershed.marker_level`` or ``eval.mask_threshold``)."""
    ckpt = read_predictor_checkpoint(path)
    try:
        cfg = validate_config(upgrade_config(ckpt["config"]))
    except ConfigError as exc:
        raise SegExtError(f"checkpoint {path} holds a config this version cannot use: {exc}") from None
    for nested in parse_overrides(opts):  # errors name the key given in --opts
        cfg = merge_config(cfg, nested, source="--opts")
    task = ckpt.get("task", "semantic")
    names = list(ckpt["class_names"])
    method = None
    if task == "semantic":
        model = build_model(_without_weights(cfg["model"]), num_classes=len(names), image_size=image_size(cfg))
    else:
        method = build_method(cfg, device)
        image_key = IMAGE_SIZE_KEYS.get(method.name)
        model = build_from_block(method.models, _without_weights(cfg["model"]), method.model_arguments(len(names) + 1),
                                 context_keys={"image_size": image_key} if image_key else None)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise SegExtError(f"checkpoint {path}: its weights do not fit the model its config describes; expected an "
                          "unmodified last.pt or best.pt") from None
    return model.eval(), cfg, task, method, names, ckpt


def _without_weights(block: dict[str, Any]) -> dict[str, Any]:
    block = copy.deepcopy(block)
    for key in WEIGHT_KEYS:
        if block.get(key):
            block[key] = None
    return block


class Predictor:
    """Predictions of one model on images of any size, at each image's own size.

    Args:
        model: the network (placed on its device), or an :class:`OnnxModel`.
        cfg: the run's validated config.
        task: ``semantic`` or ``instance``.
        class_names: semantic: every class; instance: the categories (label k is ``class_names[k - 1]``).
        precision: how the network computes (``engine.place_model``).
        method: the instance method (instance only).
        categories: COCO category ids of labels 1..K (instance; default 1..K).
        tta: horizontal-flip test-time augmentation.
        score_threshold: instances under it are left out of :meth:`__call__`'s results (COCO results keep all).

    Call it with an image (HxWx3 uint8 RGB array or a path): semantic results hold ``labels`` (H, W) and, with
    ``probs=True``, ``probs`` (C, H, W); instance results hold ``masks`` (N, H, W) bool, ``boxes`` (N, 4) xyxy,
    ``scores``, ``labels`` (N,), by decreasing score, and ``instance_map`` (H, W), 0 background and 1..N.
    """

    def __init__(
        self,
        model: Any,
        cfg: dict[str, Any],
        task: str,
        class_names: Sequence[str],
        precision: Precision,
        method: InstanceMethod | None = None,
        categories: Sequence[int] | None = None,
        tta: bool = False,
        score_threshold: float | None = None,
    ) -> None:
        if task not in ("semantic", "instance"):
            raise SegExtError(f"unknown task {task!r}; expected semantic or instance")
        if task == "instance" and method is None:
            raise ValueError("an instance predictor needs its method")
        self.model, self.cfg, self.task, self.method = model, cfg, task, method
        self.class_names, self.precision, self.tta = list(class_names), precision, bool(tta)
        self.device = precision.device
        self.categories = list(categories) if categories else list(range(1, len(self.class_names) + 1))
        self.mask_threshold = float(cfg.get("eval", {}).get("mask_threshold", 0.5))
        default_threshold = cfg.get("eval", {}).get("score_threshold", 0.5)
        self.score_threshold = float(default_threshold if score_threshold is None else score_threshold)
        self.prepare = SemanticPreprocess(image_size(cfg)) if task == "semantic" else method.prepare
        if self.tta and task == "instance" and not method.supports_tta:
            raise SegExtError(f"test-time augmentation is for the semantic models and the watershed method; {method.name}'s "
                              "detections of the flipped image would need merging, which seg_ext does not do")

    # ---- building --------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", onnx: str | Path | None = None, tta: bool = False,
        score_threshold: float | None = None, opts: Sequence[str] = (),
    ) -> "Predictor":
        """A predictor for a checkpoint of either task; ``onnx``: run this ONNX export of it instead of PyTorch;
        ``opts``: overrides of the checkpoint's config (``key=value``)."""
        device = device if isinstance(device, torch.device) else select_device(str(device))
        model, cfg, task, method, names, ckpt = model_from_checkpoint(path, device, opts)
        categories = [c["id"] for c in ckpt.get("categories", [])] or None
        if onnx is None:
            model, precision = place_model(model, device, cfg["train"]["amp"], cfg["train"]["channels_last"])
        else:
            model = cls._onnx_for(model, onnx, task, method, names, cfg, device)
            precision = Precision(device)
        return cls(model, cfg, task, names, precision, method, categories, tta, score_threshold)

    @staticmethod
    def _onnx_for(model: nn.Module, onnx: str | Path, task: str, method: InstanceMethod | None, names: list[str],
                  cfg: dict[str, Any], device: torch.device) -> OnnxModel:
        if task == "semantic":
            kind, channels, size = "semantic", [len(names)], image_size(cfg)
        elif method.name == "watershed":
            kind, channels, size = "watershed", [2, model.num_levels], method.input_size
        elif method.name == "maskrcnn":
            kind, channels, size = "maskrcnn", [], (0, 0)
        else:
            raise SegExtError(f"--onnx is for the semantic models, the watershed UNet and Mask R-CNN; the checkpoint is "
                              f"a {method.name} one")
        onnx_model = OnnxModel(onnx, device)
        onnx_model.check_fits(kind, channels, size)
        return onnx_model

    # ---- the pipeline ----------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> Any:
        """The network on a batch of prepared images (a stacked tensor or a list)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                if self.task == "semantic":
                    if not isinstance(images, torch.Tensor):
                        images = torch.stack(list(images))
                    return semantic_probabilities(self.model, images.to(self.device, non_blocking=True), self.tta)
                return self.method.forward(self.model, images, self.tta)
        finally:
            self.model.train(was_training)

    def postprocess(self, outputs: Any, index: int, size: tuple[int, int], probs: bool = False) -> dict[str, Any]:
        """Image ``index`` of ``forward``'s outputs at its own ``size`` (H, W). Semantic: ``labels`` (H, W) int64
        tensor (and ``probs`` (C, H, W)); instance: the method's detections (tensors, masks as it gives them)."""
        size = (int(size[0]), int(size[1]))
        if self.task == "instance":
            return self.method.postprocess(outputs, index, size)
        full = probabilities_at(outputs[index].contiguous(), size)
        out = {"labels": argmax_channels(full[None])[0]}  # argmax over a strided dim is slow on CPUs
        if probs:
            out["probs"] = full
        return out

    def run(self, images: torch.Tensor | Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
            probs: bool = False) -> list[dict[str, Any]]:
        """``forward`` then ``postprocess`` of every image of a prepared batch."""
        outputs = self.forward(images)
        return [self.postprocess(outputs, i, size, probs) for i, size in enumerate(sizes)]

    def result(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """A ``postprocess`` output as the API's NumPy result (instances: thresholded, by decreasing score)."""
        if self.task == "semantic":
            out = {"labels": raw["labels"].cpu().numpy()}
            if "probs" in raw:
                out["probs"] = raw["probs"].cpu().numpy()
            return out
        scores = raw["scores"].detach().float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= self.score_threshold]
        masks = binary_masks(raw["masks"], self.mask_threshold)[order]
        return {
            "masks": masks,
            "boxes": raw["boxes"].detach().float().cpu().numpy()[order],
            "scores": scores[order],
            "labels": raw["labels"].detach().cpu().numpy()[order],
            "instance_map": instance_map(masks),
        }

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], probs: bool = False) -> list[dict[str, np.ndarray]]:
        """Predictions for several images (arrays or paths), at their own sizes."""
        arrays = [as_image(image) for image in images]
        if not arrays:
            return []
        prepared = [self.prepare(a) for a in arrays]
        batch = torch.stack(prepared) if self.task == "semantic" else prepared
        return [self.result(raw) for raw in self.run(batch, [a.shape[:2] for a in arrays], probs)]

    def __call__(self, image: np.ndarray | str | Path, probs: bool = False) -> dict[str, np.ndarray]:
        """The prediction for one image (an HxWx3 uint8 RGB array or a path)."""
        return self.predict_batch([image], probs)[0]


def as_image(image: np.ndarray | str | Path) -> np.ndarray:
    """An image given as a path or an array, as HxWx3 uint8 RGB (grey images get three channels)."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise SegExtError(f"expected an HxWx3 uint8 RGB image, got an array of shape {array.shape} and dtype {array.dtype}")
    return array


def instance_map(masks: np.ndarray) -> np.ndarray:
    """Instance ids of masks ordered by decreasing score: 0 background, i + 1 for ``masks[i]``; where masks
    overlap, the higher-scoring one wins. Shape: (N, H, W) bool -> (H, W) uint16 (int32 past 65535 instances)."""
    n = len(masks)
    dtype = np.uint16 if n < 65536 else np.int32
    out = np.zeros(masks.shape[1:], dtype)
    for i in range(n - 1, -1, -1):
        out[masks[i]] = i + 1
    return out
