#!/usr/bin/env python
"""Speed benchmarks, each against a reference measured in the same run; prints ratios and medians.

    python benchmarks/run.py [--quick] [--only NAME ...] [--json FILE] [--repeat N]

Benchmarks (targets in benchmarks/README.md):
  semseg_eval            SemSegEvaluator vs sklearn's confusion matrix + a sort-based AP over the pooled pixels
  semantic_loader        the training DataLoader (samples/s) vs the UNet training step (samples/s)
  train_overhead         the engine's epoch vs a bare PyTorch loop over the same batches
  watershed_postprocess  watershed post-processing per image vs Mask R-CNN inference on the same image (CPU)
  coco_eval              COCO segm evaluation: pycocotools vs faster-coco-eval
  cpu_throughput         training/inference images/s of each model in fp32, bf16 autocast, channels_last and both,
                         with each setting's numerical difference from fp32; is the engine's CPU default the
                         fastest safe one?
  cuda_throughput        the same on CUDA with fp16 autocast (only where CUDA is available)

Each timing is the median of --repeat runs after a warm-up. Memory figures are peak resident set sizes of a fresh
worker process, so they are comparable across dataset sizes.
"""

from __future__ import annotations

import argparse
import json
import math
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
    from seg_ext.engine import build_optimizer, place_model
    from seg_ext.losses import weighted_cross_entropy
    from seg_ext.models import build_model
    from seg_ext.data.transforms import image_size_from

    bs = int(cfg["data"]["batch_size"])
    batch = torch.utils.data.default_collate([dataset[i % len(dataset)] for i in range(bs)])
    model = build_model(cfg["model"], num_classes=dataset.num_classes, image_size=image_size_from(cfg))
    model, precision = place_model(model, cfg["train"], torch.device("cpu"))  # the step as training runs it by default
    opt = build_optimizer(model.parameters(), cfg["train"])
    model.train()

    def step():
        with precision.autocast():
            logits = model(batch["image"])
        loss = weighted_cross_entropy(logits.float(), batch["mask"])
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
    from seg_ext.engine import Precision, Trainer, build_optimizer, lr_factor_fn
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
                tmp, epochs=epochs, best_metric="mIoU", precision=Precision(torch.device("cpu")),
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
    from seg_ext.data.coco import CocoInstanceDataset, masks_to_rles
    from seg_ext.evaluation.coco import coco_evaluate
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
                                    "segmentation": masks_to_rles(m[None])[0]})
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


# ---- 6. precision and memory format: images/s and numerical safety --------------------------------------

# name -> (autocast, channels_last)
SETTINGS = {"fp32": (False, False), "amp": (True, False), "channels_last": (False, True), "amp+channels_last": (True, True)}
# A setting is numerically safe when, from the same weights on the same batch, its training loss is within 1% of
# fp32's, its gradient points the same way (cosine >= 0.99) and its inference outputs are within 5% (relative L2).
SAFE = {"loss_rel_diff": 0.01, "grad_cosine": 0.99, "output_rel_err": 0.05}
# The engine's default for a model meets the target when it is safe and within this fraction of the fastest safe
# setting's training speed (settings closer than this swap places from run to run on a shared machine).
NOISE = 0.05


def _precision_cases(device: torch.device, size: int | None, batch: int | None) -> dict[str, dict[str, Any]]:
    """Each model with a real batch of its default training data: ``make() -> model`` (fp32, on ``device``),
    ``loss(model)`` and ``infer(model) -> tensor to compare, or None``, and the batch size.

    Semantic models see synthetic scenes at ``size`` px (default: the config's); instance models see the
    Penn-Fudan test images (synthetic pedestrians without them) at their defaults. ``batch`` overrides the
    configs' batch sizes."""
    from seg_ext.config import instance_defaults
    from seg_ext.losses import weighted_cross_entropy
    from seg_ext.models import build_model
    from seg_ext.tasks.instance import make_method

    opts = [f"data.image_size=[{size},{size}]"] if size else []
    cfg, datasets = _semantic_setup(None, opts)
    n = batch or int(cfg["data"]["batch_size"])
    data = torch.utils.data.default_collate([datasets["val"][i % len(datasets["val"])] for i in range(n)])
    x, mask = data["image"].to(device), data["mask"].to(device)
    classes = datasets["train"].num_classes

    def semantic(block: dict[str, Any]) -> dict[str, Any]:
        return {"make": lambda: build_model(block, num_classes=classes, image_size=tuple(x.shape[-2:])).to(device),
                "loss": lambda m: weighted_cross_entropy(m(x).float(), mask),
                "infer": lambda m: m(x).float(), "batch": n}

    cases = {
        "unet": semantic(cfg["model"]),
        "smp_unet": semantic({"name": "smp_unet"}),
        "baseconv": semantic({"name": "baseconv"}),
    }
    with tempfile.TemporaryDirectory() as tmp:  # datasets read their COCO file when built
        root, test_json = _pennfudan_test_json(tmp)
        for name in ("watershed", "maskrcnn"):
            icfg = instance_defaults(name)
            method = make_method(icfg, device)
            dataset = method.dataset(test_json, root, train=False)
            k = batch or int(icfg["data"]["batch_size"])
            images, targets = method.collate([dataset[i % len(dataset)] for i in range(k)])
            if name == "watershed":
                infer = lambda m, images=images: torch.cat([v.float().flatten() for v in m(images.to(device)).values()])
            else:
                # detections are not comparable one to one; inference is timed, not compared
                infer = lambda m, method=method, images=images: (method.predict(m, images), None)[1]
            cases["dual_unet" if name == "watershed" else "maskrcnn"] = {
                "make": lambda method=method: method.build_model(2).to(device),
                "loss": lambda m, method=method, batch=(images, targets): method.loss_step(m, batch)[0],
                "infer": infer, "batch": k}
    return cases


def _one_step(case: dict[str, Any], precision, state: dict[str, Any]) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """From the weights ``state``: one training step's loss and gradient, and one inference's outputs."""
    model = precision.prepare(case["make"]())
    model.load_state_dict(state)
    model.train()
    torch.manual_seed(0)  # the same sampled proposals and RoIs in every setting
    with precision.autocast():
        loss = case["loss"](model)
    loss.float().backward()
    grad = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
    model.eval()
    with torch.no_grad(), precision.autocast():
        out = case["infer"](model)
    return float(loss.detach()), grad, out


def _difference(step: tuple[float, torch.Tensor, torch.Tensor | None],
                reference: tuple[float, torch.Tensor, torch.Tensor | None]) -> dict[str, Any]:
    """How far a setting's :func:`_one_step` is from fp32's, and whether that is within ``SAFE``."""
    (loss, grad, out), (ref_loss, ref_grad, ref_out) = step, reference
    row = {
        "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0)),
        "output_rel_err": None if out is None else float((out - ref_out).norm() / ref_out.norm()),
    }
    row["safe"] = bool(
        math.isfinite(loss) and row["loss_rel_diff"] <= SAFE["loss_rel_diff"]
        and row["grad_cosine"] >= SAFE["grad_cosine"]
        and (row["output_rel_err"] is None or row["output_rel_err"] <= SAFE["output_rel_err"])
    )
    return row


def throughput(device: torch.device, amp_dtype: torch.dtype, steps: int, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Training and inference images/s of each model of ``cases`` (:func:`_precision_cases`) in fp32, autocast
    (``amp_dtype``), channels_last and both, on ``device``, with each setting's numerical difference from fp32
    (:func:`_difference`)."""
    from seg_ext.engine import Precision

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows: dict[str, Any] = {}
    for name, case in cases.items():
        torch.manual_seed(0)
        state = {k: v.clone() for k, v in case["make"]().state_dict().items()}
        reference = _one_step(case, Precision(device), state)
        for setting, (amp, channels_last) in SETTINGS.items():
            precision = Precision(device, amp_dtype if amp else None, channels_last)
            row = _difference(reference if setting == "fp32" else _one_step(case, precision, state), reference)
            model = precision.prepare(case["make"]())
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # small steps: the timing, not the learning
            scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)

            def train_step():
                model.train()
                with precision.autocast():
                    loss = case["loss"](model)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sync()

            def infer_step():
                model.eval()
                with torch.no_grad(), precision.autocast():
                    case["infer"](model)
                sync()

            train_s, _ = median_time(train_step, steps, warmup=2)
            infer_s, _ = median_time(infer_step, steps, warmup=2)
            rows[f"{name}/{setting}"] = {"train_images_per_s": case["batch"] / train_s,
                                         "infer_images_per_s": case["batch"] / infer_s, **row}
    return rows


def _setting_of(precision) -> str:
    flags = (precision.amp_dtype is not None, precision.channels_last)
    return next(name for name, value in SETTINGS.items() if value == flags)


def _precision_summary(rows: dict[str, Any], defaults: dict[str, str]) -> dict[str, Any]:
    """Per model: the fastest numerically safe setting and whether the engine's default for it (``defaults``) is
    safe and as fast (within ``NOISE``); per setting: the geometric mean over models of its training speed-up over fp32."""
    models = list(defaults)
    speed = {k: rows[k]["train_images_per_s"] / rows[f"{k.split('/')[0]}/fp32"]["train_images_per_s"] for k in rows}
    per_model = {}
    for m in models:
        best = max((s for s in SETTINGS if rows[f"{m}/{s}"]["safe"]), key=lambda s: speed[f"{m}/{s}"])
        ours = speed[f"{m}/{defaults[m]}"]
        per_model[m] = {"engine_default": defaults[m], "fastest_safe": best, "default_speedup": ours,
                        "met": rows[f"{m}/{defaults[m]}"]["safe"] and ours >= (1 - NOISE) * speed[f"{m}/{best}"]}
    settings = {s: float(np.exp(np.mean([np.log(speed[f"{m}/{s}"]) for m in models]))) for s in SETTINGS}
    default_speedup = float(np.exp(np.mean([np.log(v["default_speedup"]) for v in per_model.values()])))
    misses = [f"{m} (default {v['engine_default']}, fastest safe {v['fastest_safe']})" for m, v in per_model.items() if not v["met"]]
    unsafe = sorted({k for k in rows if not rows[k]["safe"]})
    return {"ours_s": 1 / default_speedup, "reference_s": 1.0, "ratio": default_speedup, "models": per_model,
            "settings_train_speedup": settings, "met": not misses,
            "note": f"engine defaults {default_speedup:.2f}x fp32 training (geometric mean of {len(models)} models); "
                    + (f"not the fastest safe setting for: {', '.join(misses)}; " if misses else "the fastest safe setting for every model; ")
                    + (f"unsafe: {', '.join(unsafe)}" if unsafe else "every setting safe")}


def _engine_defaults(device: torch.device, cases: dict[str, Any]) -> dict[str, str]:
    """The setting ``train.amp=auto train.channels_last=auto`` gives each model on ``device``."""
    from seg_ext.config import SEMANTIC_DEFAULTS
    from seg_ext.engine import resolve_precision

    return {name: _setting_of(resolve_precision(SEMANTIC_DEFAULTS["train"], device, case["make"]()))
            for name, case in cases.items()}


def _bench_throughput(device: torch.device, amp_dtype: torch.dtype, steps: int, size: int | None = None,
                      batch: int | None = None, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    cases = _precision_cases(device, size, batch)
    if only:
        cases = {k: v for k, v in cases.items() if k in only}
    rows = throughput(device, amp_dtype, steps, cases)
    return {**_precision_summary(rows, _engine_defaults(device, cases)), "rows": rows, "amp_dtype": str(amp_dtype),
            "target": "the engine's default (train.amp / train.channels_last auto) is each model's fastest numerically "
                      f"safe setting ({', '.join(f'{k} {v}' for k, v in SAFE.items())})"}


def bench_cpu_throughput(quick: bool, repeat: int) -> dict[str, Any]:
    return _bench_throughput(torch.device("cpu"), torch.bfloat16, 3 if quick else 5,
                             only=("unet", "smp_unet", "maskrcnn") if quick else None)


def bench_cuda_throughput(quick: bool, repeat: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine", "met": None, "note": "skipped: no CUDA device"}
    res = _bench_throughput(torch.device("cuda"), torch.float16, 5 if quick else 20, size=256, batch=16)
    return {**res, "device": torch.cuda.get_device_name()}


BENCHMARKS: dict[str, Callable[[bool, int], dict[str, Any]]] = {
    "semseg_eval": bench_semseg_eval,
    "semantic_loader": bench_semantic_loader,
    "train_overhead": bench_train_overhead,
    "watershed_postprocess": bench_watershed_postprocess,
    "coco_eval": bench_coco_eval,
    "cpu_throughput": bench_cpu_throughput,
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
