"""COCO reading and evaluation: checked files, GT fed back as results scores 100, the evaluate tool."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import call_tool
from seg_ext.data.coco import CocoInstanceDataset, load_coco_json
from seg_ext.data.pennfudan import convert_pennfudan
from seg_ext.errors import DatasetError
from seg_ext.evaluation.coco import COCOEvaluator, load_results


@pytest.fixture(scope="module")
def coco_files(pennfudan_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco")
    return convert_pennfudan(pennfudan_root, out, seed=0, val=2, test=3), pennfudan_root


def _gt_as_outputs(dataset: CocoInstanceDataset, index: int) -> dict[str, torch.Tensor]:
    _, target = dataset[index]
    n = len(target["labels"])
    return {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(n),
            "masks": target["masks"][:, None].float()}


def test_ground_truth_as_results_scores_100(coco_files):
    paths, root = coco_files
    dataset = CocoInstanceDataset(paths["train"], root)
    evaluator = COCOEvaluator(dataset.coco, dataset.category_of)
    for i in range(len(dataset)):
        evaluator.process([_gt_as_outputs(dataset, i)], [dataset[i][1]])
    metrics = evaluator.evaluate()
    assert metrics["segm/AP"] == pytest.approx(100) and metrics["bbox/AP"] == pytest.approx(100)
    assert metrics["segm/AP50"] == pytest.approx(100) and metrics["segm/AR100"] == pytest.approx(100)
    assert all("bbox" not in r for r in evaluator.results["segm"])  # segm results carry no box


def test_no_detections_score_zero_and_a_missed_instance_lowers_recall(coco_files):
    paths, root = coco_files
    dataset = CocoInstanceDataset(paths["train"], root)
    evaluator = COCOEvaluator(dataset.coco, dataset.category_of)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 4, 4)}
    evaluator.process([empty], [dataset[0][1]])
    assert evaluator.evaluate()["segm/AP"] == 0.0
    evaluator.reset()
    for i in range(len(dataset)):
        out = _gt_as_outputs(dataset, i)
        if i == 0:  # drop one pedestrian
            out = {k: v[1:] for k, v in out.items()}
        evaluator.process([out], [dataset[i][1]])
    assert evaluator.evaluate()["segm/AR100"] < 100


def test_evaluate_tool_on_files(coco_files, tmp_path, capsys):
    paths, _ = coco_files
    gt = json.loads(paths["test"].read_text())
    segm = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9, "segmentation": a["segmentation"],
             "bbox": [0, 0, 1000, 1000]} for a in gt["annotations"]]  # a wrong box must not change the mask areas
    bbox = [{"image_id": a["image_id"], "category_id": 1, "score": 0.9, "bbox": a["bbox"]} for a in gt["annotations"]]
    (tmp_path / "segm.json").write_text(json.dumps(segm))
    (tmp_path / "bbox.json").write_text(json.dumps(bbox))
    assert call_tool("evaluate", ["--gt", paths["test"], "--results", tmp_path / "segm.json"]) == 0
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out
    metrics = json.loads((tmp_path / "segm.metrics.json").read_text())
    assert metrics["segm/AP"] == pytest.approx(100) and set(metrics) >= {"segm/AP50", "segm/AP75", "segm/APs", "segm/APm", "segm/APl"}
    assert call_tool("evaluate", ["--gt", paths["test"], "--results", tmp_path / "bbox.json", "--iou-type", "bbox",
                                  "--output", tmp_path / "m.json"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["bbox/AP"] == pytest.approx(100)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ([{"image_id": 1, "category_id": 1, "score": 1.0}], r"entry 0 has no 'segmentation'"),
        ([{"image_id": 999, "category_id": 1, "score": 1.0, "segmentation": {}}], r"entry 0 has image_id 999, which the ground truth does not have"),
        ({"not": "a list"}, r"holds a dict; expected a list of COCO results"),
    ],
)
def test_evaluate_tool_bad_results(coco_files, tmp_path, capsys, content, pattern):
    paths, _ = coco_files
    (tmp_path / "r.json").write_text(json.dumps(content))
    assert call_tool("evaluate", ["--gt", paths["test"], "--results", tmp_path / "r.json"]) == 2
    err = capsys.readouterr().err
    import re

    assert re.search(pattern, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_load_results_strips_boxes_from_segm(coco_files, tmp_path):
    paths, root = coco_files
    dataset = CocoInstanceDataset(paths["test"], root)
    ann = dataset.coco.dataset["annotations"][0]
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": ann["image_id"], "category_id": 1, "score": 1.0,
                                                  "segmentation": ann["segmentation"], "bbox": [0, 0, 5, 5]}]))
    assert "bbox" not in load_results(tmp_path / "r.json", dataset.coco, "segm")[0]


def _write(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_json_checks(tmp_path, caplog):
    good_image = {"id": 1, "file_name": "a.png", "width": 10, "height": 10}
    cat = {"id": 1, "name": "person"}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]}
    with pytest.raises(DatasetError, match=r"bad\.json has no 'annotations' list"):
        load_coco_json(_write(tmp_path, {"images": [], "categories": []}))
    with pytest.raises(DatasetError, match=r"images\[0\] has no 'height'"):
        load_coco_json(_write(tmp_path, {"images": [{"id": 1, "file_name": "a", "width": 3}], "annotations": [], "categories": [cat]}))
    with pytest.raises(DatasetError, match=r"annotation 1 points at image_id 7, which is not in images"):
        load_coco_json(_write(tmp_path, {"images": [good_image], "categories": [cat], "annotations": [{**ann, "image_id": 7}]}))
    with pytest.raises(DatasetError, match=r"annotations\[0\] has no 'segmentation'"):
        load_coco_json(_write(tmp_path, {"images": [good_image], "categories": [cat],
                                         "annotations": [{k: v for k, v in ann.items() if k != "segmentation"}]}))
    with pytest.raises(DatasetError, match="is not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        load_coco_json(tmp_path / "x.json")
    # degenerate boxes: counted and dropped with a warning
    path = _write(tmp_path, {"images": [good_image], "categories": [cat],
                             "annotations": [ann, {**ann, "id": 2, "bbox": [1, 1, 0, 5]}, {**ann, "id": 3, "bbox": [2, 2, 4, 0.5]}]})
    dataset = CocoInstanceDataset(path, tmp_path)
    assert dataset.dropped == 2 and len(dataset.coco.anns) == 1
    assert "dropped 2 annotation(s) with degenerate boxes" in caplog.text


def test_faster_coco_eval_backend_gives_the_same_numbers(coco_files):
    paths, root = coco_files
    dataset = CocoInstanceDataset(paths["train"], root)
    results = {"pycocotools": None, "faster_coco_eval": None}
    for backend in results:
        evaluator = COCOEvaluator(dataset.coco, dataset.category_of, backend=backend)
        for i in range(len(dataset)):
            out = _gt_as_outputs(dataset, i)
            keep = torch.arange(len(out["scores"])) % 2 == 0  # miss every other pedestrian
            out = {k: v[keep] for k, v in out.items()}
            out["scores"] = torch.linspace(0.3, 0.9, len(out["scores"]))
            evaluator.process([out], [dataset[i][1]])
        results[backend] = evaluator.evaluate()
    assert results["pycocotools"].keys() == results["faster_coco_eval"].keys()
    for key, value in results["pycocotools"].items():
        assert results["faster_coco_eval"][key] == pytest.approx(value, nan_ok=True), key
