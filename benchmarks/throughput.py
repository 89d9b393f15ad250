"""cpu_throughput / cuda_throughput: training and inference images/s of each model in fp32, autocast,
channels_last and both, with each setting's numerical difference from fp32; is the engine's default (train.amp
and train.channels_last auto) each model's fastest numerically safe setting?"""

from __future__ import annotations

import math
import tempfile
from typing import Any

import numpy as np
import torch

from harness import median_time, pennfudan_test_split, semantic_config, sized


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
    from seg_ext.losses import weighted_cross_entropy
    from seg_ext.models import build_from_block, build_model
    from seg_ext.methods import build_method, method_config

    cfg = semantic_config(opts=[f"data.image_size=[{size},{size}]"] if size else [])
    semantic_method = build_method(cfg)
    datasets, _ = semantic_method._datasets({"val": semantic_method.transforms(train=False)})
    n = batch or cfg["data"]["batch_size"]
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
    for name in ("watershed", "maskrcnn"):
        icfg = method_config(name)
        method = build_method(icfg, device)
        with tempfile.TemporaryDirectory() as tmp:  # datasets read their COCO file when built
            _, dataset = pennfudan_test_split(tmp, method, icfg)
        k = batch or icfg["data"]["batch_size"]
        images, targets = method.collate([dataset[i % len(dataset)] for i in range(k)])
        if name == "watershed":
            infer = lambda m, images=images: torch.cat([v.float().flatten() for v in m(images.to(device)).values()])
        else:
            # detections are not comparable one to one; inference is timed, not compared
            infer = lambda m, method=method, images=images: (method.forward(m, images), None)[1]
        cases["dual_unet" if name == "watershed" else "maskrcnn"] = {
            "make": lambda method=method, block=icfg["model"]: build_from_block(
                method.models, block, method.model_arguments(2)).to(device),
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
    from seg_ext.engine import Precision, Trainer

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
            # the library's own training step (autocast, loss, scaled backward, optimiser and schedule)
            trainer = Trainer(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0), [],
                              lambda m, _batch, case=case: (case["loss"](m), {}), None, tempfile.gettempdir(),
                              epochs=1, best_metric="loss", precision=precision, hooks=[])

            def train_step():
                model.train()
                trainer.run_step(None)
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
    from seg_ext.engine import resolve_precision
    from seg_ext.methods import method_config

    train = method_config("semantic")["train"]
    return {name: _setting_of(resolve_precision(train["amp"], train["channels_last"], device, case["make"]()))
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


def bench_cpu(quick: bool, repeat: int) -> dict[str, Any]:
    return _bench_throughput(torch.device("cpu"), torch.bfloat16, sized(5, 3, 1, quick), size=sized(None, None, 32, quick),
                             batch=sized(None, None, 2, quick), only=sized(None, ("unet", "smp_unet", "maskrcnn"), ("unet",), quick))


def bench_cuda(quick: bool, repeat: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine", "met": None, "note": "skipped: no CUDA device"}
    res = _bench_throughput(torch.device("cuda"), torch.float16, sized(20, 5, 2, quick), size=256, batch=16)
    return {**res, "device": torch.cuda.get_device_name()}
