"""tools/sweep.py and tools/compare.py: grid parsing, a real resumable sweep (interrupted with Ctrl-C, then run
again), the comparison's numbers from run folders made here, TensorBoard files, and bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, call_tool
from seg_ext.errors import ConfigError
from seg_ext.methods import METHODS
from seg_ext.tasks.sweep import parse_grid, plan

TINY = ["data.image_size=[48,48]", "data.batch_size=4", "data.num_workers=0", "model.base_width=4", "model.depth=2",
        "report.num_overlays=0", "train.epochs=2"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_grid_values_are_yaml_split_outside_brackets():
    grid = parse_grid(["augment.crop_scale=[0.25,1],[0.75,1.0]", "augment.hflip_prob=0,0.5", "model.name=unet"])
    assert grid == {"augment.crop_scale": [[0.25, 1], [0.75, 1.0]], "augment.hflip_prob": [0, 0.5], "model.name": ["unet"]}
    runs = plan(grid, [0, 1], Path("out"))
    assert len(runs) == 2 * 2 * 1 * 2
    assert len({r.folder for r in runs}) == len(runs)  # a folder of its own each
    assert runs[0].overrides == ["augment.crop_scale=[0.25, 1]", "augment.hflip_prob=0", 'model.name="unet"', "train.seed=0"]


def test_folder_names_are_readable_and_distinct():
    from seg_ext.tasks.sweep import plan_settings

    runs = plan_settings([{"augment.crop_scale": None, "train.lr": 0.0012345678901234567, "train.amp": True},
                          {"augment.crop_scale": [0.5, 1.0], "train.lr": 0.001, "train.amp": False}], [0], Path("out"))
    assert [r.folder.parent.name for r in runs] == ["augment.crop_scale=null__train.lr=0.00123457__train.amp=true",
                                                    "augment.crop_scale=0.5-1.0__train.lr=0.001__train.amp=false"]
    close = plan_settings([{"train.lr": 0.00123456781}, {"train.lr": 0.00123456789}], [0], Path("out"))
    assert [r.folder.parent.name for r in close] == ["train.lr=0.0012345678", "train.lr=0.0012345679"]


def test_no_grid_is_the_config_itself_over_the_seeds():
    runs = plan(parse_grid([]), [0, 1, 2], Path("out"))
    assert [r.folder for r in runs] == [Path("out/default/seed0"), Path("out/default/seed1"), Path("out/default/seed2")]
    assert [r.overrides for r in runs] == [["train.seed=0"], ["train.seed=1"], ["train.seed=2"]]


@pytest.mark.parametrize("items, pattern", [
    (["augment.hflip_prob=0,,0.5"], "empty value"),
    (["augment.hflip_prob="], "empty value"),
    (["augment.hflip_prob"], "must look like key=value1,value2"),
    (["train.lr=0.1", "train.lr=0.2"], "given twice"),
])
def test_bad_grid_items_are_one_sentence(items, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_grid(items)


def test_unknown_grid_key_stops_the_sweep_before_any_run(tmp_path, capsys):
    code = call_tool("sweep", ["--grid", "train.lrr=0.1,0.2", "--seeds", "0", "--output-dir", tmp_path / "s", "--opts", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train.lrr" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("metrics.json"))


@pytest.mark.parametrize("config, grid, key", [
    ("semantic/pennfudan_unet.yaml", "augment.crop_scale=[0.3,1],[0.6,1],null", "augment.crop_scale"),
    ("instance/pennfudan_watershed_unet.yaml", "augment.crop_fraction=0,0.1", "augment.crop_fraction"),
    ("semantic/pennfudan_unet.yaml", "eval.stride=32,64", "eval.stride"),  # whole-image prediction: no windows
])
def test_a_sweep_over_a_key_its_mode_ignores_is_refused_before_any_run(config, grid, key, tmp_path, capsys):
    code = call_tool("sweep", ["--config", ROOT / "configs" / config, "--grid", grid, "--seeds", "0",
                               "--output-dir", tmp_path / "s"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"the sweep varies '{key}'" in err and "same numbers" in err, err
    assert not (tmp_path / "s").exists()


def test_a_key_ignored_in_some_runs_of_a_sweep_only_is_swept():
    from seg_ext.tasks.sweep import check_settings

    runs = plan(parse_grid(["data.resize=squash,scale", "augment.crop_scale=[0.3,1],null"]), [0], Path("out"))
    check_settings(runs, ROOT / "configs" / "semantic" / "pennfudan_unet.yaml", None, [])  # squash runs use it


def test_a_run_warns_about_overrides_its_mode_ignores(scenes_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY,
                                        "train.epochs=1", "data.resize=scale", "data.crop_size=[48,48]",
                                        "augment.crop_scale=[0.2,1.0]", "augment.hflip_prob=0"]) == 0
    err = capsys.readouterr().err
    assert "config key 'augment.crop_scale' is [0.2, 1.0], but data.resize is 'scale'" in err
    # the overrides that act (data.crop_size, augment.hflip_prob, ...) are not named
    assert [line for line in err.splitlines() if "has no effect" in line] == [
        line for line in err.splitlines() if "'augment.crop_scale'" in line]
    assert "augment.crop_scale" in (out / "log.txt").read_text()


def _command(out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "sweep.py"), "--grid", "augment.hflip_prob=0,1", "--seeds", "0",
            "--output-dir", str(out), "--opts", *TINY, "train.epochs=3"]


@pytest.mark.slow
def test_a_sweep_interrupted_then_run_again_skips_finished_runs_and_resumes_the_stopped_one(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(_command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    first, stopped = out / "augment.hflip_prob=0" / "seed0", out / "augment.hflip_prob=1" / "seed0"
    try:  # wait until the second run has a checkpoint, then Ctrl-C (to the sweep's whole process group)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (stopped / "last.pt").is_file():
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "run the same command again" in stderr, stderr[-2000:]
    assert (first / "metrics.json").is_file()
    finished_at = (first / "metrics.json").stat().st_mtime_ns
    assert not (stopped / "metrics.json").is_file() and (stopped / "last.pt").is_file()

    again = subprocess.run(_command(out), capture_output=True, text=True, env=ENV, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (first / "metrics.json").stat().st_mtime_ns == finished_at  # not run again
    assert "resumed from" in (stopped / "log.txt").read_text()
    assert "1 finished before, 1 to run" in again.stderr and "(resumed)" in again.stderr
    numbers = json.loads((out / "comparison.json").read_text())
    assert numbers["keys"] == ["augment.hflip_prob"]
    assert [s["values"] for s in numbers["settings"]] == [{"augment.hflip_prob": 0}, {"augment.hflip_prob": 1}]
    assert all(s["stats"]["test mIoU"]["n"] == 1 for s in numbers["settings"])
    assert json.loads((out / "runs.json").read_text()) == [
        {"folder": "augment.hflip_prob=0/seed0", "setting": {"augment.hflip_prob": 0}, "seed": 0},
        {"folder": "augment.hflip_prob=1/seed0", "setting": {"augment.hflip_prob": 1}, "seed": 0}]
    assert (out / "comparison.md").is_file() and (out / "comparison_bars.png").is_file() and (out / "comparison_curves.png").is_file()


def _fake_run(folder: Path, lr: float, seed: int, val: float, test: float, augment: dict | None = None) -> None:
    folder.mkdir(parents=True)
    cfg = {"data": {"root": None}, "train": {"lr": lr, "seed": seed, "best_metric": "mIoU"}}
    if augment is not None:
        cfg["augment"] = augment
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "metrics.json").write_text(json.dumps({
        "val": {"mIoU": val, "mAP": val + 10, "IoU/background": 90.0, "IoU/person": val - 5},
        "test": {"mIoU": test, "mAP": test + 10, "IoU/background": 91.0, "IoU/person": test - 5},
        "train_seconds": 10.0}))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "val/mIoU": val * e / 3}) for e in (1, 2, 3)))


def test_comparison_numbers_are_mean_and_sample_std_over_seeds(tmp_path, capsys):
    values = {0.01: [(70.0, 60.0), (72.0, 64.0), (74.0, 65.0)], 0.1: [(80.0, 50.0), (81.0, 52.0)]}
    for lr, pairs in values.items():
        for seed, (val, test) in enumerate(pairs):
            # seed 1 saved a key the others' configs lack (added to the config since), at its default: same setting
            augment = {"hflip_prob": METHODS["semantic"].defaults()["augment"]["hflip_prob"]} if seed == 1 else None
            _fake_run(tmp_path / "runs" / f"lr{lr}" / f"s{seed}", lr, seed, val, test, augment)
    assert call_tool("compare", [tmp_path / "runs", "--output", tmp_path / "c.md"]) == 0
    numbers = json.loads((tmp_path / "c.json").read_text())
    assert numbers["keys"] == ["train.lr"]
    by_lr = {s["values"]["train.lr"]: s["stats"] for s in numbers["settings"]}
    for lr, pairs in values.items():
        tests = [t for _, t in pairs]
        assert by_lr[lr]["test mIoU"]["mean"] == pytest.approx(statistics.fmean(tests))
        assert by_lr[lr]["test mIoU"]["std"] == pytest.approx(statistics.stdev(tests))
        assert by_lr[lr]["test mIoU"]["n"] == len(pairs)
        assert by_lr[lr]["val IoU/person"]["mean"] == pytest.approx(statistics.fmean(v - 5 for v, _ in pairs))
    table = (tmp_path / "c.md").read_text()
    assert "| 0.01 | 3 | 72.00 ± 2.00 |" in table  # val mIoU: mean 72, std 2
    assert "**80.50 ± 0.71**" in table and "**63.00 ± 2.65**" in table  # best val mIoU is lr 0.1, best test lr 0.01


@pytest.mark.parametrize("make, pattern", [
    (lambda p: p.mkdir(), "is not a run"),
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: None, "does not exist"),
])
def test_a_folder_that_is_not_a_run_is_one_sentence(make, pattern, tmp_path, capsys):
    target = tmp_path / "x"
    make(target)
    code = call_tool("compare", [target, "--output", tmp_path / "c.md"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and pattern in err


@pytest.mark.slow
def test_tensorboard_event_files_are_written_and_readable(scenes_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY,
                                        "train.tensorboard=true", "report.num_overlays=2"]) == 0
    events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/mIoU", "lr", "train/loss_step"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/mIoU")] == [1, 2]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [round(e.value, 4) for e in events.Scalars("val/mIoU")] == [round(h["val/mIoU"], 4) for h in history]
    assert "val/overlays" in tags["images"] and len(events.Images("val/overlays")) == 2
    assert math.isfinite(events.Scalars("train/loss_step")[-1].value)


def test_without_tensorboard_no_event_file(scenes_root, tmp_path):
    out = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY]) == 0
    assert not list(out.glob("events.out.tfevents.*"))


def test_the_module_ray_workers_import_to_build_a_run_command_leaves_torch_out():
    """Ray's trial workers import ``seg_ext.tasks.sweep`` for ``run_command`` (and with it the tracking module):
    neither may pull in torch, which would cost every trial worker seconds and memory before its run starts."""
    code = "import sys, seg_ext.tasks.sweep; print(sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
