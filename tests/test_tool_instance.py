"""tools/train_instance.py: one-iteration runs of both methods on a generated Penn-Fudan layout, eval-only, errors."""

from __future__ import annotations

import json

import pytest

from conftest import call_tool

COMMON = ["data.val=2", "data.test=3", "data.batch_size=8", "data.num_workers=0", "train.epochs=1", "report.num_overlays=1"]
MASKRCNN = COMMON + ["model.min_size=96", "model.max_size=128", "model.detections_per_img=20"]
WATERSHED = COMMON + ["watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2"]


# Mask R-CNN's run (14 s: a 31M-parameter detector, built, trained, evaluated twice) is in the full tier; the fast
# tier keeps its contract tests (tests/test_contracts.py: a training step, predictions, evaluation)
@pytest.mark.parametrize("method, opts", [pytest.param("maskrcnn", MASKRCNN, marks=pytest.mark.slow),
                                          ("watershed", WATERSHED)])
def test_one_iteration_run_and_eval_only(method, opts, pennfudan_root, tmp_path, capsys):
    out = tmp_path / method
    code = call_tool("train_instance", ["--method", method, "--data-root", pennfudan_root, "--output-dir", out, "--opts", *opts])
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["train/loss"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for iou_type in ("bbox", "segm"):
            for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                assert f"{iou_type}/{stat}" in metrics[split]
    assert metrics["splits"] == {"train": 7, "val": 2, "test": 3}
    segm = json.loads((out / "results_test_segm.json").read_text())
    assert all("bbox" not in r and "segmentation" in r for r in segm)
    for name in ("report.md", "loss_curves.png", "overlays_test.png", "best.pt", "coco/instances_test.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "Mask AP (segm)" in report and "| test |" in report
    # the failure analysis: per image, TIDE's breakdown, calibration, the gallery, the HTML page
    rows = (out / "per_image_test.csv").read_text().splitlines()
    assert rows[0] == "image,image_id,ground_truth,detections,matched,false,missed,AP,AP50" and len(rows) == 1 + 3
    errors = metrics["test"]["errors/segm"]
    assert sum(errors["dAP_progressive"].values()) == pytest.approx(100 - errors["AP50"])
    assert "Where it fails (test)" in report and (out / "errors_test.png").is_file()
    assert len(list((out / "worst_test").glob("*.jpg"))) == 3 and (out / "report.html").is_file()

    ev = tmp_path / f"{method}_eval"
    assert call_tool("train_instance", ["--eval-only", "--checkpoint", out / "best.pt", "--output-dir", ev]) == 0
    again = json.loads((ev / "metrics.json").read_text())
    assert again["test"]["segm/AP"] == pytest.approx(metrics["test"]["segm/AP"])
    assert again["test"]["bbox/AP"] == pytest.approx(metrics["test"]["bbox/AP"])


def test_the_gallery_draws_the_final_evaluations_detections_without_predicting_again(pennfudan_root, tmp_path,
                                                                                      monkeypatch):
    """The worst images' pictures come from ``results_test_segm.json`` (the detections the analysis scored, here
    with test-time augmentation): the network is not run again while they are drawn."""
    from seg_ext.methods.base import Method
    from seg_ext.methods.watershed import WatershedMethod

    drawing, draw_worst, forward = [], Method.draw_worst, WatershedMethod.forward

    def counted_draw_worst(self, *args, **kwargs):
        drawing.append(True)
        try:
            return draw_worst(self, *args, **kwargs)
        finally:
            drawing.pop()

    def checked_forward(self, *args, **kwargs):
        assert not drawing, "the gallery ran the network again"
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Method, "draw_worst", counted_draw_worst)
    monkeypatch.setattr(WatershedMethod, "forward", checked_forward)
    out = tmp_path / "ws"
    assert call_tool("train_instance", ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", out,
                                        "--opts", *WATERSHED, "eval.tta=true", "data.max_images=3"]) == 0
    assert len(list((out / "worst_test").glob("*.jpg"))) == 3
    # (data.max_images: 3 training images of 7; the report says the split was cut)
    assert json.loads((out / "metrics.json").read_text())["splits"] == {"train": 3, "val": 2, "test": 3}
    assert "`data.max_images=3`: each split cut" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--method", "maskrcnn", "--oracle"], r"--oracle is for methods with an oracle \(watershed\)"),
        (["--method", "maskrcnn", "--opts", "model.backbone=resnet34_fpn"], r"'model\.backbone' is 'resnet34_fpn'; expected one of"),
        (["--method", "maskrcnn", "--opts", "model.weights=coco", "model.backbone=resnet18_fpn"], r"no COCO Mask R-CNN with resnet18_fpn"),
        (["--method", "watershed", "--opts", "watershed.input_size=[100,100]"], r"watershed\.input_size.*multiples of 16"),
        (["--method", "maskrcnn", "--opts", "data.format=coco"], r"holds no COCO instance file; expected annotations/\*\.json there, or the files named by data\.train_json"),
        (["--method", "watershed", "--opts", "data.format=coco", "data.train_json=t.json", "data.val_json=v.json",
          "data.splits_file=s.json"], r"'data\.splits_file' and 'data\.train_json' both give the split; expected one"),
        (["--method", "watershed", "--opts", "data.splits_file=/no/such/splits.json"], r"splits file /no/such/splits\.json does not exist"),
    ],
)
def test_bad_options_are_one_sentence(argv, pattern, pennfudan_root, tmp_path, capsys):
    if "--opts" not in argv:
        argv = argv + ["--opts"]
    code = call_tool("train_instance", argv + ["data.val=2", "data.test=3", "--data-root", pennfudan_root, "--output-dir", tmp_path / "o"])
    err = capsys.readouterr().err
    assert code == 2
    import re

    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err
