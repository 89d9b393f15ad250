"""train_overhead: the engine's epochs (the library's trainer, hooks and step) vs a bare PyTorch loop over the same
batches, both in fp32."""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

import torch

from harness import median_time, semantic_config, semantic_run, sized


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    from seg_ext.engine import Precision, Trainer
    from seg_ext.losses import weighted_cross_entropy

    n_batches = sized(12, 6, 2, quick)
    epochs = sized(3, 2, 1, quick)
    cfg = semantic_config(opts=[f"train.epochs={epochs}"])
    fp32 = Precision(torch.device("cpu"))

    with tempfile.TemporaryDirectory() as tmp:
        run, method, _, _ = semantic_run(cfg, tmp, precision=fp32)
    train = run.datasets["train"]
    bs = cfg["data"]["batch_size"]
    batches = [torch.utils.data.default_collate([train[(i * bs + j) % len(train)] for j in range(bs)])
               for i in range(n_batches)]

    def fresh():
        torch.manual_seed(0)
        model = method.build_model(run.data.num_classes)
        opt = run.optimizer(model)
        return model, opt, run.scheduler(opt, n_batches)

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
                model, opt, sched, batches, run.loss,
                lambda m: {"loss": 0.0, "mIoU": 0.0},  # validation inference is not engine overhead
                tmp, epochs=epochs, best_metric="mIoU", precision=fp32,
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
