"""semseg_eval: SemSegEvaluator vs sklearn's confusion matrix + a sort-based AP over the pooled pixels (each in
a fresh process, for its peak memory)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from harness import peak_rss_mb, run_worker, sized

SEMSEG_C, SEMSEG_SIZE, SEMSEG_BATCH = 9, 512, 4


def _semseg_batches(num_images: int, seed: int = 0):
    """Deterministic (logits, target) batches: a noisy, moderately confident network on random labels."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, num_images, SEMSEG_BATCH):
        n = min(SEMSEG_BATCH, num_images - start)
        target = torch.randint(0, SEMSEG_C, (n, SEMSEG_SIZE, SEMSEG_SIZE), generator=gen)
        logits = 2.0 * torch.randn(n, SEMSEG_C, SEMSEG_SIZE, SEMSEG_SIZE, generator=gen)
        logits.scatter_add_(1, target.unsqueeze(1), torch.full((n, 1, SEMSEG_SIZE, SEMSEG_SIZE), 2.5))
        yield logits, target


def worker_ours(num_images: int) -> dict[str, Any]:
    from seg_ext.evaluation import SemSegEvaluator

    evaluator = SemSegEvaluator(SEMSEG_C, 255)
    seconds = 0.0
    for logits, target in _semseg_batches(num_images):
        start = time.perf_counter()
        evaluator.process(logits, target)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluator.evaluate()
    seconds += time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "confusion": evaluator.confusion_matrix().tolist(),
            "ap": [metrics[f"AP/{c}"] for c in range(SEMSEG_C)]}


def _sort_ap(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = np.concatenate([[0.0], tp / max(tp[-1], 1), [1.0]])
    precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def worker_reference(num_images: int) -> dict[str, Any]:
    """The reference assignment's way: pool every pixel, sklearn's confusion matrix, a sort per class."""
    from sklearn.metrics import confusion_matrix

    logits_all, target_all = [], []
    for logits, target in _semseg_batches(num_images):
        logits_all.append(logits)
        target_all.append(target)
    start = time.perf_counter()
    logits = torch.cat(logits_all)
    labels = torch.cat(target_all).numpy().ravel()
    prob = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, SEMSEG_C).numpy()
    pred = logits.argmax(1).numpy().ravel()
    confusion = confusion_matrix(labels, pred, labels=list(range(SEMSEG_C)))
    ap = [100 * _sort_ap(prob[:, c], labels == c) for c in range(SEMSEG_C)]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "confusion": confusion.tolist(), "ap": ap}


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    n = sized(100, 20, 4, quick)
    ours = [run_worker("semseg_eval.worker_ours", num_images=n) for _ in range(repeat)]
    reference = [run_worker("semseg_eval.worker_reference", num_images=n) for _ in range(1 if quick else max(1, repeat // 2))]
    ours_s = statistics.median(r["seconds"] for r in ours)
    ref_s = statistics.median(r["seconds"] for r in reference)
    same_iou = ours[0]["confusion"] == reference[0]["confusion"]
    ap_diff = max(abs(a - b) for a, b in zip(ours[0]["ap"], reference[0]["ap"]))
    sizes = [n // 4, n // 2, n]
    scaling = {str(s): run_worker("semseg_eval.worker_ours", num_images=s) for s in sizes}
    per_image_ms = {s: 1000 * r["seconds"] / int(s) for s, r in scaling.items()}
    memory = {s: round(r["peak_rss_mb"], 1) for s, r in scaling.items()}
    ratio = ref_s / ours_s
    return {
        "ours_s": ours_s, "reference_s": ref_s, "ratio": ratio, "images": n, "image_size": SEMSEG_SIZE,
        "classes": SEMSEG_C, "same_confusion_matrix": same_iou, "max_ap_difference": ap_diff,
        "ms_per_image_by_size": per_image_ms, "peak_rss_mb_by_size": memory,
        "reference_peak_rss_mb": round(reference[0]["peak_rss_mb"], 1),
        "target": "ratio >= 20 at 100 images, same IoU, AP within 0.1, memory flat, cost linear",
        # --quick runs 20 images, where the reference's sorts are cheaper per pixel: it checks correctness only
        "met": bool(same_iou and ap_diff <= 0.1 and (quick or ratio >= 20)),
        "note": ("(speed target is for 100 images) " if quick else "") + f"{ratio:.1f}x faster; per-image ms at {sizes} images: "
        + ", ".join(f"{v:.1f}" for v in per_image_ms.values())
        + "; peak MB: " + ", ".join(str(v) for v in memory.values()),
    }
