"""predict_throughput: images/s of the whole prediction pipeline (decode in loader workers, network, resize /
post-processing, PNG and overlay writing in threads) on the Penn-Fudan test images, against the network alone on
the same batches, already prepared: how much of the network's rate the files cost."""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from harness import median_time, pennfudan_test_images, prediction_checkpoint


def _one(kind: str, quick: bool, repeat: int, tmp: str) -> dict[str, Any]:
    from seg_ext.data.files import read_image
    from seg_ext.inference import Predictor
    from seg_ext.tasks.predict import predict_files

    files = pennfudan_test_images()[: 16 if quick else 50]
    predictor = Predictor.from_checkpoint(prediction_checkpoint(kind, tmp), device="cpu")
    batch = predictor.cfg["data"]["batch_size"]
    inputs = [predictor.prepare(read_image(f)) for f in files]
    batches = [torch.stack(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]
    model, precision = predictor.model, predictor.precision

    def network():
        with torch.no_grad(), precision.autocast():
            for x in batches:
                model(x)

    def pipeline():
        predict_files(predictor, files, f"{tmp}/out_{kind}", batch_size=batch, num_workers=2, progress=False)

    net_s, _ = median_time(network, repeat)
    all_s, _ = median_time(pipeline, repeat)
    return {"pipeline_images_per_s": len(files) / all_s, "network_images_per_s": len(files) / net_s,
            "share": net_s / all_s, "images": len(files), "batch": batch, "precision": precision.describe()}


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: _one(kind, quick, repeat, tmp) for kind in ("unet", "watershed")}
    worst = min(r["share"] for r in results.values())
    return {
        "ours_s": 1 / results["unet"]["pipeline_images_per_s"], "reference_s": 1 / results["unet"]["network_images_per_s"],
        "ratio": worst, **{f"{k}_{m}": round(v[m], 3) if isinstance(v[m], float) else v[m]
                            for k, v in results.items() for m in v},
        "target": "the whole pipeline >= 80% of the network-alone rate", "met": bool(worst >= 0.8),
        "note": "; ".join(f"{k}: {v['pipeline_images_per_s']:.1f} vs {v['network_images_per_s']:.1f} images/s "
                          f"({100 * v['share']:.0f}%)" for k, v in results.items()),
    }
