#!/usr/bin/env python
"""Speed benchmarks, each against a reference measured in the same run; prints ratios and medians.

    python benchmarks/run.py [--quick | --smoke] [--only NAME ...] [--json FILE] [--repeat N]

Benchmarks (one module each in this folder; targets in benchmarks/README.md):
  semseg_eval            SemSegEvaluator vs sklearn's confusion matrix + a sort-based AP over the pooled pixels
  semantic_loader        the training DataLoader (samples/s) vs the training step (samples/s)
  train_overhead         the engine's epoch vs a bare PyTorch loop over the same batches
  watershed_postprocess  watershed post-processing per image vs Mask R-CNN inference on the same image (CPU)
  coco_eval              COCO segm evaluation: pycocotools vs faster-coco-eval
  cpu_throughput         training/inference images/s of each model in fp32, bf16 autocast, channels_last and both,
                         with each setting's numerical difference from fp32; is the engine's CPU default the
                         fastest safe one?
  cuda_throughput        the same on CUDA with fp16 autocast (only where CUDA is available)
  predict_throughput     tools/predict.py images/s vs the network alone
  onnx_vs_torch          onnxruntime vs PyTorch inference images/s
  ddp_scaling            training images/s in N processes under torchrun (all GPUs, or 2 CPU processes) vs 1
  ray_overhead           a tiny sweep on Ray (one run at a time) vs the local runner: seconds added per trial

Each timing is the median of --repeat runs after a warm-up. Memory figures are peak resident set sizes of a fresh
worker process, so they are comparable across dataset sizes. A new benchmark is a module with
``bench(quick, repeat) -> dict`` (``ours_s``, ``reference_s``, ``ratio``, ``met``, ``note``) and a line in BENCHMARKS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (puts the checkout on sys.path)
import torch  # noqa: E402

# name -> "module:function" in this folder
BENCHMARKS = {
    "semseg_eval": "semseg_eval:bench",
    "semantic_loader": "semantic_loader:bench",
    "train_overhead": "train_overhead:bench",
    "watershed_postprocess": "watershed_postprocess:bench",
    "coco_eval": "coco_eval:bench",
    "cpu_throughput": "throughput:bench_cpu",
    "cuda_throughput": "throughput:bench_cuda",
    "predict_throughput": "predict_throughput:bench",
    "onnx_vs_torch": "onnx_vs_torch:bench",
    "ddp_scaling": "ddp_scaling:bench",
    "large_image": "large_image:bench",
    "ray_overhead": "ray_overhead:bench",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 3 minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--repeat", type=int, default=None, help="runs per timing (default 3, quick 2)")
    parser.add_argument("--smoke", action="store_true", help="--quick at the smallest sizes that run every step, one "
                        "repeat: checks that each benchmark still runs (its figures are not measurements)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # harness.run_worker: module.function of this folder, in a fresh process
        print(json.dumps(harness.function(args.worker)(**json.loads(args.worker_args))))
        return 0
    if args.smoke:  # before the benchmarks' modules read it (and for their worker processes)
        os.environ["SEG_EXT_BENCH_SMOKE"] = "1"
        harness.SMOKE = True
        args.quick, args.repeat = True, 1
    import logging

    logging.basicConfig(level=logging.WARNING)
    repeat = args.repeat or (2 if args.quick else 3)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}"
    print(f"machine: {machine}{', CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
    print(f"checkout: {harness.ROOT}")
    results: dict[str, Any] = {}
    start = time.perf_counter()
    print(f"{'benchmark':<24}{'ours s':>10}{'ref s':>10}{'ratio':>9}  {'met':<5} note")
    for name in args.only or list(BENCHMARKS):
        t0 = time.perf_counter()
        res = harness.function(BENCHMARKS[name])(args.quick, repeat)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results[name] = res
        met = {True: "yes", False: "NO", None: "-"}[res.get("met")]
        if "skipped" in res:
            print(f"{name:<24}{'':>10}{'':>10}{'':>9}  {met:<5} {res['note']}")
        else:
            print(f"{name:<24}{res['ours_s']:>10.4f}{res['reference_s']:>10.4f}{res['ratio']:>9.2f}  {met:<5} {res['note']}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, **results}, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
