"""ONNX export of a checkpoint's network, checked with onnxruntime against PyTorch before it is kept.

The exported graph takes what :class:`~seg_ext.inference.Predictor` feeds the network (``images``: N x 3 x H x W,
as the method prepares them) and returns its raw outputs, named by the method (``Method.onnx_outputs``; the
method's ``export_module`` turns them into a tuple); ``tools/predict.py --onnx`` adds the same preparation and
post-processing as for PyTorch. The batch size is always dynamic; ``dynamic=True`` makes height and width
dynamic too, in the model's size multiple (``Method.size_multiple``). A method whose network exports for one
size only (``Method.export_fixed_size``: torchvision's detectors) goes through torchvision's path (batch 1, the
check image's size). An export that fails or does not match is an error, and no file is left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_ext.data.files import read_image
from seg_ext.data.formats import find_format
from seg_ext.errors import SegExtError
from seg_ext.inference import model_from_checkpoint
from seg_ext.methods import Method

logger = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-3  # largest |onnx - torch| over the largest |torch| that an export may show
MAX_SIDE = 8192


class ExportError(SegExtError):
    """The model cannot be exported, or its export does not match PyTorch."""


def find_image(method: Method) -> Path:
    """A real image to check an export on: the first image (sorted) of the checkpoint's data (the built-in
    synthetic data when the run used it)."""
    data = method.cfg["data"]
    root = Path(data["root"]).expanduser() if data["root"] else None
    try:
        image = find_format(root, data["format"], method.task).example_image(root, method.task)
    except SegExtError:
        image = None
    if image is None:
        raise ExportError(f"no image found under the checkpoint's data folder {root}; pass --image FILE to check the "
                          "export on")
    return image


def export_onnx(checkpoint: str | Path, output: str | Path, dynamic: bool = False, image: str | Path | None = None,
                opset: int = 18) -> dict[str, Any]:
    """Export ``checkpoint``'s network to ``output`` and check it on a real image with onnxruntime.

    Returns:
        What was exported and checked: input size, dynamic axes, size multiple and the largest differences.

    Raises:
        ExportError: the model does not export, or onnxruntime's outputs differ from PyTorch's by more than
            :data:`RELATIVE_TOLERANCE` of their largest value (the file is then not written).
    """
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"--output {output} is a folder; expected a file name such as model.onnx")
    model, method, ckpt = model_from_checkpoint(checkpoint, torch.device("cpu"))
    image_path = Path(image) if image else find_image(method)
    picture = read_image(image_path)
    facts = {"task": method.task, "method": method.name, "model": method.cfg["model"]["name"],
             "classes": ckpt.class_names}
    if method.export_fixed_size:
        if dynamic:
            raise ExportError(f"method {method.name} exports for one image size only (torchvision's limitation, "
                              "pytorch/vision#2311); export it without --dynamic, with --image of the size you will "
                              "predict on")
        return _export_fixed_size(model, method, picture, image_path, output, opset, facts)
    net, outputs, size = method.export_module(model), list(method.onnx_outputs), method.input_size
    multiple = method.size_multiple(model)
    if dynamic and multiple is None:
        raise ExportError(f"model {method.cfg['model']['name']} predicts at its training size {size[0]}x{size[1]} only; "
                          "export it without --dynamic")
    example = method.prepare(picture)[None]
    if method.scale is not None:  # at the training scale: a window of the image, as sliding prediction gives them
        h, w = size
        example = torch.nn.functional.pad(example, (0, max(0, w - example.shape[-1]), 0, max(0, h - example.shape[-2])))[..., :h, :w]
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1024)}
    checks = [example, torch.cat([example, example.flip(-1)])]  # batch 1 and 2
    if dynamic:  # height and width too, checked on the real image near its own size, in the model's multiple
        step = multiple or 1
        axes[2] = step * torch.export.Dim("height", min=max(1, 32 // step), max=MAX_SIDE // step)
        axes[3] = step * torch.export.Dim("width", min=max(1, 32 // step), max=MAX_SIDE // step)
        h, w = picture.shape[:2]
        other = (max(32, h // step * step), max(32, w // step * step))
        if other == tuple(size):
            other = (size[0] + 2 * step * max(1, 16 // step), size[1] + step * max(1, 16 // step))
        resized = torch.nn.functional.interpolate(example, size=other, mode="bilinear", align_corners=False)
        checks.append(resized)
    facts.update({"input_size": list(size), "size_multiple": multiple if dynamic else None})
    differences = _write_checked(net, example, output, outputs, axes, opset, checks, facts)
    return {"output": str(output), "image": str(image_path), "input_size": list(size), "dynamic": dynamic,
            "size_multiple": multiple if dynamic else None, "outputs": outputs,
            "checked_shapes": [list(c.shape) for c in checks], "max_abs_difference": differences[0],
            "max_relative_difference": differences[1]}


def _write_checked(net: nn.Module, example: torch.Tensor, output: Path, outputs: list[str], axes: dict[int, Any],
                   opset: int, checks: list[torch.Tensor], facts: dict[str, Any], dynamo: bool = True,
                   what: str = "the export") -> tuple[float, float]:
    """Export into a temporary file beside ``output``, add ``facts`` as metadata, compare with PyTorch on
    ``checks``, and only then move it to ``output``; returns the largest absolute and relative differences."""
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as tmp:
        path = Path(tmp) / output.name
        _torch_export(net, example, path, outputs, {"images": axes}, opset, dynamo=dynamo)
        _add_metadata(path, facts)
        differences = _compare(net, path, checks, outputs, what)
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, output)
    return differences


def _torch_export(net: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], dynamic_shapes: dict[str, Any],
                  opset: int, dynamo: bool = True) -> None:
    """``torch.onnx.export``: the torch.export-based exporter, or (``dynamo=False``) the TorchScript one that
    torchvision's detection models are tested with."""
    net.eval()
    kwargs: dict[str, Any] = {"dynamic_shapes": (dynamic_shapes["images"],)} if dynamo else {}
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=outputs, dynamo=dynamo,
                              opset_version=opset, verbose=False, **kwargs)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ExportError(f"torch.onnx.export failed ({exc.__class__.__name__}: {message})") from None


def _add_metadata(path: Path, facts: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "seg_ext", json.dumps(facts)
    onnx.save(model, str(path))


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a detector's graph warns about its data-dependent shapes
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(net: nn.Module, path: Path, inputs: list[torch.Tensor], outputs: list[str],
             what: str = "the export") -> tuple[float, float]:
    """Largest absolute and relative difference of onnxruntime's outputs from PyTorch's (fp32) over ``inputs``."""
    session = _session(path)
    worst_abs, worst_rel = 0.0, 0.0
    for x in inputs:
        with torch.no_grad():
            expected = net(x)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        try:
            got = session.run(None, {"images": x.numpy()})
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot run {what} on a {tuple(x.shape)} input ({exc.__class__.__name__})") from None
        for name, e, g in zip(outputs, expected, got):
            e = e.float().numpy()
            if e.shape != g.shape:
                raise ExportError(f"{what}'s {name} has shape {g.shape} on a {tuple(x.shape)} input; PyTorch gives {e.shape}")
            diff = float(np.abs(e - g.astype(np.float32)).max()) if e.size else 0.0
            rel = diff / max(float(np.abs(e).max()) if e.size else 0.0, 1e-12)
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
            if rel > RELATIVE_TOLERANCE:
                raise ExportError(f"{what}'s {name} differs from PyTorch's by {diff:.3g} ({rel:.3g} of its largest value) "
                                  f"on a {tuple(x.shape)} input; expected at most {RELATIVE_TOLERANCE:g}; the file is not written")
    return worst_abs, worst_rel


def _export_fixed_size(model: nn.Module, method: Method, picture: np.ndarray, image_path: Path, output: Path, opset: int,
                       facts: dict[str, Any]) -> dict[str, Any]:
    """A detector through the TorchScript-based ONNX exporter (as torchvision tests its models): batch 1 and the
    check image's size, fixed (pytorch/vision#2311: dynamic axes do not work for them)."""
    example = method.prepare(picture)
    h, w = picture.shape[:2]
    net = method.export_module(model).eval()
    outputs = list(method.onnx_outputs)
    facts = {**facts, "input_size": [h, w], "size_multiple": None}
    try:
        worst_abs, worst_rel = _write_checked(net, example[None], output, outputs, {}, opset, [example[None]], facts,
                                              dynamo=False, what=f"the {method.name} export")
    except ExportError as exc:
        raise ExportError(f"method {method.name} does not export to ONNX with this torch/torchvision ({exc}); "
                          "use the PyTorch checkpoint (tools/predict.py without --onnx)") from None
    return {"output": str(output), "image": str(image_path), "input_size": [h, w], "dynamic": False, "outputs": outputs,
            "batch": 1, "checked_shapes": [[1, 3, h, w]], "max_abs_difference": worst_abs, "max_relative_difference": worst_rel}
