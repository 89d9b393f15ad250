"""semantic_loader: the training DataLoader (samples/s) vs the training step (samples/s), as training runs both."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import torch

from harness import PENNFUDAN, median_time, semantic_config, semantic_run


def _loader_rate(run, dataset, batches: int) -> float:
    loader = run.loader(dataset, train=True)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        samples += len(batch["image"])
    return samples / (time.perf_counter() - start)


def _step_rate(trainer, dataset, batch_size: int, steps: int) -> float:
    """Samples/s of the trainer's own step (forward, loss, backward, optimiser and schedule) on one batch."""
    batch = torch.utils.data.default_collate([dataset[i % len(dataset)] for i in range(batch_size)])
    trainer.model.train()
    seconds, _ = median_time(lambda: trainer.run_step(batch), steps, warmup=2)
    return batch_size / seconds


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    rows = {}
    cases = [("default (synthetic scenes, 128 px)", None, [])]
    if PENNFUDAN.is_dir():
        cases.append(("Penn-Fudan, pennfudan_unet config (128 px)", str(PENNFUDAN),
                      ["data.format=pennfudan", "model.depth=4", "augment.crop_scale=[0.4,1.0]"]))
    for label, root, opts in cases:
        cfg = semantic_config(root, opts)
        with tempfile.TemporaryDirectory() as tmp:
            run, _, _, trainer = semantic_run(cfg, tmp)
            train = run.datasets["train"]
            batches = 15 if quick else 40
            loader = statistics.median(_loader_rate(run, train, batches) for _ in range(repeat))
            step = _step_rate(trainer, train, cfg["data"]["batch_size"], 4 if quick else 10)
        rows[label] = {"loader_samples_per_s": loader, "step_samples_per_s": step, "ratio": loader / step,
                       "num_workers": cfg["data"]["num_workers"], "batch_size": cfg["data"]["batch_size"]}
    first = next(iter(rows.values()))
    ratio = min(r["ratio"] for r in rows.values())
    return {
        "ours_s": 1 / first["loader_samples_per_s"], "reference_s": 1 / first["step_samples_per_s"], "ratio": ratio,
        "cases": rows, "target": "loader >= 2x the training step (ratio = loader samples/s / step samples/s)",
        "met": bool(ratio >= 2),
        "note": "; ".join(f"{k}: loader {v['loader_samples_per_s']:.0f}/s vs step {v['step_samples_per_s']:.0f}/s "
                          f"= {v['ratio']:.1f}x" for k, v in rows.items()),
    }
