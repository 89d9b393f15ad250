"""A run killed (SIGKILL) or stopped (SIGTERM) and resumed equals an uninterrupted one, bit for bit: real tool
processes with 2 loader workers, for the semantic task and the watershed method."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow  # real tool processes killed and signalled, then resumed

# the CPU's claim, also where CUDA is visible (on a GPU, exact resume needs train.deterministic: tests/test_gpu.py)
SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=1", "data.num_workers=2", "model.base_width=4",
            "model.depth=2", "report.num_overlays=0", "train.epochs=4", "train.device=cpu"]
WATERSHED = ["data.val=2", "data.test=3", "data.batch_size=2", "data.num_workers=2", "watershed.input_size=[64,64]",
             "model.base_width=4", "model.depth=2", "report.num_overlays=0", "train.epochs=4", "train.device=cpu"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _command(tool: str, args: list) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *[str(a) for a in args]]


def _run(tool: str, args: list) -> subprocess.CompletedProcess:
    return subprocess.run(_command(tool, args), capture_output=True, text=True, env=ENV, timeout=300)


def _state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["state"]
    except Exception:
        return {}


def _interrupt(tool: str, args: list, out: Path, ready, signum: int, group: bool = False) -> subprocess.CompletedProcess:
    """Start the tool, run it in short slices while it is stopped in between (SIGSTOP / SIGCONT), and as soon as
    ``ready(state of last.pt)`` holds while it is stopped, send ``signum`` (``group``: to the tool and its loader
    workers, as a terminal's Ctrl-C or a scheduler does); wait for the end. Looking only while the run is stopped,
    no moment is missed however slowly this process reads the file (a busy disk stalled reads for 10 s)."""
    proc = subprocess.Popen(_command(tool, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            if ready(_state(out / "last.pt")):
                if group:
                    os.killpg(proc.pid, signum)
                else:
                    proc.send_signal(signum)
                proc.send_signal(signal.SIGCONT)
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        assert proc.returncode is None or proc.returncode == -signum, "the run ended before it could be interrupted"
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _results(out: Path, keys: tuple[str, ...]) -> tuple[list, dict]:
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [{k: v for k, v in h.items() if k.startswith(("train/", "val/")) and not k.endswith("seconds")
                  and not k.startswith("val/time")} | {"epoch": h["epoch"], "lr": h["lr"]} for h in history]
    final = json.loads((out / "metrics.json").read_text())
    return per_epoch, {split: {k: final[split][k] for k in keys} for split in ("val", "test")}


@pytest.fixture(scope="module")
def straight(scenes_root, pennfudan_root, tmp_path_factory):
    """The uninterrupted runs, once."""
    base = tmp_path_factory.mktemp("straight")
    sem = _run("train_semantic", ["--data-root", scenes_root, "--output-dir", base / "semantic", "--opts", *SEMANTIC])
    assert sem.returncode == 0, sem.stderr
    ws = _run("train_instance", ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir",
                                 base / "watershed", "--opts", *WATERSHED])
    assert ws.returncode == 0, ws.stderr
    return {"semantic": _results(base / "semantic", ("mIoU", "mAP", "loss")),
            "watershed": _results(base / "watershed", ("segm/AP", "bbox/AP"))}


def test_semantic_killed_at_an_epoch_boundary_then_resumed_is_identical(straight, scenes_root, tmp_path):
    out = tmp_path / "run"
    killed = _interrupt("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *SEMANTIC], out,
                        lambda state: state.get("epoch", 0) >= 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    # resumed without workers: the samples do not depend on them
    resumed = _run("train_semantic", ["--output-dir", out, "--resume", "--opts", "data.num_workers=0"])
    assert resumed.returncode == 0, resumed.stderr
    assert _results(out, ("mIoU", "mAP", "loss")) == straight["semantic"]


def test_semantic_stopped_by_sigterm_then_resumed_is_identical(straight, scenes_root, tmp_path):
    """SIGTERM to the whole process group, as a scheduler sends it: the loader workers die with it."""
    out = tmp_path / "run"
    stopped = _interrupt("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *SEMANTIC], out,
                         lambda state: state.get("epoch", 0) >= 1, signal.SIGTERM, group=True)
    assert stopped.returncode == 143, stopped.stderr
    line = [x for x in stopped.stderr.splitlines() if "stopped by SIGTERM" in x]
    assert len(line) == 1 and "--resume" in line[0] and "Traceback" not in stopped.stderr
    state = _state(out / "last.pt")
    # inside an epoch (or, when the signal came during validation, right after that epoch's checkpoint)
    assert state["position"] == 0 or state["partial"]["count"] == state["position"]
    resumed = _run("train_semantic", ["--output-dir", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _results(out, ("mIoU", "mAP", "loss")) == straight["semantic"]


def test_semantic_mid_epoch_checkpoints_resume_from_the_iteration(straight, scenes_root, tmp_path):
    """train.checkpoint_every: killed after a checkpoint written inside an epoch, resumed from that batch."""
    out = tmp_path / "run"
    args = ["--data-root", scenes_root, "--output-dir", out, "--opts", *SEMANTIC, "train.checkpoint_every=3"]
    killed = _interrupt("train_semantic", args, out, lambda state: state.get("epoch", 0) >= 1 and state.get("position", 0) > 0,
                        signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert _state(out / "last.pt")["position"] > 0
    resumed = _run("train_semantic", ["--output-dir", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _results(out, ("mIoU", "mAP", "loss")) == straight["semantic"]


def test_watershed_killed_then_resumed_is_identical(straight, pennfudan_root, tmp_path):
    out = tmp_path / "run"
    args = ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", out, "--opts", *WATERSHED]
    killed = _interrupt("train_instance", args, out, lambda state: state.get("epoch", 0) >= 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    resumed = _run("train_instance", ["--output-dir", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _results(out, ("segm/AP", "bbox/AP")) == straight["watershed"]


def test_watershed_stopped_by_ctrl_c_then_resumed_is_identical(straight, pennfudan_root, tmp_path):
    out = tmp_path / "run"
    args = ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", out, "--opts", *WATERSHED]
    stopped = _interrupt("train_instance", args, out, lambda state: state.get("epoch", 0) >= 1, signal.SIGINT, group=True)
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped by SIGINT" in stopped.stderr and "Traceback" not in stopped.stderr
    resumed = _run("train_instance", ["--output-dir", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _results(out, ("segm/AP", "bbox/AP")) == straight["watershed"]
