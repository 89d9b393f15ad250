#!/usr/bin/env python
"""Speed benchmarks, each against a reference measured in the same run; prints ratios and medians.

    python benchmarks/run.py [--quick] [--only NAME ...] [--json FILE] [--repeat N]

Benchmarks (targets in benchmarks/README.md):
  semseg_eval            SemSegEvaluator vs sklearn's confusion matrix + a sort-based AP over the pooled pixels
  semantic_loader        the training DataLoader (samples/s) vs the UNet training step (samples/s)
  train_overhead         the engine's epoch vs a bare PyTorch loop over the same batches
  watershed_postprocess  watershed post-processing per image vs Mask R-CNN inference on the same image (CPU)
  coco_eval              COCO segm evaluation: pycocotools vs faster-coco-eval
  cuda_throughput        images/s of each model in fp32, AMP and channels_last (only where CUDA is available)

Each timing is the median of --repeat runs after a warm-up. Memory figures are peak resident set sizes of a fresh
worker process, so they are comparable across dataset sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
PENNFUDAN = ROOT.parent / "shared" / "data" / "PennFudanPed"

import numpy as np  # noqa: E402
import torch  # noqa: E402


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``worker_<name>(**kwargs)`` in a fresh interpreter (for clean peak-memory figures)."""
    cmd = [sys.executable, str(Path(__file__)), "--worker", name, "--worker-args", json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- 1. semantic-segmentation evaluation ---------------------------------------------------------------

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


def worker_semseg_ours(num_images: int) -> dict[str, Any]:
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


def worker_semseg_reference(num_images: int) -> dict[str, Any]:
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


def bench_semseg_eval(quick: bool, repeat: int) -> dict[str, Any]:
    n = 20 if quick else 100
    ours = [run_worker("semseg_ours", num_images=n) for _ in range(repeat)]
    reference = [run_worker("semseg_reference", num_images=n) for _ in range(1 if quick else max(1, repeat // 2))]
    ours_s = statistics.median(r["seconds"] for r in ours)
    ref_s = statistics.median(r["seconds"] for r in reference)
    same_iou = ours[0]["confusion"] == reference[0]["confusion"]
    ap_diff = max(abs(a - b) for a, b in zip(ours[0]["ap"], reference[0]["ap"]))
    sizes = [n // 4, n // 2, n]
    scaling = {str(s): run_worker("semseg_ours", num_images=s) for s in sizes}
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


# ---- 2. the semantic training loader vs the training step -----------------------------------------------


def _semantic_setup(data_root: str | None, opts: list[str]):
    from seg_ext.config import load_config, merge_config
    from seg_ext.tasks.semantic import _datasets

    cfg = load_config(overrides=opts)
    if data_root:
        cfg = merge_config(cfg, {"data": {"root": data_root}}, "benchmark")
    datasets, _ = _datasets(cfg)
    return cfg, datasets


def _loader_rate(cfg, dataset, batches: int) -> float:
    from seg_ext.engine import make_loader

    loader = make_loader(dataset, int(cfg["data"]["batch_size"]), shuffle=True,
                         num_workers=int(cfg["data"]["num_workers"]), seed=0, drop_last=True)
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


def _step_rate(cfg, dataset, steps: int) -> float:
    from seg_ext.engine import build_optimizer
    from seg_ext.losses import weighted_cross_entropy
    from seg_ext.models import build_model
    from seg_ext.data.transforms import image_size_from

    bs = int(cfg["data"]["batch_size"])
    batch = torch.utils.data.default_collate([dataset[i % len(dataset)] for i in range(bs)])
    model = build_model(cfg["model"], num_classes=dataset.num_classes, image_size=image_size_from(cfg))
    opt = build_optimizer(model.parameters(), cfg["train"])
    model.train()

    def step():
        loss = weighted_cross_entropy(model(batch["image"]), batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds, _ = median_time(step, steps, warmup=2)
    return bs / seconds


def bench_semantic_loader(quick: bool, repeat: int) -> dict[str, Any]:
    rows = {}
    cases = [("default (synthetic scenes, 128 px)", None, [])]
    if PENNFUDAN.is_dir():
        cases.append(("Penn-Fudan, pennfudan_unet config (128 px)", str(PENNFUDAN),
                      ["data.format=pennfudan", "model.depth=4", "augment.crop_scale=[0.4,1.0]"]))
    for label, root, opts in cases:
        cfg, datasets = _semantic_setup(root, opts)
        batches = 15 if quick else 40
        loader = statistics.median(_loader_rate(cfg, datasets["train"], batches) for _ in range(repeat))
        step = _step_rate(cfg, datasets["train"], 4 if quick else 10)
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


# ---- 3. engine overhead ------------------------------------------------------------------------------------


def bench_train_overhead(quick: bool, repeat: int) -> dict[str, Any]:
    from seg_ext.engine import Trainer, build_optimizer, lr_factor_fn
    from seg_ext.losses import weighted_cross_entropy
    from seg_ext.models import build_model
    from seg_ext.data.transforms import image_size_from

    cfg, datasets = _semantic_setup(None, [])
    train = datasets["train"]
    bs = int(cfg["data"]["batch_size"])
    n_batches = 6 if quick else 12
    batches = [torch.utils.data.default_collate([train[(i * bs + j) % len(train)] for j in range(bs)])
               for i in range(n_batches)]
    epochs = 2 if quick else 3

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg["model"], num_classes=train.num_classes, image_size=image_size_from(cfg))
        opt = build_optimizer(model.parameters(), cfg["train"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor_fn({**cfg["train"], "epochs": epochs}, n_batches))
        return model, opt, sched

    def bare():
        model, opt, sched = fresh()
        model.train()
        for _ in range(epochs):
            for batch in batches:
                loss = weighted_cross_entropy(model(batch["image"]), batch["mask"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                float(loss.detach())

    def engine():
        model, opt, sched = fresh()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(
                model, opt, sched, batches,
                lambda m, b: (weighted_cross_entropy(m(b["image"]), b["mask"]), {}),
                lambda m: {"loss": 0.0, "mIoU": 0.0},  # validation inference is not engine overhead
                tmp, epochs=epochs, best_metric="mIoU", device=torch.device("cpu"),
            )
            trainer.fit()

    bare(), engine()  # warm-up: first-call allocations and kernel selection
    # interleave the two so drifting machine load hits both alike
    bare_t, engine_t = [], []
    for _ in range(repeat):
        bare_t.append(median_time(bare, 1, warmup=0)[0])
        engine_t.append(median_time(engine, 1, warmup=0)[0])
    ours, ref = statistics.median(engine_t), statistics.median(bare_t)
    ratio = ours / ref
    return {
        "ours_s": ours, "reference_s": ref, "ratio": ratio, "epochs": epochs, "batches_per_epoch": n_batches,
        "target": "engine / bare <= 1.05 (logging, progress, checkpoints and bookkeeping included)",
        "met": bool(ratio <= 1.05), "note": f"overhead {100 * (ratio - 1):+.1f}% over {epochs} epochs of {n_batches} batches",
    }


# ---- 4. watershed post-processing vs Mask R-CNN inference -------------------------------------------------


def _pennfudan_test_json(tmp: str) -> tuple[Path, Path]:
    """Penn-Fudan (or the synthetic pedestrians without it) converted to COCO in ``tmp``: (image root, test file)."""
    from seg_ext.data.pennfudan import convert_pennfudan
    from seg_ext.data.synthetic import ensure_synthetic_pedestrians

    root = PENNFUDAN if PENNFUDAN.is_dir() else ensure_synthetic_pedestrians()
    return root, convert_pennfudan(root, tmp)["test"]


def bench_watershed_postprocess(quick: bool, repeat: int) -> dict[str, Any]:
    from seg_ext.config import instance_defaults
    from seg_ext.models.maskrcnn import maskrcnn
    from seg_ext.postprocess import watershed_instances
    from seg_ext.watershed import WatershedMethod, instances_from_labels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the target is per image on one core
    try:
        with tempfile.TemporaryDirectory() as tmp:  # datasets read their COCO file when built
            root, test_json = _pennfudan_test_json(tmp)
            method = WatershedMethod(instance_defaults("watershed"), torch.device("cpu"))
            dataset = method.dataset(test_json, root, train=False)
        samples = [dataset[i] for i in range(min(10 if quick else 30, len(dataset)))]
        # network-like inputs: the oracle maps of each test image, softened so they are not exact levels
        maps = []
        for image, target in samples:
            fg = target["foreground"].numpy().astype(np.float32) * 0.9 + 0.05
            energy = target["level"].numpy().astype(np.float32)
            maps.append((fg, energy, target["orig_size"]))

        def post():
            for fg, energy, size in maps:
                labels, scores = watershed_instances(fg, energy, **method.post)
                instances_from_labels(labels, scores, size)

        ours, _ = median_time(post, repeat)
        ours_ms = 1000 * ours / len(maps)

        model = maskrcnn(2, backbone="resnet50_fpn").eval()  # torchvision's defaults: min_size 800
        images = [dataset.base[i][0] for i in range(min(3 if quick else 6, len(dataset)))]

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


# ---- 5. COCO evaluation backends -------------------------------------------------------------------------


def bench_coco_eval(quick: bool, repeat: int) -> dict[str, Any]:
    from seg_ext.data.coco import CocoInstanceDataset
    from seg_ext.evaluation.coco import coco_evaluate, masks_to_rles
    from scipy import ndimage

    with tempfile.TemporaryDirectory() as tmp:
        root, test_json = _pennfudan_test_json(tmp)
        dataset = CocoInstanceDataset(test_json, root)
    rng = np.random.default_rng(0)
    results = []
    copies = 2 if quick else 8  # several noisy detections per pedestrian, as a real detector gives
    for image_id in dataset.ids:
        for ann in dataset.coco.imgToAnns.get(image_id, []):
            mask = dataset.coco.annToMask(ann).astype(bool)
            for _ in range(copies):
                m = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 4))) if rng.random() < 0.5 else \
                    ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 4)))
                m = np.roll(m, int(rng.integers(-6, 7)), axis=1)
                if m.any():
                    results.append({"image_id": int(image_id), "category_id": 1, "score": float(rng.random()),
                                    "segmentation": masks_to_rles(m[None].astype(np.uint8))[0]})
    ours, _ = median_time(lambda: coco_evaluate(dataset.coco, results, "segm", backend="faster_coco_eval"), repeat)
    ref, _ = median_time(lambda: coco_evaluate(dataset.coco, results, "segm", backend="pycocotools"), repeat)
    a = coco_evaluate(dataset.coco, results, "segm", backend="faster_coco_eval")[0]
    b = coco_evaluate(dataset.coco, results, "segm", backend="pycocotools")[0]
    diff = max(0.0 if np.isnan(a[k]) and np.isnan(b[k]) else abs(a[k] - b[k]) for k in b)
    identical = diff < 1e-9  # the same up to the order of floating-point sums
    return {
        "ours_s": ours, "reference_s": ref, "ratio": ref / ours, "results": len(results), "images": len(dataset),
        "identical_metrics": identical, "max_metric_difference": diff, "segm_AP": b["segm/AP"],
        "target": "faster-coco-eval gives identical numbers (then offered as eval.backend)", "met": identical,
        "note": f"faster-coco-eval {ref / ours:.1f}x faster on {len(results)} segm results; largest metric "
        f"difference {diff:.1e} points",
    }


# ---- 6. CUDA throughput ------------------------------------------------------------------------------------


def throughput(device: torch.device, amp_dtype: torch.dtype, size: int, batch: int, steps: int) -> dict[str, Any]:
    """Training and inference images/s of each model in fp32, AMP, channels_last and both, on ``device``."""
    from seg_ext.models import build_model
    from seg_ext.models.dual_unet import DualHeadUNet

    models = {
        "unet": lambda: build_model({"name": "unet", "base_width": 32, "depth": 4}, num_classes=9),
        "smp_unet": lambda: build_model({"name": "smp_unet"}, num_classes=9, image_size=(size, size)),
        "baseconv": lambda: build_model({"name": "baseconv"}, num_classes=9),
        "dual_unet": lambda: DualHeadUNet(num_levels=16, base_width=16, depth=4),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows: dict[str, Any] = {}
    for name, make in models.items():
        for setting in ("fp32", "amp", "channels_last", "amp+channels_last"):
            model = make().to(device)
            x = torch.randn(batch, 3, size, size, device=device)
            if "channels_last" in setting:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            amp = "amp" in setting
            opt = torch.optim.AdamW(model.parameters())
            scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)

            def train_step():
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    out = model(x)
                    out = out["foreground"] if isinstance(out, dict) else out
                    loss = out.float().mean()
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sync()

            def infer_step():
                with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    model(x)
                sync()

            train_s, _ = median_time(train_step, steps, warmup=min(3, steps))
            infer_s, _ = median_time(infer_step, steps, warmup=min(3, steps))
            rows[f"{name}/{setting}"] = {"train_images_per_s": batch / train_s, "infer_images_per_s": batch / infer_s}
    return rows


def bench_cuda_throughput(quick: bool, repeat: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine", "met": None, "note": "skipped: no CUDA device"}
    batch = 16
    rows = throughput(torch.device("cuda"), torch.float16, 256, batch, 5 if quick else 20)
    base = rows["unet/fp32"]["train_images_per_s"]
    best = max((k for k in rows if k.startswith("unet/")), key=lambda k: rows[k]["train_images_per_s"])
    return {"ours_s": batch / rows[best]["train_images_per_s"], "reference_s": batch / base,
            "ratio": rows[best]["train_images_per_s"] / base, "rows": rows, "device": torch.cuda.get_device_name(),
            "met": None, "note": f"UNet training: best setting {best.split('/')[1]}, "
                                  f"{rows[best]['train_images_per_s'] / base:.2f}x fp32"}


BENCHMARKS: dict[str, Callable[[bool, int], dict[str, Any]]] = {
    "semseg_eval": bench_semseg_eval,
    "semantic_loader": bench_semantic_loader,
    "train_overhead": bench_train_overhead,
    "watershed_postprocess": bench_watershed_postprocess,
    "coco_eval": bench_coco_eval,
    "cuda_throughput": bench_cuda_throughput,
}
WORKERS = {"semseg_ours": worker_semseg_ours, "semseg_reference": worker_semseg_reference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 3 minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--repeat", type=int, default=None, help="runs per timing (default 3, quick 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](**json.loads(args.worker_args))))
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    repeat = args.repeat or (2 if args.quick else 3)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}"
    print(f"machine: {machine}{', CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
    results: dict[str, Any] = {}
    start = time.perf_counter()
    print(f"{'benchmark':<24}{'ours s':>10}{'ref s':>10}{'ratio':>9}  {'met':<5} note")
    for name in args.only or list(BENCHMARKS):
        t0 = time.perf_counter()
        res = BENCHMARKS[name](args.quick, repeat)
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
