"""tools/predict.py, the Predictor API and tools/export.py on tiny trained runs: every output kind, the two
consistency properties (predicting a run's test images reproduces its test mIoU / mask AP), TTA, ONNX equality,
and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, call_tool, run_tool_process
from seg_ext.data.preannotate import SAVE_FORMATS

SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "train.epochs=2",
            "model.base_width=4", "model.depth=2", "report.num_overlays=1"]
INSTANCE = ["data.val=2", "data.test=4", "data.batch_size=4", "data.num_workers=0", "train.epochs=2", "report.num_overlays=1"]
WATERSHED = INSTANCE + ["watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2", "train.lr=0.01"]
MASKRCNN = INSTANCE + ["model.min_size=96", "model.max_size=128", "model.detections_per_img=20", "train.epochs=1"]


@pytest.fixture(scope="module")
def semantic_run(scenes_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "semantic"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *SEMANTIC]) == 0
    return out


@pytest.fixture(scope="module")
def watershed_run(pennfudan_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "watershed"
    assert call_tool("train_instance", ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", out,
                                        "--opts", *WATERSHED]) == 0
    return out


def _test_images(run: Path, root: Path) -> list[Path]:
    ids = json.loads((run / "splits.json").read_text())["test"]
    return [root / "images" / f"{i}.png" for i in ids]


def _coco_images(run: Path, root: Path, split: str = "test") -> list[Path]:
    gt = json.loads((run / "coco" / f"instances_{split}.json").read_text())
    return [root / image["file_name"] for image in gt["images"]]


def _mean_iou(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int, ignore: int = 255) -> float:
    from seg_ext.evaluation.semantic import iou_from_confusion

    confusion = np.zeros((classes, classes), np.int64)
    for truth, pred in pairs:
        valid = truth != ignore
        confusion += np.bincount(truth[valid].astype(np.int64) * classes + pred[valid], minlength=classes**2).reshape(classes, classes)
    return 100 * float(iou_from_confusion(confusion).mean())


def test_semantic_masks_at_image_size_reproduce_the_run_test_miou(semantic_run, scenes_root, tmp_path):
    files = _test_images(semantic_run, scenes_root)
    out = tmp_path / "pred"
    # real loader worker processes, as a user's run has
    assert call_tool("predict", ["--checkpoint", semantic_run / "best.pt", "--input", *files, "--output-dir", out,
                                 "--num-workers", "2", "--batch-size", "4"]) == 0
    classes = (scenes_root / "classes.txt").read_text().split()
    pairs = []
    for path in files:
        mask = Image.open(out / "masks" / f"{path.stem}.png")
        assert mask.mode == "P"  # class ids with the report's palette
        pred = np.asarray(mask)
        truth = np.asarray(Image.open(scenes_root / "masks" / path.name))
        assert pred.shape == truth.shape == np.asarray(Image.open(path)).shape[:2]  # 64x80, not the 64x64 network size
        assert pred.max() < len(classes)
        assert (out / "overlays" / f"{path.stem}.jpg").is_file()
        pairs.append((truth, pred))
    metrics = json.loads((semantic_run / "metrics.json").read_text())
    assert _mean_iou(pairs, len(classes)) == pytest.approx(metrics["test"]["mIoU"], abs=1e-9)
    entries = json.loads((out / "predictions.json").read_text())["images"]
    assert [e["name"] for e in entries] == [p.stem for p in files]
    assert all(e["size"] == [64, 80] and sum(e["class_share"].values()) == pytest.approx(1, abs=1e-4) for e in entries)
    assert "own size" in (semantic_run / "report.md").read_text()


def _csv(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path) as fh:
        return {row["image"]: row for row in csv.DictReader(fh)}


def test_predict_gt_scores_like_the_final_evaluation_and_names_images_without_masks(semantic_run, scenes_root, tmp_path, capsys):
    import shutil

    files = _test_images(semantic_run, scenes_root)
    gt = tmp_path / "gt"
    gt.mkdir()
    for path in files:
        shutil.copy(scenes_root / "masks" / path.name, gt / path.name)
    extra = scenes_root / "images" / "not_labelled.png"
    shutil.copy(files[0], tmp_path / "not_labelled.png")
    out = tmp_path / "pred"
    assert call_tool("predict", ["--checkpoint", semantic_run / "best.pt", "--input", *files, tmp_path / "not_labelled.png",
                                 "--gt", gt, "--output-dir", out, "--num-workers", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("not_labelled.png") == 1 and "1 input image(s) have no mask" in captured.err
    run = json.loads((semantic_run / "metrics.json").read_text())["test"]
    written = json.loads((out / "metrics.json").read_text())
    assert written["mIoU"] == pytest.approx(run["mIoU"], abs=1e-9) and written["mAP"] == pytest.approx(run["mAP"], abs=1e-9)
    ours, theirs = _csv(out / "per_image.csv"), _csv(semantic_run / "per_image_test.csv")
    assert set(ours) == set(theirs) == {p.stem for p in files}
    assert all(ours[k]["mIoU"] == theirs[k]["mIoU"] for k in ours)
    for name in ("confusion.png", "calibration.png", "per_image.png"):
        assert (out / name).is_file()
    assert not extra.exists()

    # a mask of another size: one sentence naming it, exit 2
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(gt / files[1].name)
    assert call_tool("predict", ["--checkpoint", semantic_run / "best.pt", "--input", *files, "--gt", gt,
                                 "--output-dir", tmp_path / "bad", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"mask file {gt / files[1].name} is 12x10 (W x H) but image" in err and "Traceback" not in err
    assert call_tool("predict", ["--checkpoint", semantic_run / "best.pt", "--input", *files, "--gt", tmp_path / "nothing",
                                 "--output-dir", tmp_path / "bad2"]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow  # 5-9 s: left to the full tier so that the fast one keeps to 90 s
def test_full_resolution_evaluation_scores_the_untouched_masks(semantic_run, tmp_path):
    """eval.full_resolution=false scores at the network's size (masks resized): a different number."""
    ev = tmp_path / "eval"
    assert call_tool("train_semantic", ["--eval-only", "--checkpoint", semantic_run / "best.pt", "--output-dir", ev,
                                        "--opts", "eval.full_resolution=false"]) == 0
    resized = json.loads((ev / "metrics.json").read_text())["test"]
    full = json.loads((semantic_run / "metrics.json").read_text())["test"]
    assert resized["mIoU"] != full["mIoU"]
    assert "masks resized" in (ev / "report.md").read_text()
    tta = tmp_path / "tta"
    assert call_tool("train_semantic", ["--eval-only", "--checkpoint", semantic_run / "best.pt", "--output-dir", tta,
                                        "--opts", "eval.tta=true"]) == 0
    assert json.loads((tta / "metrics.json").read_text())["test"]["mAP"] != full["mAP"]
    assert "test-time augmentation" in (tta / "report.md").read_text()


def test_predictor_api_and_tta(semantic_run, scenes_root):
    from seg_ext.inference import Predictor

    image = np.asarray(Image.open(_test_images(semantic_run, scenes_root)[0]).convert("RGB"))
    predictor = Predictor.from_checkpoint(semantic_run / "best.pt", device="cpu", opts=["train.amp=off"])
    out = predictor(image, probs=True)
    assert out["labels"].shape == image.shape[:2] and out["probs"].shape == (9, *image.shape[:2])
    np.testing.assert_allclose(out["probs"].sum(0), 1, atol=1e-5)
    assert (out["labels"] == out["probs"].argmax(0)).all()
    batch = predictor.predict_batch([image, image[:, ::-1].copy()])
    assert (batch[0]["labels"] == out["labels"]).all()
    # TTA averages the image and its mirror: the prediction of the mirrored image is the mirrored prediction
    tta = Predictor.from_checkpoint(semantic_run / "best.pt", device="cpu", tta=True, opts=["train.amp=off"])
    a, b = tta(image, probs=True)["probs"], tta(image[:, ::-1].copy(), probs=True)["probs"]
    np.testing.assert_allclose(a, b[:, :, ::-1], atol=1e-5)
    assert np.abs(a - out["probs"]).max() > 1e-4  # and it is not the plain prediction


def test_watershed_results_scored_by_evaluate_give_the_run_test_mask_ap(watershed_run, pennfudan_root, tmp_path, capsys):
    from pycocotools.coco import COCO

    files = _coco_images(watershed_run, pennfudan_root)
    gt = watershed_run / "coco" / "instances_test.json"
    out = tmp_path / "pred"
    train_image = _coco_images(watershed_run, pennfudan_root, "train")[0]  # not in the test file: predicted, not scored
    assert call_tool("predict", ["--checkpoint", watershed_run / "best.pt", "--input", *files, train_image,
                                 "--output-dir", out, "--coco-gt", gt, "--num-workers", "2", "--score-threshold", "0"]) == 0
    assert "not in" in capsys.readouterr().err and (out / "instances" / f"{train_image.stem}.png").is_file()
    run = json.loads((watershed_run / "metrics.json").read_text())["test"]
    written = json.loads((out / "metrics.json").read_text())
    assert written["segm/AP"] == pytest.approx(run["segm/AP"], abs=1e-9)
    assert written["bbox/AP"] == pytest.approx(run["bbox/AP"], abs=1e-9)
    # the same analysis as the run's final evaluation: per-image AP and the error breakdown (score-independent)
    ours, theirs = _csv(out / "per_image.csv"), _csv(watershed_run / "per_image_test.csv")
    assert set(ours) == set(theirs) and all(ours[k]["AP"] == theirs[k]["AP"] for k in ours)
    assert written["errors/segm"] == run["errors/segm"] and (out / "errors.png").is_file()
    assert call_tool("evaluate", ["--gt", gt, "--results", out / "results_segm.json", "--output", tmp_path / "m.json"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["segm/AP"] == pytest.approx(run["segm/AP"], abs=1e-9)
    coco = COCO(str(gt))
    for iou_type in ("segm", "bbox"):
        results = json.loads((out / f"results_{iou_type}.json").read_text())
        if results:
            coco.loadRes(results)  # loads in pycocotools
    entries = {e["name"]: e for e in json.loads((out / "predictions.json").read_text())["images"]}
    for path in files:
        ids = Image.open(out / "instances" / f"{path.stem}.png")
        assert ids.mode == "I;16"
        array = np.asarray(ids)
        assert array.shape == np.asarray(Image.open(path)).shape[:2]
        n = len(entries[path.stem]["instances"])
        assert set(np.unique(array)) <= set(range(n + 1))
        scores = [i["score"] for i in entries[path.stem]["instances"]]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_maskrcnn_outputs_and_refused_tta(pennfudan_root, tmp_path, capsys):
    run = tmp_path / "maskrcnn"
    assert call_tool("train_instance", ["--method", "maskrcnn", "--data-root", pennfudan_root, "--output-dir", run,
                                        "--opts", *MASKRCNN]) == 0
    files = _coco_images(run, pennfudan_root)
    out = tmp_path / "pred"
    # every image of the dataset, in other batches than the run's evaluation (batch 8 there): the test images'
    # detections do not depend on their batch, and only the ground truth's images are scored
    everything = sorted((pennfudan_root / "PNGImages").glob("*.png"))
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", pennfudan_root / "PNGImages",
                                 "--output-dir", out, "--batch-size", "5", "--coco-gt", run / "coco" / "instances_test.json",
                                 "--score-threshold", "0.05"]) == 0
    printed = capsys.readouterr()
    assert f"{len(everything) - len(files)} input image(s) are not in" in printed.err
    assert f"{len(files)} of {len(files)} ground-truth images" in printed.out
    run_metrics = json.loads((run / "metrics.json").read_text())["test"]
    predicted = json.loads((out / "metrics.json").read_text())
    for key in ("segm/AP", "bbox/AP"):
        assert predicted[key] == pytest.approx(run_metrics[key], abs=1e-9)
    for path in files:
        assert np.asarray(Image.open(out / "instances" / f"{path.stem}.png")).shape == np.asarray(Image.open(path)).shape[:2]
    capsys.readouterr()
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", files[0], "--output-dir", out, "--tta"]) == 2
    assert "test-time augmentation is not available for method maskrcnn" in capsys.readouterr().err

    # torchvision's ONNX path: one image size, batch 1, checked against PyTorch
    onnx = tmp_path / "maskrcnn.onnx"
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--output", onnx, "--image", files[0]]) == 0
    assert "largest difference from PyTorch" in capsys.readouterr().out
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--onnx", onnx, "--input", files[0],
                                 "--output-dir", tmp_path / "onnx_pred"]) == 0
    # an image of another size: refused in one sentence (torchvision's export has one size)
    size = np.asarray(Image.open(files[0])).shape[:2]
    other = next(p for p in sorted(pennfudan_root.glob("PNGImages/*.png")) if np.asarray(Image.open(p)).shape[:2] != size)
    capsys.readouterr()
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--onnx", onnx, "--input", other,
                                 "--output-dir", tmp_path / "onnx_other"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "images only" in err and len(err.splitlines()) == 1, err


@pytest.mark.slow  # 5-9 s: left to the full tier so that the fast one keeps to 90 s
def test_the_baseline_exports_at_its_training_size_only(scenes_root, tmp_path, capsys):
    run = tmp_path / "baseline"
    assert call_tool("train_semantic", ["--config", ROOT / "configs/semantic/baseline.yaml", "--data-root", scenes_root,
                                        "--output-dir", run, "--opts", "data.image_size=[64,64]", "data.num_workers=0",
                                        "report.num_overlays=0"]) == 0
    capsys.readouterr()
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--output", tmp_path / "b.onnx", "--dynamic"]) == 2
    err = capsys.readouterr().err.strip()
    assert "predicts at its training size 64x64 only" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.onnx").exists()
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--output", tmp_path / "b.onnx"]) == 0


@pytest.mark.slow  # 5-9 s: left to the full tier so that the fast one keeps to 90 s
@pytest.mark.parametrize("which", ["semantic", "watershed"])
def test_onnx_export_matches_pytorch(which, semantic_run, watershed_run, scenes_root, pennfudan_root, tmp_path, capsys):
    from seg_ext.inference import Predictor

    run = semantic_run if which == "semantic" else watershed_run
    image_path = _test_images(run, scenes_root)[0] if which == "semantic" else _coco_images(run, pennfudan_root)[0]
    onnx = tmp_path / "model.onnx"
    assert call_tool("export", ["--checkpoint", run / "best.pt", "--output", onnx, "--dynamic", "--image", image_path]) == 0
    printed = capsys.readouterr().out
    assert "dynamic height and width" in printed and "largest difference from PyTorch" in printed
    image = np.asarray(Image.open(image_path).convert("RGB"))
    fp32 = ["train.amp=off", "train.channels_last=false"]
    torch_predictor = Predictor.from_checkpoint(run / "best.pt", device="cpu", opts=fp32)
    onnx_predictor = Predictor.from_checkpoint(run / "best.pt", device="cpu", onnx=onnx)
    prepared = torch.stack([torch_predictor.prepare(image)] * 2)
    ours, theirs = torch_predictor.forward(prepared), onnx_predictor.forward(prepared)
    for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (ours, theirs))):
        assert (a is None) == (b is None)  # the watershed's class maps: None with one class
        if a is not None:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
    # and the dynamic graph runs at another size
    bigger = np.concatenate([image, image], axis=0)
    session = onnx_predictor.model.session
    x = torch.nn.functional.interpolate(prepared[:1], size=(96, 112), mode="bilinear")
    assert session.run(None, {"images": x.numpy()})[0].shape[-2:] == (96, 112)
    assert onnx_predictor(bigger)["labels" if which == "semantic" else "instance_map"].shape == bigger.shape[:2]
    # at odd sizes too, where the UNet pads its upsampled maps: the graph keeps that padding for every size
    odd = torch.nn.functional.interpolate(prepared, size=(97, 113), mode="bilinear")
    with torch.no_grad():
        expected = torch_predictor.model(odd)
    expected = [expected] if isinstance(expected, torch.Tensor) else [expected["foreground"], expected["energy"]]
    for want, got in zip(expected, session.run(None, {"images": odd.numpy()})):
        np.testing.assert_allclose(got, want.float().numpy(), atol=1e-4)


def test_bad_input_is_one_sentence(semantic_run, watershed_run, scenes_root, tmp_path, capsys):
    best = semantic_run / "best.pt"
    image = _test_images(semantic_run, scenes_root)[0]
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    semantic_onnx = tmp_path / "semantic.onnx"
    assert call_tool("export", ["--checkpoint", best, "--output", semantic_onnx, "--image", image]) == 0
    cases = [
        (["--checkpoint", not_ours, "--input", image], "is not a seg_ext checkpoint"),
        (["--checkpoint", tmp_path / "missing.pt", "--input", image], "does not exist"),
        (["--checkpoint", best, "--input", tmp_path / "nope.png"], "input path .* does not exist"),
        (["--checkpoint", best, "--input", tmp_path / "notes"], "holds no images"),
        (["--checkpoint", best, "--input", str(tmp_path / "empty" / "*.png")], "matches no image"),
        (["--checkpoint", watershed_run / "best.pt", "--input", image, "--onnx", semantic_onnx], "expected an export of this checkpoint"),
        (["--checkpoint", best, "--input", image, "--onnx", not_ours], "cannot load ONNX file"),
        (["--checkpoint", best, "--input", image, "--save-format", "masks", "labelmee"],
         "--save-format 'labelmee' is not a format predictions are written in; expected one or more of: masks, labelme"),
        (["--checkpoint", best, "--input", image, "--save-format", "coco", "--tolerance", "-1"], "--tolerance is -1"),
        (["--checkpoint", best, "--input", image, "--top", "0"], "--top is 0; expected 1 or more images"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert call_tool("predict", [*argv, "--output-dir", tmp_path / "out"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1, err
        import re

        assert re.search(message, err), (message, err)


@pytest.mark.parametrize("which", ["semantic", "watershed"])
def test_reading_and_writing_threads_write_the_serial_files_byte_for_byte(which, semantic_run, watershed_run, scenes_root,
                                                                          pennfudan_root, tmp_path):
    """The pipeline's overlap (3 reading threads, 3 writing threads, batches of 3 so several are in flight) writes
    exactly what one image after the other writes: every mask, instance map, overlay and the predictions."""
    from seg_ext.inference import Predictor
    from seg_ext.tasks.predict import predict_files

    run = semantic_run if which == "semantic" else watershed_run
    files = _test_images(run, scenes_root) if which == "semantic" else _coco_images(run, pennfudan_root)
    predictor = Predictor.from_checkpoint(run / "best.pt", device="cpu")
    for name, workers in (("serial", 0), ("overlap", 3)):
        predict_files(predictor, files, tmp_path / name, batch_size=3, num_workers=workers, writers=workers, progress=False,
                      save_formats=SAVE_FORMATS)
    serial = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    overlap = sorted(p.relative_to(tmp_path / "overlap") for p in (tmp_path / "overlap").rglob("*") if p.is_file())
    assert serial == overlap and len(serial) > 2 * len(files)
    for path in serial:
        a, b = (tmp_path / "serial" / path).read_bytes(), (tmp_path / "overlap" / path).read_bytes()
        if path.name == "predictions.json":  # the same entries, in the input order, but for the times
            strip = lambda d: [{k: v for k, v in e.items() if k != "seconds"} for e in json.loads(d)["images"]]  # noqa: E731
            assert strip(a) == strip(b)
            assert json.loads(a)["pre_annotations"] == json.loads(b)["pre_annotations"]
        else:
            assert a == b, path


@pytest.mark.parametrize("which", ["semantic", "watershed"])
def test_pre_annotations_read_back_give_the_predicted_masks(which, semantic_run, watershed_run, scenes_root, pennfudan_root,
                                                             tmp_path, capsys):
    """tools/predict.py --save-format with every format: each folder, found by the importers' own detection, reads
    back as the masks/ (or instances/) predict wrote, per image mean IoU >= 0.98, the classes in the model's order."""
    from test_preannotate import instance_agreement, read_instances, read_semantic, semantic_agreement

    run = semantic_run if which == "semantic" else watershed_run
    files = _test_images(run, scenes_root) if which == "semantic" else _coco_images(run, pennfudan_root)
    out = tmp_path / "pred"
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", *files, "--output-dir", out, "--save-format",
                                 *SAVE_FORMATS]) == 0
    printed = capsys.readouterr().out
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions["pre_annotations"]["formats"] == list(SAVE_FORMATS[1:])
    shapes = sum(e["shapes"] for e in predictions["images"])
    assert f"pre-annotations: {shapes} shape(s) in" in printed and shapes > 0
    classes = predictions["classes"]
    for name in SAVE_FORMATS[1:]:
        if which == "semantic":
            found, names, maps = read_semantic(out / name)
            # the scenes' class 0 (sky) is no background: every class gets shapes, read back after a background
            assert found == name and names[1:] == classes, (name, names)
            for path in files:
                predicted = np.asarray(Image.open(out / "masks" / f"{path.stem}.png")).astype(np.int64) + 1
                assert semantic_agreement(maps[path.stem], predicted, len(names)) >= 0.98, (name, path.name)
        else:
            found, names, read = read_instances(out / name)
            assert found == name and names == classes, (name, names)
            for entry in predictions["images"]:
                ids = np.asarray(Image.open(out / "instances" / f"{entry['name']}.png"))
                labels = np.array([classes.index(i["category"]) + 1 for i in entry["instances"]])
                masks, categories = read[entry["name"]]
                assert instance_agreement(masks, categories, ids, labels) >= 0.98, (name, entry["name"])


def test_uncertainty_measures():
    from seg_ext.evaluation.uncertainty import instance_uncertainty, semantic_uncertainty

    sure = torch.zeros(3, 4, 5)
    sure[1] = 1
    assert semantic_uncertainty(sure)["uncertainty"] == pytest.approx(0, abs=1e-5)
    uniform = semantic_uncertainty(torch.full((3, 4, 5), 1 / 3))
    assert uniform["mean_entropy"] == pytest.approx(1, abs=1e-5) and uniform["low_margin_share"] == 1
    close = torch.zeros(2, 2, 2)
    close[0], close[1] = 0.55, 0.45
    close[:, 0, 0] = torch.tensor([1.0, 0.0])
    assert semantic_uncertainty(close)["low_margin_share"] == 0.75
    masks = torch.zeros(3, 1, 6, 6)
    masks[0, 0, :3] = 0.95  # a sure mask
    masks[1, 0, 3:] = 0.6  # a soft one
    raw = {"scores": torch.tensor([0.97, 0.55, 0.4]), "masks": masks}
    got = instance_uncertainty(raw, score_threshold=0.5)
    assert got["near_threshold"] == 2 and got["soft_masks"] == 1  # 0.55 and 0.4 lie within 0.15 of 0.5
    assert got["uncertainty"] == pytest.approx(3 + (0.03 + 0.45) / 2, abs=1e-5)
    binary = instance_uncertainty({"scores": torch.tensor([0.9]), "masks": torch.ones(1, 6, 6, dtype=torch.uint8)}, 0.5)
    assert "soft_masks" not in binary and binary["uncertainty"] == pytest.approx(0.1, abs=1e-5)


@pytest.mark.parametrize("which", ["semantic", "watershed"])
def test_rank_lists_every_image_most_uncertain_first_and_top_writes_those_with_pre_annotations(
        which, semantic_run, watershed_run, scenes_root, pennfudan_root, tmp_path, capsys):
    run = semantic_run if which == "semantic" else watershed_run
    files = _test_images(run, scenes_root) if which == "semantic" else _coco_images(run, pennfudan_root)
    out = tmp_path / "next"
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", *files, "--output-dir", out, "--top", "2",
                                 "--save-format", "labelme"]) == 0
    assert f"the 2 most uncertain image(s) of {len(files)} (to_label_next.csv) -> {out / 'to_label_next'}" in capsys.readouterr().out
    rows = (out / "to_label_next.csv").read_text().splitlines()
    assert rows[0] == "rank,image,uncertainty,reasons" and len(rows) == 1 + len(files)
    values = [float(row.split(",")[2]) for row in rows[1:]]
    assert values == sorted(values, reverse=True)
    entries = {e["file"]: e for e in json.loads((out / "predictions.json").read_text())["images"]}
    top = [row.split(",")[1] for row in rows[1:3]]
    assert [entries[f]["uncertainty"]["uncertainty"] for f in top] == values[:2]
    chosen = json.loads((out / "to_label_next" / "predictions.json").read_text())["images"]
    assert [e["file"] for e in chosen] == top
    assert sorted(p.stem for p in (out / "to_label_next" / "labelme").glob("*.json")) == sorted(Path(f).stem for f in top)
    reason = "mean pixel entropy" if which == "semantic" else "detection(s) with a score within 0.15 of the threshold"
    assert reason in rows[1]


@pytest.mark.slow
def test_an_unreadable_image_is_named_and_the_rest_are_written(semantic_run, scenes_root, tmp_path):
    """A real tool process with reading threads: the broken file is named, every other image is written, exit 1."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    files = _test_images(semantic_run, scenes_root)
    for path in files:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    proc = run_tool_process("predict", ["--checkpoint", semantic_run / "best.pt", "--input", str(folder / "*.png"),
                                        "--output-dir", out, "--num-workers", "2"])
    assert proc.returncode == 1, proc.stderr
    assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(p.stem for p in files)
    assert json.loads((out / "predictions.json").read_text())["failed"] == [str(folder / "broken.png")]


@pytest.mark.slow  # 5-9 s: left to the full tier so that the fast one keeps to 90 s
def test_tune_postprocess_scores_each_setting_as_the_run_evaluates(pennfudan_root, semantic_run, tmp_path, capsys):
    # trained long enough to find some pedestrians (test mask AP above 0: the comparison below means something)
    watershed_run = tmp_path / "run"
    assert call_tool("train_instance", ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", watershed_run,
                                        "--opts", *WATERSHED, "model.base_width=8", "train.epochs=30"]) == 0
    out = tmp_path / "tune.md"
    assert call_tool("tune_postprocess", [watershed_run / "best.pt", watershed_run / "best.pt", "--grid",
                                          "watershed.split_dynamic=0,2", "watershed.full_resolution=false,true",
                                          "eval.mask_threshold=0.5", "--split", "test", "--output", out]) == 0
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["keys"] == ["watershed.split_dynamic", "watershed.full_resolution"]
    assert len(numbers["settings"]) == 4 and all(s["stats"]["test segm/AP"]["n"] == 2 for s in numbers["settings"])
    run = json.loads((watershed_run / "metrics.json").read_text())["test"]
    own = next(s for s in numbers["settings"] if s["values"] == {"watershed.split_dynamic": 0, "watershed.full_resolution": False})
    assert run["segm/AP"] > 0
    for name in ("segm/AP", "segm/AP50", "bbox/AP"):  # the run's own settings: its own test evaluation, exactly
        assert own["stats"][f"test {name}"]["mean"] == pytest.approx(run[name], abs=1e-9)
    assert "| 0 | False | 2 |" in out.read_text()
    # bad input: one sentence each, exit 2
    assert call_tool("tune_postprocess", [watershed_run / "best.pt", "--grid", "train.lr=0.1", "--output", out]) == 2
    assert "grid key 'train.lr' is not a post-processing setting" in capsys.readouterr().err
    assert call_tool("tune_postprocess", [semantic_run / "best.pt", "--grid", "eval.mask_threshold=0.5", "--output", out]) == 2
    assert "post-processing has settings (watershed)" in capsys.readouterr().err
