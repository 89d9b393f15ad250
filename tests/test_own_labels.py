"""Your own labels, end to end through the tools: every annotation sample trains and evaluates with
``--data-root`` alone (or is refused in one sentence where it holds nothing trainable for the task); each format
converts, trains a few iterations, predicts and evaluates (a round trip); ``tools/convert.py`` writes COCO files
that pycocotools loads with the tool's own instance counts; and the two-class synthetic default reports AP per
class for both instance methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import call_tool
from test_annotation_formats import EXPECTED, SAMPLES, needs_samples

pytestmark = pytest.mark.slow

SEMANTIC = ["train.epochs=1", "data.image_size=[32,32]", "data.num_workers=0", "model.base_width=4", "model.depth=2",
            "report.num_overlays=1"]
# the instance tool with its lighter method: what is shown is the reading of each format, the same for both methods
# (Mask R-CNN on several classes: test_the_two_class_default_reports_ap_per_class_for_both_methods)
INSTANCE = ["--method", "watershed", "--opts", "train.epochs=1", "data.num_workers=0", "watershed.input_size=[64,64]",
            "model.base_width=4", "model.depth=2", "report.num_overlays=1"]
SEMANTIC = ["--opts", *SEMANTIC]


# samples of two images or more in a layout of both tasks: they must train both, not be refused
TRAINS_BOTH = {"labelme_instance", "labelme_semantic", "cvat_images_xml", "coco_labelme", "coco_rle"}


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@needs_samples
@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_every_sample_trains_and_evaluates_or_is_refused_in_one_sentence(sample, tmp_path, capsys):
    for tool, opts in (("train_semantic", SEMANTIC), ("train_instance", INSTANCE)):
        out = tmp_path / tool
        code = call_tool(tool, ["--data-root", SAMPLES / sample, "--output-dir", out, *opts])
        assert code == 0 or sample not in TRAINS_BOTH, (sample, tool, capsys.readouterr().err[-2000:])
        if code == 0:
            metrics = json.loads((out / "metrics.json").read_text())
            assert "val" in metrics and (out / "report.md").is_file(), (sample, tool)
            continue
        errors = _errors(capsys)
        assert code == 2 and len(errors) == 1, (sample, tool, errors)
        # a refusal says why: no layout, one image, no val split, or the task's data missing
        assert any(w in errors[0] for w in ("no recognised layout", "image(s); expected at least 2", "val split",
                                            "holds no instance", "holds no", "no SegmentationObject")), errors[0]


@needs_samples
def test_convert_to_coco_loads_in_pycocotools_with_the_tools_own_counts(tmp_path):
    from pycocotools.coco import COCO

    assert call_tool("convert", ["--to", "coco", "--data-root", SAMPLES / "labelme_instance", "--output-dir", tmp_path / "a"]) == 0
    ours = COCO(str(tmp_path / "a" / "annotations" / "instances_all.json"))
    theirs = COCO(str(SAMPLES / "coco_labelme" / "annotations.json"))
    assert len(ours.getAnnIds()) == len(theirs.getAnnIds()) == 12  # labelme's own COCO export: 12 instances
    names = lambda coco: sorted(coco.cats[a["category_id"]]["name"] for a in coco.dataset["annotations"])  # noqa: E731
    assert names(ours) == names(theirs)
    for image in ours.dataset["images"]:
        assert (tmp_path / "a" / image["file_name"]).is_file()
    assert call_tool("convert", ["--to", "coco", "--data-root", SAMPLES / "cvat_images_xml", "--output-dir", tmp_path / "b"]) == 0
    assert sorted(p.name for p in (tmp_path / "b" / "annotations").iterdir()) == \
        ["instances_test.json", "instances_train.json", "instances_val.json"]  # the subsets, carried over


@needs_samples
@pytest.mark.parametrize("sample, target, tool", [
    ("labelme_instance", "coco", "train_instance"),
    ("cvat_images_xml", "coco", "train_instance"),
    ("coco_labelme", "coco", "train_instance"),
    ("labelme_semantic", "masks", "train_semantic"),
    ("cvat_images_xml", "masks", "train_semantic"),
    ("common_semseg", "masks", "train_semantic"),
])
def test_round_trip_convert_train_predict_evaluate(sample, target, tool, tmp_path, capsys):
    converted = tmp_path / "converted"
    assert call_tool("convert", ["--to", target, "--data-root", SAMPLES / sample, "--output-dir", converted]) == 0
    run = tmp_path / "run"
    opts = SEMANTIC if tool == "train_semantic" else INSTANCE
    assert call_tool(tool, ["--data-root", converted, "--output-dir", run, *opts]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    pred = tmp_path / "pred"
    images = converted / "images"
    if tool == "train_instance":  # predicted and scored against the run's own test (or val) split
        split = "test" if "test" in metrics else "val"
        assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", images, "--output-dir", pred,
                                     "--coco-gt", run / "coco" / f"instances_{split}.json"]) == 0
        scored = json.loads((pred / "metrics.json").read_text())
        assert scored["segm/AP"] == pytest.approx(metrics[split]["segm/AP"], abs=1e-9, nan_ok=True)
        assert call_tool("evaluate", ["--gt", run / "coco" / f"instances_{split}.json",
                                      "--results", pred / "results_segm.json"]) == 0
    else:
        assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", images, "--output-dir", pred]) == 0
        masks = sorted((pred / "masks").iterdir())
        assert len(masks) == len(list(images.iterdir()))


def test_the_two_class_default_reports_ap_per_class_for_both_methods(tmp_path):
    for method, opts in (("watershed", ["train.epochs=1", "data.num_workers=0", "watershed.input_size=[64,64]",
                                        "model.base_width=4", "model.depth=2"]),
                         ("maskrcnn", ["train.epochs=1", "data.num_workers=0", "model.min_size=64", "model.max_size=96",
                                       # fewer proposals and sampled RoIs: half the time; the per-class keys are the claim
                                       "model.rpn_post_nms_top_n_train=100", "model.box_batch_size_per_image=32",
                                       "model.detections_per_img=20"])):
        out = tmp_path / method
        assert call_tool("train_instance", ["--method", method, "--output-dir", out, "--opts", *opts]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        for split in ("val", "test"):
            for key in ("segm/AP-person", "segm/AP-dog", "bbox/AP-person", "bbox/AP-dog"):
                assert key in metrics[split], (method, key)
        assert "| dog |" in (out / "report.md").read_text()


def test_the_watershed_oracle_gives_each_instance_its_class(tmp_path):
    """On ground-truth maps of the two-class streets, every class is found (its AP high), so the class of each
    instance comes from the class maps, not a default."""
    out = tmp_path / "oracle"
    assert call_tool("train_instance", ["--method", "watershed", "--oracle", "--output-dir", out]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["segm/AP-person"] > 70 and test["segm/AP-dog"] > 70, test
    results = json.loads((out / "results_test_segm.json").read_text())
    assert {r["category_id"] for r in results} == {1, 2}
    assert np.isfinite(test["segm/AP"])
