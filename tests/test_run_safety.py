"""Never lose a run: the previous last.pt kept and used when the newest is damaged, a full disk reported in one
sentence with the earlier checkpoint intact, and the output folder guarded (a file, a second run at once, a
lock left by a killed run)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, alive, call_tool, processes, run_tool_process

pytestmark = pytest.mark.slow  # real processes, signals, locks and a full disk

FAST = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "model.base_width=4", "model.depth=2",
        "report.num_overlays=0"]


def _epoch(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"]


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(scenes_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *FAST, "train.epochs=2"]) == 0
    assert _epoch(out / "last.pt") == 2 and _epoch(out / "last.prev.pt") == 1
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])  # truncated, as a crash of the disk or a copy would leave it
    capsys.readouterr()
    assert call_tool("train_semantic", ["--output-dir", out, "--resume", "--opts", "train.epochs=3"]) == 0
    err = capsys.readouterr().err
    assert "last.pt" in err and "continuing from" in err and "last.prev.pt (epoch 1)" in err
    assert err.count("continuing from") == 1  # one warning
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert _epoch(out / "last.pt") == 3 and _epoch(out / "last.prev.pt") == 2
    assert (out / "last.pt.damaged").is_file()


def test_a_full_disk_is_one_sentence_and_the_earlier_checkpoint_survives(scenes_root, tmp_path, capsys, monkeypatch):
    import seg_ext.engine.checkpoint as checkpoint

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("state", {}).get("epoch") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    out = tmp_path / "run"
    capsys.readouterr()
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *FAST, "train.epochs=3"]) == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text
    assert len(err) == 1 and err[0].startswith("error: cannot write checkpoint") and "disk is full" in err[0], err
    assert "earlier last.pt is intact" in err[0]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert _epoch(out / "last.pt") == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temporary files
    # and the run continues from it once there is space
    assert call_tool("train_semantic", ["--output-dir", out, "--resume"]) == 0
    assert _epoch(out / "last.pt") == 3


def test_output_dir_that_is_a_file_is_one_sentence(scenes_root, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    proc = run_tool_process("train_semantic", ["--data-root", scenes_root, "--output-dir", target, "--opts", *FAST])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --output-dir {target} is a file; expected a folder (new, or the run's own)"


def test_two_runs_in_one_folder_and_a_lock_left_by_a_killed_run(scenes_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "train_semantic.py"), "--data-root", str(scenes_root), "--output-dir",
         str(out), "--opts", *FAST, "data.num_workers=2", "train.epochs=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not ((out / "last.pt").is_file() and (out / ".lock").is_file()) and time.time() < deadline:
            time.sleep(0.2)
        assert (out / "last.pt").is_file(), "the first run wrote no checkpoint in time"
        second = run_tool_process("train_semantic", ["--output-dir", out, "--resume"])
        assert second.returncode == 2
        assert f"is in use by another run (pid {first.pid})" in second.stderr and "Traceback" not in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert (out / ".lock").read_text().strip() == str(first.pid)  # left behind by the killed run
    again = run_tool_process("train_semantic", ["--output-dir", out, "--resume", "--opts",
                                                f"train.epochs={_epoch(out / 'last.pt') + 1}"])
    assert again.returncode == 0, again.stderr
    assert f"locked by pid {first.pid}, which is no longer running" in again.stderr
    assert not (out / ".lock").exists()


def _training_with_workers(scenes_root, out) -> tuple[subprocess.Popen, list[int]]:
    """A run whose 2 loader workers (forked while the trainer's signal handlers are installed) are up."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "train_semantic.py"), "--data-root", str(scenes_root),
                             "--output-dir", str(out), "--opts", *FAST, "data.num_workers=2", "train.epochs=200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "metrics.jsonl").is_file():
        time.sleep(0.1)  # an epoch done: the workers are the training loader's, started inside the trainer
    workers = [pid for pid, (_, parent, _) in processes().items() if parent == proc.pid]
    assert proc.poll() is None and len(workers) >= 2, proc.stderr.read() if proc.poll() is not None else workers
    return proc, workers


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads processes from /proc (Linux)")
def test_loader_workers_end_when_told_and_die_with_their_run(scenes_root, tmp_path):
    """A worker inherits the main process's Python signal handlers when forked; one forked during training would
    note a SIGTERM and go on (after a Ray search, such a worker outlived its killed run for minutes). Here: a
    worker told SIGTERM ends, and when the run is killed outright its workers are gone within a second or two,
    without waiting for PyTorch's 5-second watch of the parent."""
    proc, workers = _training_with_workers(scenes_root, tmp_path / "told")
    try:
        os.kill(workers[0], signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and alive(workers[0]):
            time.sleep(0.05)
        assert not alive(workers[0]), "a loader worker ignored SIGTERM"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    proc, workers = _training_with_workers(scenes_root, tmp_path / "killed")
    proc.send_signal(signal.SIGKILL)  # the run alone, as a lost supervisor or the OOM killer would
    proc.wait()
    deadline = time.time() + 2
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"loader workers {left} outlived their killed run"
