"""The GPU tier (``make test-gpu``): what the package promises on CUDA, checked where a GPU is visible; every test
here carries the ``cuda`` marker and is skipped, saying why, elsewhere (CI's CPU machines).

- a training step in the CUDA default (each model's measured autocast and memory format) tracks fp32;
- prediction on CUDA agrees with the CPU's on at least 99.9% of the pixels;
- a CUDA-trained checkpoint predicts, evaluates and exports in a process that sees no GPU;
- a run killed with SIGKILL on CUDA and resumed, with ``train.deterministic: true``, equals the uninterrupted run;
- the compiled training step trains, validates, resumes without compiling, and saves the plain model's keys;
- torchrun with more processes than GPUs is one sentence.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_tool_process
from test_resume_exact import _interrupt, _results, _run, _state

pytestmark = pytest.mark.cuda

TINY = ["data.image_size=[64,64]", "data.batch_size=4", "model.base_width=8", "model.depth=2", "report.num_overlays=0",
        "train.epochs=3", "train.device=cuda"]


@pytest.fixture(scope="module")
def cuda_run(scenes_root, tmp_path_factory):
    """A short semantic run trained on CUDA in the default precision."""
    out = tmp_path_factory.mktemp("cuda") / "run"
    proc = run_tool_process("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _model(name: str) -> torch.nn.Module:
    from seg_ext.models import build_model
    from seg_ext.models.dual_unet import DualHeadUNet

    if name == "dual_unet":
        return DualHeadUNet(base_width=8, depth=2)
    return build_model({"name": name, **({"encoder_weights": None} if name == "smp_unet" else {})}, num_classes=3)


@pytest.mark.parametrize("name", ["unet", "baseconv", "smp_unet", "dual_unet"])
def test_a_training_step_in_the_cuda_default_tracks_fp32(name):
    from seg_ext.engine import place_model

    torch.manual_seed(0)
    plain = _model(name)
    x = torch.randn(4, 3, 64, 64, device="cuda")

    def gradient(amp, layout):
        model, precision = place_model(copy.deepcopy(plain), torch.device("cuda"), amp, layout)
        with precision.autocast():
            out = model(x.contiguous(memory_format=torch.channels_last) if precision.channels_last else x)
        outs = out.values() if isinstance(out, dict) else [out]
        sum(o.float().square().mean() for o in outs).backward()
        return torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]), precision

    reference, _ = gradient("off", "false")
    default, precision = gradient("auto", "auto")
    cosine = torch.nn.functional.cosine_similarity(reference, default, dim=0).item()
    assert cosine > 0.99, f"{name} in {precision.describe()}: gradient cosine {cosine:.4f} to fp32's"


def test_prediction_on_cuda_agrees_with_the_cpu(cuda_run, scenes_root):
    from seg_ext.data.files import read_image
    from seg_ext.inference import Predictor

    on_gpu = Predictor.from_checkpoint(cuda_run / "best.pt", device="cuda")
    on_cpu = Predictor.from_checkpoint(cuda_run / "best.pt", device="cpu")
    same = total = 0
    for path in sorted((scenes_root / "images").glob("*.png"))[:8]:
        image = read_image(path)
        a, b = on_gpu(image)["labels"], on_cpu(image)["labels"]
        same, total = same + int((a == b).sum()), total + a.size
    assert same / total >= 0.999, f"CUDA and CPU labels agree on {100 * same / total:.3f}% of the pixels"


def test_a_cuda_checkpoint_predicts_evaluates_and_exports_without_a_gpu(cuda_run, scenes_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}

    def tool(name, *args):
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *[str(a) for a in args]],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    tool("predict", "--checkpoint", cuda_run / "best.pt", "--input", scenes_root / "images", "--output-dir",
         tmp_path / "pred")
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == len(list((scenes_root / "images").glob("*.png")))
    tool("train_semantic", "--eval-only", "--checkpoint", cuda_run / "best.pt", "--output-dir", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["device"] == "cpu"
    tool("export", "--checkpoint", cuda_run / "best.pt", "--output", tmp_path / "m.onnx", "--dynamic")
    assert (tmp_path / "m.onnx").stat().st_size > 0
    tool("export", "--checkpoint", cuda_run / "best.pt", "--format", "folder", "--output", tmp_path / "model")
    tool("predict", "--model", tmp_path / "model", "--input", scenes_root / "images", "--output-dir", tmp_path / "pred_m")
    for mask in sorted((tmp_path / "pred" / "masks").glob("*.png")):  # the folder predicts as the checkpoint did
        assert mask.read_bytes() == (tmp_path / "pred_m" / "masks" / mask.name).read_bytes(), mask.name


def test_killed_on_cuda_and_resumed_deterministic_equals_the_uninterrupted_run(scenes_root, tmp_path):
    args = ["--data-root", scenes_root, "--opts", *TINY, "train.epochs=4", "data.batch_size=1", "data.num_workers=2",
            "train.deterministic=true", "train.checkpoint_every=3"]
    straight = _run("train_semantic", [*args[:2], "--output-dir", tmp_path / "straight", *args[2:]])
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    killed = _interrupt("train_semantic", [*args[:2], "--output-dir", out, *args[2:]], out,
                        lambda state: state.get("epoch", 0) >= 1 and state.get("position", 0) > 0, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL and _state(out / "last.pt")["position"] > 0
    resumed = _run("train_semantic", ["--output-dir", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keys = ("mIoU", "mAP", "loss")
    assert _results(out, keys) == _results(tmp_path / "straight", keys)
    a = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_the_compiled_step_trains_resumes_eagerly_and_saves_plain_keys(mode, scenes_root, tmp_path):
    out = tmp_path / "run"
    proc = run_tool_process("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY,
                                               "train.epochs=2", f"train.compile={mode}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["model"])
    assert json.loads((out / "metrics.json").read_text())["compile"] == mode
    again = run_tool_process("train_semantic", ["--output-dir", out, "--resume", "--opts", "train.epochs=3",
                                                "train.compile=off"])
    assert again.returncode == 0, again.stderr[-3000:]


def test_class_weights_with_image_size_evaluation_train_on_cuda(scenes_root, tmp_path):
    """The H200's package bug: evaluation at each image's size (data.resize=scale) gave CPU probabilities to a loss
    holding CUDA class weights, at every validation."""
    out = tmp_path / "run"
    proc = run_tool_process("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY,
                                               "train.epochs=1", "data.resize=scale", "data.scale=0.5",
                                               "data.crop_size=[32,32]", "loss.class_weights=inverse"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["val"]["loss"] > 0


def test_more_processes_than_gpus_is_one_sentence(scenes_root, tmp_path):
    n = torch.cuda.device_count() + 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           str(ROOT / "tools" / "train_semantic.py"), "--data-root", str(scenes_root), "--output-dir",
                           str(tmp_path / "run"), "--opts", *TINY[:-1]], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode != 0
    assert f"torchrun started {n} processes on this machine but {n - 1} CUDA device(s) are visible" in proc.stderr
    assert "]: Traceback" not in proc.stderr


def test_auto_precision_on_cuda_is_each_models_measured_fastest():
    from seg_ext.engine import resolve_precision

    cuda = torch.device("cuda")
    expected = {"unet": (torch.float16, True), "baseconv": (torch.float16, True), "dual_unet": (None, True)}
    for name, (dtype, layout) in expected.items():
        p = resolve_precision("auto", "auto", cuda, _model(name))
        assert (p.amp_dtype, p.channels_last) == (dtype, layout), name
