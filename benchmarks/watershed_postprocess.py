"""watershed_postprocess: the watershed post-processing per image vs Mask R-CNN inference on the same image (one
CPU core)."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch

from harness import median_time, pennfudan_test_split, sized


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    from seg_ext.methods import method_config
    from seg_ext.models.maskrcnn import maskrcnn
    from seg_ext.methods import build_method

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the target is per image on one core
    try:
        cfg = method_config("watershed")
        method = build_method(cfg, torch.device("cpu"))
        with tempfile.TemporaryDirectory() as tmp:  # datasets read their COCO file when built
            root, dataset = pennfudan_test_split(tmp, method, cfg)
        samples = [dataset[i] for i in range(min(sized(30, 10, 2, quick), len(dataset)))]
        # network-like inputs: the oracle maps of each test image, softened so they are not exact levels
        maps = []
        for image, target in samples:
            fg = target["foreground"].numpy().astype(np.float32) * 0.9 + 0.05
            energy = target["level"].numpy().astype(np.float32)
            maps.append((fg, energy, target["orig_size"]))

        def post():
            for fg, energy, size in maps:
                method.instances(fg, energy, size)

        ours, _ = median_time(post, repeat)
        ours_ms = 1000 * ours / len(maps)

        # torchvision's defaults (min_size 800); a smoke run only checks that the step runs
        model = maskrcnn(2, backbone="resnet50_fpn", min_size=sized(800, 800, 320, quick),
                         max_size=sized(1333, 1333, 533, quick)).eval()
        images = [dataset.base[i][0] for i in range(min(sized(6, 3, 1, quick), len(dataset)))]

        def infer():
            with torch.no_grad():
                for image in images:
                    model([image])

        ref, _ = median_time(infer, 1 if quick else 2)
        ref_ms = 1000 * ref / len(images)
    finally:
        torch.set_num_threads(threads)
    sizes = [s for _, _, s in maps]
    return {
        "ours_s": ours_ms / 1000, "reference_s": ref_ms / 1000, "ratio": ref_ms / ours_ms, "ours_ms_per_image": ours_ms,
        "maskrcnn_ms_per_image": ref_ms, "images": len(maps), "network_size": list(method.input_size),
        "mean_image_size": [round(float(np.mean([s[0] for s in sizes]))), round(float(np.mean([s[1] for s in sizes])))],
        "data": str(root.name), "target": "<= 50 ms per image on one core", "met": bool(ours_ms <= 50),
        "note": f"{ours_ms:.1f} ms/image vs Mask R-CNN R50-FPN inference {ref_ms:.0f} ms/image (1 thread)",
    }
