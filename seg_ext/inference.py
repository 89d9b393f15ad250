"""Use a trained model: :class:`Predictor`, the one path from a model and an image of any size to outputs at
that image's own size, for every method.

Evaluation (the final val/test scores), the report's overlays and ``tools/predict.py`` all run the same method
steps (``seg_ext.methods.base.Method``):

* ``prepare(image)``: what the network sees of one HxWx3 uint8 RGB image (as evaluation prepares it). Runs in
  DataLoader workers.
* ``forward(batch)``: the network on a batch of prepared images, in the run's precision, without gradients
  (``tta``: averaged with the horizontally flipped batch, for methods that support it).
* ``postprocess(outputs, i, size)``: image ``i`` at its own ``size`` (semantic: probabilities resized to the
  image, then the argmax; instance: the method's post-processing).

``Predictor.from_checkpoint(path)`` rebuilds everything from a checkpoint (config, class names, method), through
the checkpoint boundary (``seg_ext.methods.checkpoints``); the training data is not needed. With ``onnx=FILE``
the network is an ONNX model run by onnxruntime (see ``seg_ext.export``), with the same preparation and
post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from seg_ext.data.files import read_image
from seg_ext.engine import Precision, place_model, select_device
from seg_ext.errors import SegExtError
from seg_ext.methods import Method, build_method
from seg_ext.methods.checkpoints import Checkpoint, load_weights, open_checkpoint, with_overrides


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
            options.log_severity_level = 3  # errors only (a detector's data-dependent shapes warn on every run)
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise SegExtError(f"cannot load ONNX file {path} ({exc.__class__.__name__}); expected a model written by "
                              "tools/export.py") from None
        self.path = path
        self.input = self.session.get_inputs()[0]
        # the export's facts (seg_ext.export): a dynamic export takes multiples of size_multiple, a fixed one its size
        try:
            facts = json.loads(self.session.get_modelmeta().custom_metadata_map.get("seg_ext", "{}"))
        except ValueError:
            facts = {}
        self.size_multiple = facts.get("size_multiple") if isinstance(facts, dict) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def check_fits(self, method: Method, model: nn.Module) -> None:
        """Refuse a model whose outputs or fixed input size differ from what the checkpoint's network has."""
        expected = list(method.onnx_outputs)
        outputs = self.session.get_outputs()
        got = [o.shape[1] if len(o.shape) == 4 else None for o in outputs]
        channels: list[int] = []
        if not method.export_fixed_size and method.input_size is not None:  # the network's own output channels
            with torch.no_grad():
                example = torch.zeros(1, 3, *method.input_size)
                out = method.export_module(model.eval())(example)
            channels = [int(t.shape[1]) for t in ((out,) if isinstance(out, torch.Tensor) else out)]
        if self.output_names != expected or any(isinstance(g, int) and g != c for g, c in zip(got, channels)):
            raise SegExtError(
                f"ONNX file {self.path} has outputs {self.output_names} with {got} channels, but the checkpoint's "
                f"model has {expected} with {channels}; expected an export of this checkpoint"
            )
        if method.export_fixed_size or method.input_size is None:
            return  # takes images of the one size it was exported at (checked per image)
        size = method.input_size
        h, w = self.input.shape[2:4]
        if (isinstance(h, int) and h != size[0]) or (isinstance(w, int) and w != size[1]):
            raise SegExtError(f"ONNX file {self.path} takes {h}x{w} inputs, but the checkpoint's model sees "
                              f"{size[0]}x{size[1]}; expected an export of this checkpoint")

    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> Any:
        if isinstance(images, (list, tuple)):  # a detector's export: one image at a time, as torchvision gives them
            return [self._detections(image) for image in images]
        array = images.detach().float().cpu().contiguous().numpy()
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self.input.name: array})]
        return outputs[0] if len(outputs) == 1 else dict(zip(self.output_names, outputs))

    def _detections(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = self.input.shape[2:4]
        if (h, w) != tuple(image.shape[-2:]):
            raise SegExtError(f"the export {self.path} takes {w}x{h} images only (it was exported for one size); "
                              f"got a {image.shape[-1]}x{image.shape[-2]} image: predict it without --onnx")
        outputs = self.session.run(None, {self.input.name: image[None].detach().float().cpu().numpy()})
        return {name: torch.from_numpy(o) for name, o in zip(self.output_names, outputs)}

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self


def model_from_checkpoint(path: str | Path, device: torch.device, opts: Sequence[str] = ()) -> tuple[nn.Module, Method, Checkpoint]:
    """The trained network of a checkpoint (fp32, on the CPU, in eval mode), its method (of the saved config with
    ``opts`` overrides: post-processing or evaluation settings, not the network's) and the checked checkpoint."""
    ckpt = open_checkpoint(path)
    cfg = with_overrides(ckpt, opts)
    method = build_method(cfg, device)
    model = method.build_model(method.head_classes(ckpt.class_names), pretrained=False)
    load_weights(model, ckpt.content["model"], ckpt.path)
    method.dense_plan(model)  # eval.mode whole/slide checked against the network (window multiple, fixed size)
    return model.eval(), method, ckpt


class Predictor:
    """Predictions of one model on images of any size, at each image's own size.

    Args:
        model: the network (placed on its device), or an :class:`OnnxModel`.
        method: the run's method (its config is the run's).
        class_names: semantic: every class; instance: the categories (label k is ``class_names[k - 1]``).
        precision: how the network computes (``engine.place_model``).
        categories: COCO category ids of labels 1..K (instance; default 1..K).
        tta: horizontal-flip test-time augmentation.
        score_threshold: instances under it are left out of :meth:`__call__`'s results (COCO results keep all).

    Call it with an image (HxWx3 uint8 RGB array or a path): semantic results hold ``labels`` (H, W; uint8 up to
    256 classes) and, with ``probs=True``, ``probs`` (C, H, W); instance results hold ``masks`` (N, H, W) bool,
    ``boxes`` (N, 4) xyxy, ``scores``, ``labels`` (N,), by decreasing score, and ``instance_map`` (H, W), 0
    background and 1..N.
    """

    def __init__(
        self,
        model: Any,
        method: Method,
        class_names: Sequence[str],
        precision: Precision,
        categories: Sequence[int] | None = None,
        tta: bool = False,
        score_threshold: float | None = None,
    ) -> None:
        self.model, self.method, self.cfg, self.task = model, method, method.cfg, method.task
        self.class_names, self.precision, self.tta = list(class_names), precision, bool(tta)
        self.device = precision.device
        self.categories = list(categories) if categories else list(range(1, len(self.class_names) + 1))
        default_threshold = self.cfg.get("eval", {}).get("score_threshold", 0.5)
        self.score_threshold = float(default_threshold if score_threshold is None else score_threshold)
        self.prepare = method.prepare
        if self.tta and not method.supports_tta:
            raise SegExtError(f"test-time augmentation is not available for method {method.name}: its outputs of the "
                              "flipped image would need merging, which seg_ext does not do")

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", onnx: str | Path | None = None, tta: bool = False,
        score_threshold: float | None = None, opts: Sequence[str] = (),
    ) -> "Predictor":
        """A predictor for a checkpoint of any method; ``onnx``: run this ONNX export of it instead of PyTorch;
        ``opts``: overrides of the checkpoint's config (``key=value``) that leave the network as it is."""
        device = device if isinstance(device, torch.device) else select_device(str(device))
        model, method, ckpt = model_from_checkpoint(path, device, opts)
        cfg = method.cfg
        if onnx is None:
            model, precision = place_model(model, device, cfg["train"]["amp"], cfg["train"]["channels_last"])
        else:
            onnx_model = OnnxModel(onnx, device)
            onnx_model.check_fits(method, model)
            method.dense_plan(onnx_model)  # a fixed-size export: slide only (dense_plan says so in one sentence)
            model, precision = onnx_model, Precision(device)
        return cls(model, method, ckpt.class_names, precision, ckpt.categories, tta, score_threshold)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs: Any) -> "Predictor":
        """A predictor for a model folder (``tools/export.py --format folder``, or a local snapshot of a Hub
        repository holding one); ``kwargs`` as :meth:`from_checkpoint` (``onnx=folder / "model.onnx"`` runs the
        folder's ONNX export). Reads only safetensors and JSON."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise SegExtError(f"model folder {folder} does not exist or is not a folder; expected a folder written "
                              "by tools/export.py --format folder")
        return cls.from_checkpoint(folder, **kwargs)

    # ---- the pipeline ----------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> Any:
        """The network on a batch of prepared images (a stacked tensor or a list)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                return self.method.forward(self.model, images, self.tta)
        finally:
            self.model.train(was_training)

    def postprocess(self, outputs: Any, index: int, size: tuple[int, int], probs: bool = False) -> dict[str, Any]:
        """Image ``index`` of ``forward``'s outputs at its own ``size`` (H, W), as the method gives it (semantic:
        ``labels`` (H, W) and with ``probs`` the ``probs`` (C, H, W); instance: the detections)."""
        return self.method.postprocess(outputs, index, (int(size[0]), int(size[1])), probs)

    def run(self, images: torch.Tensor | Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
            probs: bool = False) -> list[dict[str, Any]]:
        """``forward`` then ``postprocess`` of every image of a prepared batch."""
        outputs = self.forward(images)
        return [self.postprocess(outputs, i, size, probs) for i, size in enumerate(sizes)]

    def result(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """A ``postprocess`` output as the API's NumPy result (instances: thresholded, by decreasing score)."""
        return self.method.result(raw, self.score_threshold)

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], probs: bool = False) -> list[dict[str, np.ndarray]]:
        """Predictions for several images (arrays or paths), at their own sizes."""
        arrays = [as_image(image) for image in images]
        if not arrays:
            return []
        prepared = [self.prepare(a) for a in arrays]
        return [self.result(raw) for raw in self.run(prepared, [a.shape[:2] for a in arrays], probs)]

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
