"""What every benchmark shares: timing, peak memory in a fresh process, and the data and runs they measure on.

Benchmarks use only the library's public API (``seg_ext.tasks``, ``seg_ext.engine``, ``seg_ext.evaluation``,
``seg_ext.methods``, ``seg_ext.models``, ``seg_ext.data``): the step they time is the one training runs.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
PENNFUDAN = ROOT.parent / "shared" / "data" / "PennFudanPed"
# ``benchmarks/run.py --smoke``: the quick tier at the smallest sizes that still run every step of each benchmark
# (the full test tier runs it, so that none rots unseen); its figures are not measurements. An environment
# variable, so that the benchmarks' worker processes see it too.
SMOKE = os.environ.get("SEG_EXT_BENCH_SMOKE") == "1"


def sized(full: Any, quick: Any, smoke: Any, is_quick: bool) -> Any:
    """A benchmark's size: ``smoke`` under ``--smoke``, else ``quick`` or ``full``."""
    return smoke if SMOKE else (quick if is_quick else full)


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``repeat`` calls of ``fn`` after ``warmup`` calls; also every time."""
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


def function(spec: str) -> Any:
    """The function named ``module:function`` or ``module.function`` (a module of this folder)."""
    import importlib

    module, _, name = spec.replace(".", ":", 1).partition(":")
    return getattr(importlib.import_module(module), name)


_SPAWNED: set[str] = set()


def run_worker(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run the worker ``name`` (``module.function`` of this folder) in a fresh interpreter, for clean peak-memory
    figures; returns what it printed as JSON. In a smoke run (figures that are not measurements) each worker runs
    in a fresh interpreter once, which checks that path, and then in this one (a process start costs seconds)."""
    if SMOKE and name in _SPAWNED:
        return json.loads(json.dumps(function(name)(**kwargs)))  # what the fresh interpreter would print
    _SPAWNED.add(name)
    cmd = [sys.executable, str(Path(__file__).with_name("run.py")), "--worker", name, "--worker-args", json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def semantic_config(data_root: str | None = None, opts: list[str] | None = None) -> dict[str, Any]:
    """The default semantic config with ``opts``, on ``data_root`` (None: the synthetic scenes)."""
    from seg_ext.methods import merge_checked, method_config

    cfg = method_config("semantic", overrides=opts or [])
    if data_root:
        cfg = merge_checked(cfg, {"data": {"root": data_root}}, "benchmark")
    return cfg


def semantic_run(cfg: dict[str, Any], output_dir: str | Path, precision: Any = None):
    """A semantic run set up as training sets it up (the one build path): ``(run, method, model, trainer)``;
    ``trainer.run_step(batch)`` is the training step. ``precision`` (a ``Precision``) replaces the run's own when
    given."""
    from seg_ext.tasks.run import build_run

    run = build_run(cfg, Path(output_dir), files=False)
    model = run.model
    if precision is not None:
        run.precision = precision
        model = run.model = precision.prepare(model)
    trainer = run.method.trainer(run, model, run.loss, meta={})
    return run, run.method, model, trainer


def pennfudan_test_split(tmp: str, method: Any = None, cfg: dict[str, Any] | None = None):
    """Penn-Fudan's test split (the synthetic pedestrians without it) converted to COCO in ``tmp``, as the
    ``method``'s dataset when given (else the COCO split itself); the image root comes back too."""
    from seg_ext.data.pennfudan import convert_pennfudan
    from seg_ext.data.synthetic import ensure_synthetic_pedestrians
    from seg_ext.methods import build_method, method_config

    root = PENNFUDAN if PENNFUDAN.is_dir() else ensure_synthetic_pedestrians()
    reader = method or build_method(cfg or method_config("maskrcnn"))
    split = reader.coco_split(convert_pennfudan(root, tmp)["test"], root, train=False)
    return root, (split if method is None else method.dataset(split, train=False))


def temporary_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory()


def prediction_checkpoint(kind: str, folder: str | Path) -> Path:
    """A checkpoint to predict with: ``$SEG_EXT_BENCH_<KIND>_CHECKPOINT`` when set (a trained run's best.pt),
    else the Penn-Fudan config's model with its initial weights, saved in ``folder`` (``kind``: ``unet`` or
    ``watershed``)."""
    env = os.environ.get(f"SEG_EXT_BENCH_{kind.upper()}_CHECKPOINT")
    if env:
        return Path(env)
    import torch

    from seg_ext.engine import CHECKPOINT_VERSION
    from seg_ext.methods import build_method, method_config

    torch.manual_seed(0)
    config, names = {"unet": ("configs/semantic/pennfudan_unet.yaml", ["background", "person"]),
                     "watershed": ("configs/instance/pennfudan_watershed_unet.yaml", ["person"])}[kind]
    from seg_ext.methods import resolve_method

    # the prediction benchmarks time batches of one size: the images squashed to the network's size (the config
    # trains at a scale since issue 22; --opts data.resize=squash is its earlier form)
    cfg = method_config(resolve_method(None, ROOT / config), ROOT / config, ["data.resize=squash"])
    method = build_method(cfg, torch.device("cpu"))
    model = method.build_model(method.head_classes(names))
    path = Path(folder) / f"{kind}.pt"
    torch.save({"version": CHECKPOINT_VERSION, "model": model.state_dict(), "config": cfg, "class_names": names,
                "task": method.task}, path)
    return path


def pennfudan_test_images() -> list[Path]:
    """The 50 Penn-Fudan test images of the instance split (seed 0); the synthetic pedestrians' test split without
    the dataset."""
    from seg_ext.data.pennfudan import convert_pennfudan
    from seg_ext.data.synthetic import ensure_synthetic_pedestrians

    root = PENNFUDAN if PENNFUDAN.is_dir() else ensure_synthetic_pedestrians()
    with tempfile.TemporaryDirectory() as tmp:
        test = json.loads(Path(convert_pennfudan(root, tmp)["test"]).read_text())
    return [root / image["file_name"] for image in test["images"]]
