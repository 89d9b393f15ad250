"""A method, a dataset format and a metric from outside the package (tests/plugins/toy_plugin.py), registered
from there, are trained, evaluated, predicted and exported (the metric computed, reported, printed and compared)
by the unchanged tools, in processes of their own as a user runs them (``SEG_EXT_PLUGINS=toy_plugin``); and the
contract tests take them as they take the built-in ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from contracts import FormatContract, InstanceMethodContract, SemanticEvaluatorContract

PLUGINS = ROOT / "tests" / "plugins"
sys.path.insert(0, str(PLUGINS))

import toy_plugin  # noqa: E402  (registers the toy format and method in this process too)

pytestmark = pytest.mark.slow


def _tool(name: str, args: list, plugins: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(PLUGINS)])}
    if plugins:
        env["SEG_EXT_PLUGINS"] = "toy_plugin"
    else:
        env.pop("SEG_EXT_PLUGINS", None)
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return toy_plugin.write_toy_shapes(tmp_path_factory.mktemp("toy") / "shapes")


FAST = ["data.num_workers=0", "train.amp=off"]


def test_the_unchanged_tools_train_evaluate_predict_and_export_a_plugin_method(toy_root, tmp_path):
    run = tmp_path / "run"
    out = _tool("train_instance", ["--method", "blobs", "--data-root", toy_root, "--output-dir", run,
                                   "--opts", *FAST, "train.epochs=4"])
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "blobs" and metrics["test"]["segm/AP"] > 0  # it learnt something
    assert metrics["splits"] == {"train": 8, "val": 2, "test": 2}  # the format's default split
    assert "Instance segmentation: toy blobs" in (run / "report.md").read_text()

    # evaluate the checkpoint alone: the run's numbers
    ev = _tool("train_instance", ["--eval-only", "--checkpoint", run / "best.pt", "--output-dir", tmp_path / "eval"])
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert {k: v for k, v in again.items() if not k.startswith("time/")} == \
        {k: v for k, v in metrics["test"].items() if not k.startswith("time/")}

    # predict every picture, scored against the run's own test split: the run's test mask AP
    pred = tmp_path / "pred"
    out = _tool("predict", ["--checkpoint", run / "best.pt", "--input", toy_root / "pictures", "--output-dir", pred,
                            "--coco-gt", run / "coco" / "instances_test.json"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((pred / "metrics.json").read_text())["segm/AP"] == pytest.approx(metrics["test"]["segm/AP"], abs=1e-9)
    assert len(list((pred / "instances").iterdir())) == 12

    # export to ONNX (any size: the network is convolutional), then predict through onnxruntime: the same instances
    onnx = tmp_path / "blobs.onnx"
    out = _tool("export", ["--checkpoint", run / "best.pt", "--output", onnx, "--dynamic"])
    assert out.returncode == 0, out.stderr[-3000:]
    out = _tool("predict", ["--checkpoint", run / "best.pt", "--onnx", onnx, "--input", toy_root / "pictures",
                            "--output-dir", tmp_path / "onnx"])
    assert out.returncode == 0, out.stderr[-3000:]
    for path in (pred / "instances").iterdir():
        a, b = np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "onnx" / "instances" / path.name))
        assert (a > 0).mean() == pytest.approx((b > 0).mean(), abs=0.01)

    # without the plugin, the checkpoint's method is unknown: one sentence that says how to load it
    out = _tool("predict", ["--checkpoint", run / "best.pt", "--input", toy_root / "pictures", "--output-dir",
                            tmp_path / "no_plugin"], plugins=False)
    assert out.returncode == 2 and "SEG_EXT_PLUGINS" in out.stderr and "Traceback" not in out.stderr


def test_the_semantic_tool_reads_a_plugin_format_found_by_its_layout(toy_root, tmp_path):
    run = tmp_path / "semantic"
    out = _tool("train_semantic", ["--data-root", toy_root, "--output-dir", run, "--opts", *FAST, "train.epochs=2",
                                   "data.image_size=[48,64]", "model.base_width=4", "model.depth=2"])
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"IoU/background", "IoU/disc", "IoU/box"} <= set(metrics["test"])
    assert "(toyshapes)" in (run / "log.txt").read_text()
    # the plugin's metric: computed at the images' size, reported, printed, compared
    pixel_acc = metrics["test"]["pixel_acc"]
    assert metrics["test"]["toy/error"] == pytest.approx(100 - pixel_acc, abs=1e-6)
    assert "Toy error rate" in (run / "report.md").read_text() and "toy/error" in out.stdout
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("val/toy/error" in h for h in history)
    out = _tool("compare", [run, "--output", tmp_path / "compare.md"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test toy/error" in (tmp_path / "compare.md").read_text()


class TestToyMethodContract(InstanceMethodContract):
    method = "blobs"
    opts = ["train.epochs=1"]

    @pytest.fixture
    def data_root(self, toy_root):
        return toy_root


class TestToyFormatContract(FormatContract):
    format = "toyshapes"

    @pytest.fixture
    def root(self, toy_root):
        return toy_root


class TestToyMetricContract(SemanticEvaluatorContract):
    evaluator = "toy_error"
    best, perfect, higher_is_better = "toy/error", 0.0, False
