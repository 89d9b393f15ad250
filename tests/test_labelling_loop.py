"""The labelling loop end to end, through the tools as a person runs them: a first model, its pre-annotations of
the images it is least sure of (LabelMe and CVAT, as the tools would open them), those folders trained on from the
first model's weights, for both tasks."""

from __future__ import annotations

import json

import pytest

from conftest import call_tool

SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "train.epochs=1",
            "model.base_width=4", "model.depth=2", "report.num_overlays=1"]
WATERSHED = ["data.val=2", "data.test=4", "data.batch_size=4", "data.num_workers=0", "train.epochs=1",
             "report.num_overlays=1", "watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2",
             "eval.score_threshold=0.05"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_predict_into_the_tools_then_train_on_from_the_first_model(task, pennfudan_root, tmp_path):
    tool = "train_semantic" if task == "semantic" else "train_instance"
    method = [] if task == "semantic" else ["--method", "watershed"]
    first = tmp_path / "first"
    assert call_tool(tool, [*method, "--data-root", pennfudan_root, "--output-dir", first, "--opts",
                            *(SEMANTIC if task == "semantic" else WATERSHED)]) == 0
    out = tmp_path / "next"
    assert call_tool("predict", ["--checkpoint", first / "best.pt", "--input", pennfudan_root / "PNGImages",
                                 "--output-dir", out, "--top", "6", "--save-format", "labelme", "cvat"]) == 0
    chosen = out / "to_label_next"
    assert len(list((chosen / "labelme").glob("*.json"))) == 6
    assert sum(e["shapes"] for e in json.loads((chosen / "predictions.json").read_text())["images"]) > 0
    for name in ("labelme", "cvat"):  # (a person corrects them here) then trains on from the first model
        second = tmp_path / f"second_{name}"
        assert call_tool(tool, ["--init-from", first / "best.pt", "--data-root", chosen / name, "--output-dir", second,
                                "--opts", "train.epochs=1", "data.val=1", "data.test=1"]) == 0, name
        metrics = json.loads((second / "metrics.json").read_text())
        assert metrics["init_from"] == str(first / "best.pt") and metrics["splits"]["train"] == 4, name
