"""The checkpoint boundary (seg_ext.methods.checkpoints): checkpoints open without running code, old ones only
through the explicit conversion, and a checkpoint of another task, method or network is one sentence, exit 2,
before any weights are loaded. Every way in is tried: predict, --eval-only, --resume, export, tune_postprocess."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import call_tool

TINY = ["data.image_size=[32,32]", "data.batch_size=4", "data.num_workers=0", "train.epochs=1", "model.base_width=4",
        "model.depth=2", "report.num_overlays=0"]


@pytest.fixture(scope="module")
def tiny_run(scenes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("boundary") / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY]) == 0
    return out


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


class _RunsCode:
    """A pickle payload: unpickling it calls ``os.system``, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(path, marker, like: dict) -> None:
    """A checkpoint that looks like a real one and carries a payload."""
    torch.save({**like, "payload": _RunsCode(marker)}, path)


@pytest.mark.parametrize("way", ["predict", "eval-only", "resume", "export", "tune_postprocess"])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(way, tiny_run, scenes_root, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    like = torch.load(tiny_run / "best.pt", weights_only=True)
    target = tmp_path / "run" / ("last.pt" if way == "resume" else "best.pt")
    target.parent.mkdir()
    _crafted(target, marker, like)
    image = next((scenes_root / "images").iterdir())
    argv = {
        "predict": ("predict", ["--checkpoint", target, "--input", image, "--output-dir", tmp_path / "out"]),
        "eval-only": ("train_semantic", ["--eval-only", "--checkpoint", target, "--output-dir", tmp_path / "out"]),
        "resume": ("train_semantic", ["--resume", "--output-dir", target.parent]),
        "export": ("export", ["--checkpoint", target, "--output", tmp_path / "m.onnx"]),
        "tune_postprocess": ("tune_postprocess", [target, "--grid", "eval.mask_threshold=0.5", "--output", tmp_path / "t.md"]),
    }[way]
    assert call_tool(*argv) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "only an unsafe load could read" in errors[0] and str(target) in errors[0], errors
    assert "tools/upgrade_checkpoint.py" in errors[0]
    assert not marker.exists(), "the payload ran"


def _as_version_1(path, out) -> None:
    """The checkpoint as seg_ext wrote it before the safe format: NumPy's random state as NumPy objects, the best
    value and history in the training state (read only by an unsafe load)."""
    ckpt = torch.load(path, weights_only=True)
    hooks = ckpt.pop("hooks")
    ckpt["state"].update(best_value=hooks["Validation"]["best_value"], best_epoch=hooks["Validation"]["best_epoch"],
                         history=hooks["History"]["records"])
    ckpt["rng"]["numpy"] = np.random.get_state()
    ckpt["rng"]["python"] = random.getstate()
    ckpt["version"] = 1
    torch.save(ckpt, out)


def test_an_old_checkpoint_opens_only_after_the_explicit_conversion(tiny_run, scenes_root, tmp_path, capsys):
    old = tmp_path / "old" / "best.pt"
    old.parent.mkdir()
    _as_version_1(tiny_run / "best.pt", old)
    image = sorted((scenes_root / "images").iterdir())[0]
    assert call_tool("predict", ["--checkpoint", old, "--input", image, "--output-dir", tmp_path / "refused"]) == 2
    assert "tools/upgrade_checkpoint.py" in _errors(capsys)[0]

    assert call_tool("upgrade_checkpoint", [old]) == 0
    captured = capsys.readouterr()
    assert "unsafe load" in captured.err and (old.parent / "best.pt.v1").is_file()  # the risk named; original kept
    for name, checkpoint in (("converted", old), ("original", tiny_run / "best.pt")):
        assert call_tool("predict", ["--checkpoint", checkpoint, "--input", image, "--output-dir", tmp_path / name]) == 0
    a = np.asarray(Image.open(tmp_path / "converted" / "masks" / f"{image.stem}.png"))
    b = np.asarray(Image.open(tmp_path / "original" / "masks" / f"{image.stem}.png"))
    np.testing.assert_array_equal(a, b)
    converted = torch.load(old, weights_only=True)
    assert converted["hooks"]["Validation"]["best_epoch"] == 1 and len(converted["hooks"]["History"]["records"]) == 1


def test_a_file_that_is_not_a_seg_ext_checkpoint(tmp_path, scenes_root, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    image = next((scenes_root / "images").iterdir())
    assert call_tool("predict", ["--checkpoint", path, "--input", image, "--output-dir", tmp_path / "o"]) == 2
    assert f"checkpoint {path} is not a seg_ext checkpoint" in _errors(capsys)[0]


def test_a_checkpoint_of_the_other_task(tiny_run, tmp_path, capsys):
    assert call_tool("train_instance", ["--eval-only", "--checkpoint", tiny_run / "best.pt", "--output-dir", tmp_path / "e"]) == 2
    error = _errors(capsys)[0]
    assert f"checkpoint {tiny_run / 'best.pt'} is from a semantic run (method semantic); expected one of the instance task" in error


def test_overrides_that_change_the_network_are_refused_before_loading(tiny_run, scenes_root, tmp_path, capsys):
    image = next((scenes_root / "images").iterdir())
    cases = [
        ("predict", ["--checkpoint", tiny_run / "best.pt", "--input", image, "--output-dir", tmp_path / "p",
                     "--opts", "model.base_width=8"], "model.base_width = 4, but --opts sets 8"),
        ("train_semantic", ["--eval-only", "--checkpoint", tiny_run / "best.pt", "--output-dir", tmp_path / "e",
                            "--opts", "model.depth=3"], "model.depth = 2, but --opts sets 3"),
        ("train_semantic", ["--resume", "--output-dir", tiny_run, "--opts", "model.batch_norm=false"],
         "model.batch_norm = true, but --opts sets false"),
        ("train_semantic", ["--resume", "--output-dir", tiny_run, "--opts", "train.optimizer=sgd"],
         "train.optimizer = \"adamw\", but --opts sets \"sgd\""),
    ]
    for tool, argv, expected in cases:
        assert call_tool(tool, argv) == 2, argv
        errors = _errors(capsys)
        assert len(errors) == 1 and expected in errors[0] and "checkpoint" in errors[0], errors


def test_weights_that_do_not_fit_are_one_sentence(tiny_run, scenes_root, tmp_path, capsys):
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    name = next(k for k in ckpt["model"] if k.endswith("weight"))
    ckpt["model"][name] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    image = next((scenes_root / "images").iterdir())
    assert call_tool("predict", ["--checkpoint", bad, "--input", image, "--output-dir", tmp_path / "p"]) == 2
    assert f"{name} has shape (3, 3) there" in _errors(capsys)[0]


def test_a_resume_may_change_epochs_workers_and_learning_rate(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert call_tool("train_semantic", ["--resume", "--output-dir", run, "--opts", "train.epochs=2", "train.lr=0.001",
                                        "data.num_workers=1"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
