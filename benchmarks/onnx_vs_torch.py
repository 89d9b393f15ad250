"""onnx_vs_torch: onnxruntime against PyTorch, images/s of the network on prepared batches of Penn-Fudan test
images (the Penn-Fudan UNet at 128x128, batch 8; the dual-head UNet at 256x256, batch 4), PyTorch in the engine's
default precision for the device and in fp32. The ONNX models are written by ``seg_ext.export``. On a CUDA
machine: the same on the GPU."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from harness import median_time, pennfudan_test_images, prediction_checkpoint, sized


def _one(kind: str, quick: bool, repeat: int, tmp: str, device: torch.device) -> dict[str, Any]:
    from seg_ext.data.files import read_image
    from seg_ext.export import export_onnx
    from seg_ext.inference import Predictor

    files = pennfudan_test_images()[: sized(48, 16, 4, quick)]
    checkpoint = prediction_checkpoint(kind, tmp)
    onnx = Path(tmp) / f"{kind}.onnx"
    default = Predictor.from_checkpoint(checkpoint, device=device)
    # a checkpoint trained at a scale predicts each image whole at its own size: that needs a dynamic export
    export_onnx(checkpoint, onnx, image=files[0], dynamic=default.method.scale is not None)
    fp32 = Predictor.from_checkpoint(checkpoint, device=device, opts=["train.amp=off", "train.channels_last=false"])
    ort = Predictor.from_checkpoint(checkpoint, device=device, onnx=onnx)
    batch = default.cfg["data"]["batch_size"]
    inputs = [default.prepare(read_image(f)) for f in files]
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]  # lists: scale-mode inputs differ in size

    def rate(predictor: Predictor) -> float:
        def network():
            for x in batches:
                out = predictor.forward(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            return out

        seconds, _ = median_time(network, repeat)
        return len(files) / seconds

    rates = {"onnxruntime": rate(ort), "torch_default": rate(default), "torch_fp32": rate(fp32)}
    return {**{f"{k}_images_per_s": round(v, 2) for k, v in rates.items()},
            "vs_default": rates["onnxruntime"] / rates["torch_default"], "vs_fp32": rates["onnxruntime"] / rates["torch_fp32"],
            "default_precision": default.precision.describe(), "providers": ort.model.session.get_providers()}


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    # on a CUDA machine both run there (onnxruntime needs the onnxruntime-gpu package for its CUDA provider;
    # with the CPU package it falls back to the CPU, and the result's providers say so)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: _one(kind, quick, repeat, tmp, device) for kind in ("unet", "watershed")}
    return {
        "ours_s": 1 / results["unet"]["onnxruntime_images_per_s"], "reference_s": 1 / results["unet"]["torch_default_images_per_s"],
        "ratio": results["unet"]["vs_default"],
        **{f"{k}_{m}": (round(v[m], 3) if isinstance(v[m], float) else v[m]) for k, v in results.items() for m in v},
        "target": "reported (no target)", "met": True,
        "note": "; ".join(f"{k}: onnxruntime {v['onnxruntime_images_per_s']:.1f} images/s = {v['vs_default']:.2f}x torch "
                          f"{v['default_precision']}, {v['vs_fp32']:.2f}x torch fp32" for k, v in results.items()),
    }
