"""Model folders (``tools/export.py --format folder``): what they hold, that they predict exactly as the checkpoint
they came from (both tasks, PyTorch and ONNX), that every tool taking a checkpoint takes them, and that a damaged
or foreign folder is one sentence."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import call_tool

# train.deterministic (inherited by --eval-only from the checkpoint): with CUDA visible the run's evaluation and the
# folder's would otherwise be free to autotune different cuDNN algorithms, and the exact mIoU comparison to differ
SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "train.epochs=1",
            "model.base_width=4", "model.depth=2", "train.deterministic=true", "report.num_overlays=0"]
WATERSHED = ["data.val=2", "data.test=3", "data.batch_size=4", "data.num_workers=0", "train.epochs=1",
             "report.num_overlays=0", "watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2",
             "train.lr=0.01", "eval.score_threshold=0.05"]


def _run_with_folder(task: str, root: Path, folder: Path) -> dict[str, Path]:
    tool, argv = (("train_semantic", ["--data-root", root, "--opts", *SEMANTIC]) if task == "semantic" else
                  ("train_instance", ["--method", "watershed", "--data-root", root, "--opts", *WATERSHED]))
    run = folder / task
    assert call_tool(tool, ["--output-dir", run, *argv]) == 0
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--format", "folder", "--output", folder / f"{task}_model"]) == 0
    return {task: run, f"{task}_model": folder / f"{task}_model"}


@pytest.fixture(scope="module")
def runs(scenes_root, pennfudan_root, tmp_path_factory) -> dict[str, Path]:
    """A short semantic run with its model folder beside it; ``runs.instance(...)`` adds a watershed one."""
    folder = tmp_path_factory.mktemp("model_folder")
    made = _run_with_folder("semantic", scenes_root, folder)
    return {**made, "make_instance": lambda: made.update(_run_with_folder("instance", pennfudan_root, folder)) or made}


def _images(root: Path) -> list[Path]:
    folder = root / "images" if (root / "images").is_dir() else root / "PNGImages"
    return sorted(folder.glob("*.png"))[:5]


@pytest.mark.parametrize("task", ["semantic", pytest.param("instance", marks=pytest.mark.slow)])
def test_a_folder_predicts_exactly_as_its_checkpoint(task, runs, scenes_root, pennfudan_root):
    from safetensors import safe_open

    from seg_ext.inference import Predictor

    if task == "instance":
        runs = runs["make_instance"]()
    folder = runs[f"{task}_model"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:  # tensors only, nothing to unpickle
        assert len(list(weights.keys())) > 0
    info = json.loads((folder / "config.json").read_text())
    assert info["format"] == "seg_ext model folder" and info["task"] == task and info["package_version"]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c["colour"]) for c in info["classes"])
    assert info["input"]["mean"] == [0.485, 0.456, 0.406] and "optimizer" not in info["checkpoint"]
    from_ckpt = Predictor.from_checkpoint(runs[task] / "best.pt", device="cpu")
    from_folder = Predictor.from_pretrained(folder, device="cpu")
    assert from_folder.class_names == from_ckpt.class_names and from_folder.categories == from_ckpt.categories
    for image in _images(scenes_root if task == "semantic" else pennfudan_root):
        a, b = from_ckpt(image, probs=task == "semantic"), from_folder(image, probs=task == "semantic")
        assert sorted(a) == sorted(b)
        for key in a:
            assert np.array_equal(a[key], b[key]), (image.name, key)
    card = (folder / "README.md").read_text()
    assert card.startswith(f"# {task}_model: {task} segmentation") and "Predictor.from_pretrained" in card
    assert "## Training" in card and "- command: `" in card and "## Limitations" in card
    assert ("## Per class" in card) and ("## Where it fails" in card if task == "instance" else "## Calibration" in card)
    assert "![" not in card  # the run's figures stay behind


@pytest.mark.slow  # three tool runs
def test_every_tool_that_takes_a_checkpoint_takes_the_folder(runs, scenes_root, tmp_path):
    run, folder = runs["semantic"], runs["semantic_model"]
    for source, out in ((["--checkpoint", run / "best.pt"], "ckpt"), (["--model", folder], "folder")):
        assert call_tool("predict", [*source, "--input", scenes_root / "images", "--output-dir", tmp_path / out]) == 0
    masks = sorted((tmp_path / "ckpt" / "masks").glob("*.png"))
    assert masks and all(m.read_bytes() == (tmp_path / "folder" / "masks" / m.name).read_bytes() for m in masks)
    assert call_tool("train_semantic", ["--eval-only", "--checkpoint", folder, "--output-dir", tmp_path / "eval"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["mIoU"]
    assert evaluated == pytest.approx(json.loads((run / "metrics.json").read_text())["test"]["mIoU"], abs=1e-9)
    assert call_tool("train_semantic", ["--init-from", folder, "--data-root", scenes_root, "--output-dir",
                                        tmp_path / "on", "--opts", *SEMANTIC[:-1], "train.epochs=0"]) == 0


@pytest.mark.slow  # two ONNX exports, 5 s each
def test_the_onnx_file_of_a_folder_predicts_as_the_checkpoint_s_export(runs, scenes_root, tmp_path):
    from seg_ext.inference import Predictor

    run = runs["semantic"]
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--format", "folder", "--onnx", "--dynamic",
                                "--output", tmp_path / "model"]) == 0
    assert (tmp_path / "model" / "model.onnx").is_file() and not list(tmp_path.glob(".model.*"))
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--output", tmp_path / "m.onnx", "--dynamic"]) == 0
    a = Predictor.from_checkpoint(run / "best.pt", device="cpu", onnx=tmp_path / "m.onnx")
    b = Predictor.from_pretrained(tmp_path / "model", device="cpu", onnx=tmp_path / "model" / "model.onnx")
    for image in _images(scenes_root):
        assert np.array_equal(a(image)["labels"], b(image)["labels"]), image.name


def _damaged(folder: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / how
    shutil.copytree(folder, copy)
    info = json.loads((copy / "config.json").read_text())
    if how == "no_weights":
        (copy / "model.safetensors").unlink()
    elif how == "foreign":
        (copy / "config.json").write_text(json.dumps({"architectures": ["Unet"]}))
    elif how == "newer":
        (copy / "config.json").write_text(json.dumps({**info, "format_version": 99}))
    elif how == "other_network":
        info["checkpoint"]["config"]["model"]["base_width"] = 8
        (copy / "config.json").write_text(json.dumps(info))
    elif how == "bad_weights":
        (copy / "model.safetensors").write_bytes(b"not a safetensors file")
    return copy


@pytest.mark.parametrize("how, pattern", [
    ("no_weights", r"model folder .*no_weights has no model\.safetensors; expected a folder written by tools/export\.py"),
    ("foreign", r"config\.json is not a seg_ext model folder's config"),
    ("newer", r"is of format version 99, which this seg_ext .* cannot read; expected version 1 or older"),
    ("other_network", r"its weights do not fit the network its config describes|has shape .* in the network"),
    ("bad_weights", r"cannot read .*model\.safetensors \(\w+\); expected the weights"),
])
def test_a_damaged_or_foreign_folder_is_one_sentence(how, pattern, runs, scenes_root, tmp_path, capsys):
    folder = _damaged(runs["semantic_model"], tmp_path, how)
    code = call_tool("predict", ["--model", folder, "--input", scenes_root / "images", "--output-dir", tmp_path / "out"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_bad_export_requests_are_one_sentence(runs, tmp_path, capsys):
    run = runs["semantic"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for argv, pattern in (
        (["--checkpoint", run / "best.pt", "--format", "folder", "--output", tmp_path / "taken"],
         r"--output .*taken exists and is not a model folder"),
        (["--checkpoint", runs["semantic_model"], "--format", "folder", "--output", tmp_path / "again"],
         r"is already a model folder; expected a run's best\.pt"),
        (["--checkpoint", run / "best.pt", "--onnx", "--output", tmp_path / "m.onnx"],
         r"--onnx adds model\.onnx to a model folder"),
        (["--checkpoint", run / "best.pt", "--format", "folder", "--onnx", "--image", tmp_path / "no.png", "--output",
          tmp_path / "half"], r"no\.png"),  # fails after the weights are written: nothing is left of the folder
        (["--checkpoint", run / "best.pt", "--format", "folder", "--output", runs["semantic_model"]], None),
    ):
        code = call_tool("export", argv)
        err = capsys.readouterr().err
        if pattern is None:  # an earlier model folder is replaced whole
            assert code == 0, err
            continue
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and re.search(pattern, lines[0]), err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine" and not (tmp_path / "again").exists()
    assert not (tmp_path / "half").exists()
    assert not list(tmp_path.glob(".*"))  # no staging folder left
