"""predict_throughput: images/s of the whole prediction pipeline (reading + preparing in threads, the network,
resize / post-processing, PNG and overlay writing in threads) on the Penn-Fudan test images, against the network
alone on the same batches, already prepared: how much of the network's rate the files cost. It also times the
other stages alone (reading + preparing, post-processing + writing, per image on one core) and the best share any
overlap could reach on this machine (every stage's core-seconds spread over all cores).

The pipeline's own ceiling: the same run with a zero-cost network (the real network's outputs for each batch,
recorded once and replayed), against the same with no overlap at all (each image read, post-processed and written
before the next, in the main thread: `serial`, whose tensor and OpenCV ops still use their own threads, as the
package's serial pipeline always did; and `one_core`, the same with those threads off). Targets: that ceiling
>= 1.7x the serial rate (on 2 cores); on a GPU the whole pipeline >= 30% of the network-alone rate for the UNet,
>= 20% for the watershed. Cores used (CPU time / wall time) are reported for the overlapped and serial runs."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import torch

from harness import median_time, pennfudan_test_images, prediction_checkpoint, sized


def _one(kind: str, quick: bool, repeat: int, tmp: str) -> dict[str, Any]:
    from seg_ext.data.files import read_image
    from seg_ext.inference import Predictor
    from seg_ext.tasks.predict import _finish, predict_files

    files = pennfudan_test_images()[: sized(50, 16, 4, quick)]
    predictor = Predictor.from_checkpoint(prediction_checkpoint(kind, tmp), device="auto")  # a GPU where there is one
    batch = predictor.cfg["data"]["batch_size"]
    inputs = [predictor.prepare(read_image(f)) for f in files]
    # lists, as the pipeline hands them over: a checkpoint trained at a scale prepares images of their own sizes
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    precision = predictor.precision

    def network():
        for x in batches:
            predictor.forward(x)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    def pipeline():
        predict_files(predictor, files, f"{tmp}/out_{kind}", batch_size=batch, progress=False)

    def no_overlays():
        predict_files(predictor, files, f"{tmp}/plain_{kind}", batch_size=batch, overlays=False, progress=False)

    # the pipeline with a zero-cost network: each batch's real outputs replayed in the loader's order
    recorded = [predictor.forward(x) for x in batches]
    real_forward = predictor.forward

    cores_used: dict[str, float] = {}

    def replayed(mode: str) -> None:
        queue = iter(recorded)
        predictor.forward = lambda inputs: next(queue)
        threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            if mode == "overlapped":
                predict_files(predictor, files, f"{tmp}/zero_{kind}", batch_size=batch, progress=False)
            else:  # serial: one image after the other; one_core: also without the ops' own threads
                if mode == "one_core":
                    torch.set_num_threads(1)
                    cv2.setNumThreads(1)
                predict_files(predictor, files, f"{tmp}/{mode}_{kind}", batch_size=batch, num_workers=0, writers=0,
                              progress=False)
        finally:
            predictor.forward = real_forward
            torch.set_num_threads(threads)
            cv2.setNumThreads(cv_threads)
        cores_used[mode] = (time.process_time() - cpu) / (time.perf_counter() - wall)

    zero_s, _ = median_time(lambda: replayed("overlapped"), repeat)
    serial_s, _ = median_time(lambda: replayed("serial"), repeat)
    one_core_s, _ = median_time(lambda: replayed("one_core"), repeat)
    net_s, _ = median_time(network, repeat)
    all_s, _ = median_time(pipeline, repeat)
    plain_s, _ = median_time(no_overlays, repeat)
    # what the rest costs on one core, stage by stage: it cannot hide behind a network that uses every core
    read_s, _ = median_time(lambda: [predictor.prepare(read_image(f)) for f in files], 1)
    outputs = [(predictor.forward(x), x) for x in batches]
    images = [read_image(f) for f in files]

    def finish():
        k = 0
        for out, x in outputs:
            for i in range(len(x)):
                _finish(k, predictor, out, i, images[k], files[k], f"im{k}", k + 1, {1: 1}, Path(f"{tmp}/finish_{kind}"),
                        True, 0.0)
                k += 1

    for folder in ("masks", "instances", "overlays"):
        Path(f"{tmp}/finish_{kind}/{folder}").mkdir(parents=True, exist_ok=True)
    finish_s, _ = median_time(finish, 1)
    n, cores = len(files), os.cpu_count() or 1
    threads = torch.get_num_threads()
    # the best any overlap can do on this machine: all the work's core-seconds spread over every core
    ceiling = net_s / max(net_s, (net_s * threads + read_s + finish_s) / cores)
    return {"pipeline_images_per_s": n / all_s, "network_images_per_s": n / net_s, "share": net_s / all_s,
            "no_overlays_images_per_s": n / plain_s, "no_overlays_share": net_s / plain_s,
            "read_prepare_ms": 1000 * read_s / n, "network_ms": 1000 * net_s / n, "postprocess_write_ms": 1000 * finish_s / n,
            "ceiling_share": ceiling, "images": n, "batch": batch, "precision": precision.describe(),
            "zero_network_images_per_s": n / zero_s, "serial_images_per_s": n / serial_s,
            "zero_network_speedup": serial_s / zero_s, "one_core_images_per_s": n / one_core_s,
            "zero_network_vs_one_core": one_core_s / zero_s, "cores_used_overlapped": cores_used["overlapped"],
            "cores_used_serial": cores_used["serial"], "device": str(predictor.device)}


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: _one(kind, quick, repeat, tmp) for kind in ("unet", "watershed")}
    speedup = min(r["zero_network_speedup"] for r in results.values())
    met = speedup >= 1.7
    target = "with a zero-cost network, the pipeline >= 1.7x its serial rate"
    if torch.cuda.is_available():  # on a GPU the network's share counts too
        met = met and results["unet"]["share"] >= 0.3 and results["watershed"]["share"] >= 0.2
        target += "; on the GPU the pipeline >= 30% (UNet) / 20% (watershed) of the network-alone rate"
    return {
        "ours_s": 1 / results["unet"]["zero_network_images_per_s"], "reference_s": 1 / results["unet"]["serial_images_per_s"],
        "ratio": speedup, **{f"{k}_{m}": round(v[m], 3) if isinstance(v[m], float) else v[m]
                             for k, v in results.items() for m in v},
        "target": target, "met": bool(met),
        "note": "; ".join(f"{k}: zero-cost network {v['zero_network_images_per_s']:.1f} images/s on "
                          f"{v['cores_used_overlapped']:.2f} cores, serial {v['serial_images_per_s']:.1f} on "
                          f"{v['cores_used_serial']:.2f} ({v['zero_network_speedup']:.2f}x), serial on one core "
                          f"{v['one_core_images_per_s']:.1f} ({v['zero_network_vs_one_core']:.2f}x); pipeline {v['pipeline_images_per_s']:.1f} vs {v['network_images_per_s']:.1f} images/s "
                          f"({100 * v['share']:.0f}%; {100 * v['no_overlays_share']:.0f}% without overlays; per image "
                          f"read {v['read_prepare_ms']:.1f} + network {v['network_ms']:.1f} + post/write "
                          f"{v['postprocess_write_ms']:.1f} ms; ceiling on {os.cpu_count()} cores "
                          f"{100 * v['ceiling_share']:.0f}%)" for k, v in results.items()),
    }
