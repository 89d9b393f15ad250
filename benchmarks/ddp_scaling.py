"""ddp_scaling: training images/s of the UNet through the engine's step (``Trainer.run_step``, in
DistributedDataParallel with several processes), one process against N processes started by torchrun.

On CUDA, N is every GPU, at 16 images per GPU (target: at least 0.9 x N). On the CPU, N is 2 and the cores are
split between the processes (one thread each, torchrun's default; the one process gets them all): reported as it
is, no target. Batches are made in memory, so the loader does not enter the figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import sized

HERE = Path(__file__).resolve()


def _worker(batch: int, steps: int, repeat: int, size: int) -> None:
    """One process of the measurement (run under torchrun): ``repeat`` timings of ``steps`` steps each; process 0
    prints the median images/s over all processes as JSON."""
    sys.path.insert(0, str(HERE.parents[1]))
    import torch

    from seg_ext import distributed
    from seg_ext.engine import Trainer, place_model, select_device
    from seg_ext.models import build_model
    from seg_ext.losses import weighted_cross_entropy

    device = select_device("auto")
    distributed.init(device, 300)
    device = distributed.device_for(device)
    torch.manual_seed(0)
    model, precision = place_model(build_model({"name": "unet", "base_width": 16, "depth": 3, "batch_norm": True},
                                               num_classes=2, image_size=(size, size)), device)
    if device.type == "cuda" and distributed.is_distributed():
        model = distributed.convert_sync_batch_norm(model)
    g = torch.Generator().manual_seed(distributed.rank())
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    masks = torch.randint(0, 2, (batch, size, size), generator=g).to(device)
    if precision.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, optimizer, scheduler, [], lambda m, b: (weighted_cross_entropy(m(b[0]).float(), b[1]), {}),
                          None, tmp, epochs=1, best_metric="loss", precision=precision, hooks=[])
        trainer.model.train()

        def window() -> float:
            distributed.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                trainer.run_step((images, masks))  # the step syncs on its loss value
            distributed.barrier()
            return time.perf_counter() - start

        window()  # warm-up
        times = [window() for _ in range(repeat)]
    if distributed.is_main():
        seconds = statistics.median(times)
        print(json.dumps({"images_per_s": steps * batch * distributed.world_size() / seconds,
                          "world_size": distributed.world_size(), "device": str(device), "precision": precision.describe(),
                          "threads": torch.get_num_threads()}))
    distributed.shutdown()


def _launch(nproc: int, batch: int, steps: int, repeat: int, size: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(HERE),
               "--worker", str(batch), str(steps), str(repeat), str(size)]
    env = dict(os.environ)
    if nproc == 1:
        env.pop("OMP_NUM_THREADS", None)  # the one process uses every core
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"ddp_scaling with {nproc} process(es) failed:\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    n = torch.cuda.device_count() if cuda else 2
    batch = 16 if cuda else sized(8, 4, 2, quick)
    steps = sized(30, 10, 2, quick) if cuda else sized(8, 4, 2, quick)
    size = 128
    one = _launch(1, batch, steps, repeat, size)
    many = _launch(n, batch, steps, repeat, size)
    speedup = many["images_per_s"] / one["images_per_s"]
    met = bool(speedup >= 0.9 * n) if cuda and n > 1 else None
    where = f"{n} GPUs" if cuda else f"{n} CPU processes of {many['threads']} thread(s) vs 1 of {one['threads']}"
    return {
        "ours_s": 1 / many["images_per_s"], "reference_s": 1 / one["images_per_s"], "ratio": speedup,
        "one_images_per_s": one["images_per_s"], "many_images_per_s": many["images_per_s"], "processes": n,
        "batch_per_process": batch, "precision": one["precision"],
        "target": "speedup >= 0.9 x N on N GPUs (UNet, 16 images per GPU); none on the CPU",
        "met": met,
        "note": f"{where}: {many['images_per_s']:.1f} vs {one['images_per_s']:.1f} images/s, speedup {speedup:.2f}x "
                f"(seconds are per image)" + ("" if cuda else "; on a GPU machine: python benchmarks/run.py --only ddp_scaling"),
    }


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(*(int(v) for v in sys.argv[2:6]))
