"""Where a run computes, on any machine: the one device boundary of the evaluation loop, the loader and compile
settings, the CUDA random state in checkpoints, torchrun's one GPU per process, and each bad setting in one
sentence. (What needs a GPU is in tests/test_gpu.py, the GPU tier.)"""

from __future__ import annotations

import pytest
import torch

from seg_ext import distributed
from seg_ext.config import validate_config
from seg_ext.engine import check_compiler, close_loader, resolve_workers, usable_cpus
from seg_ext.engine.checkpoint import random_state, set_random_state
from seg_ext.errors import ConfigError, SegExtError
from seg_ext.evaluation import Evaluator, run_inference
from seg_ext.methods import method_config


class DeviceLog(Evaluator):
    """Records the device of every tensor it is handed."""

    def reset(self) -> None:
        self.devices: set[str] = set()

    def process(self, outputs, targets) -> None:
        def walk(value):
            if isinstance(value, torch.Tensor):
                self.devices.add(value.device.type)
            elif isinstance(value, dict):
                [walk(v) for v in value.values()]
            elif isinstance(value, (list, tuple)):
                [walk(v) for v in value]
        walk((outputs, targets))

    def evaluate(self) -> dict[str, float]:
        return {}


def test_evaluators_get_every_tensor_on_the_runs_device():
    """Outputs and targets, nested in dicts and lists, arrive on the one stated device ('meta' stands in for a
    second device on a machine that has only the CPU: a missed tensor would stay on the CPU)."""
    batches = [{"image": torch.zeros(2, 3), "mask": [torch.zeros(4), torch.ones(4)]}]
    log = DeviceLog()

    def forward(model, batch):
        return {"logits": model(batch["image"]), "extra": [batch["image"][0]]}, {"mask": batch["mask"], "name": ["a", "b"]}

    run_inference(torch.nn.Identity(), batches, log, forward, device=torch.device("meta"))
    assert log.devices == {"meta"}
    run_inference(torch.nn.Identity(), batches, log, forward)  # no device: as the forward gives them
    assert log.devices == {"cpu"}


@pytest.mark.parametrize("key, value, words", [
    ("train.compile", "fast", "config key 'train.compile' is 'fast'; expected one of: off, default, reduce-overhead"),
    ("train.compile", 3, "config key 'train.compile' in --opts must be a word or true/false"),
    ("data.num_workers", -1, "config key 'data.num_workers' is -1; expected auto or a number"),
    ("data.num_workers", "many", "config key 'data.num_workers' is 'many'; expected auto or a number"),
    ("train.deterministic", "maybe", "config key 'train.deterministic' in --opts must be a bool (like the default False), got 'maybe'"),
])
def test_a_bad_device_setting_is_one_sentence(key, value, words):
    with pytest.raises(ConfigError) as info:
        method_config("semantic", overrides=[f"{key}={value}"])
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_new_settings_load_and_default_to_todays_behaviour():
    cfg = method_config("semantic", overrides=["train.compile=reduce-overhead", "data.num_workers=4",
                                               "train.deterministic=true"])
    assert validate_config(cfg) is cfg
    defaults = method_config("semantic")
    assert (defaults["train"]["compile"], defaults["train"]["deterministic"], defaults["data"]["num_workers"]) == \
        ("off", False, "auto")
    from seg_ext.config import compile_mode

    # YAML and --opts read off as false: it is still off (and true is default)
    off = method_config("semantic", overrides=["train.compile=off"])["train"]["compile"]
    assert off is False and compile_mode(off) == "off" and compile_mode(True) == "default"


def test_auto_workers_follow_the_usable_cpus_and_the_processes_sharing_them(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
    assert usable_cpus() == 2 and resolve_workers("auto") == 2  # a 2-core machine keeps the old default
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert resolve_workers("auto") == 8 and resolve_workers("auto", processes=4) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(3)))
    assert resolve_workers("auto", processes=4) == 1 and resolve_workers(0) == 0 and resolve_workers(5) == 5


def test_compile_where_it_cannot_run_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(SegExtError) as info:
        check_compiler("default", torch.device("cpu"))
    assert "torch.compile cannot run here: no compiler" in str(info.value) and "train.compile=off" in str(info.value)
    check_compiler("off", torch.device("cpu"))  # off never asks
    monkeypatch.undo()
    with pytest.raises(SegExtError, match="CUDA graphs"):
        check_compiler("reduce-overhead", torch.device("cpu"))


def test_more_processes_than_gpus_is_refused_before_any_device_is_touched(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SegExtError) as info:
        distributed.check_gpus_per_process()
    assert str(info.value).startswith("torchrun started 2 processes on this machine but 1 CUDA device(s) are visible")
    assert "--nproc_per_node=1" in str(info.value) and "train.device=cpu" in str(info.value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    distributed.check_gpus_per_process()


def test_checkpoints_carry_the_cuda_random_state_where_cuda_runs():
    state = random_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        assert isinstance(state["cuda"], torch.Tensor)
    else:
        assert state["cuda"] is None  # a CPU run does not start CUDA to save it
    torch.manual_seed(3)
    saved = random_state()
    first = torch.rand(3)
    set_random_state(saved)
    assert torch.equal(torch.rand(3), first)


def test_closing_a_loader_that_is_a_list_does_nothing():
    close_loader([{"image": torch.zeros(1)}])  # the train_overhead benchmark's batches


@pytest.mark.slow
def test_the_compiled_step_trains_like_eager_and_resumes_without_compiling(scenes_root, tmp_path):
    """train.compile=default on the CPU (Inductor's C++): one epoch's training loss within 1e-3 of eager's, plain
    keys in the checkpoint, and the run resumed with compile off (the compile setting may change at a resume)."""
    import json

    from conftest import run_tool_process

    opts = ["data.image_size=[64,64]", "data.batch_size=4", "model.base_width=4", "model.depth=2",
            "report.num_overlays=0", "train.epochs=1", "train.device=cpu", "data.num_workers=0"]
    runs = {}
    for mode in ("off", "default"):
        out = tmp_path / mode
        proc = run_tool_process("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *opts,
                                                   f"train.compile={mode}"], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((out / "metrics.json").read_text())["compile"] == mode
    eager, compiled = runs["off"][0]["train/loss"], runs["default"][0]["train/loss"]
    assert abs(compiled - eager) <= 1e-3 * abs(eager), (compiled, eager)
    ckpt = torch.load(tmp_path / "default" / "last.pt", map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["model"])
    again = run_tool_process("train_semantic", ["--output-dir", tmp_path / "default", "--resume", "--opts",
                                                "train.epochs=2", "train.compile=off"])
    assert again.returncode == 0, again.stderr[-3000:]
