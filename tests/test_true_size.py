"""Photos at their true size (seg_ext.dense): EXIF orientation wherever an image is read, training at a chosen
scale on crops, whole-image and sliding-window prediction (agreement, window weights, memory-free of the image
size), odd but legal images in every mode, and the bad input of each part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import call_tool, run_tool_process
from seg_ext.data.files import image_size, read_image
from seg_ext.data.scale import Scale
from seg_ext.dense import DensePlan, edge_weights, predict_dense, window_starts
from seg_ext.errors import ConfigError, DatasetError

TINY = ["data.batch_size=4", "data.num_workers=0", "train.epochs=1", "model.base_width=4", "model.depth=2",
        "report.num_overlays=1"]
SCALE = ["data.resize=scale", "data.scale=0.5", "data.crop_size=[32,32]"]


# ---- EXIF orientation -------------------------------------------------------------------------------------

def _rotated_jpeg(path: Path, displayed: np.ndarray) -> None:
    """Save ``displayed`` (H, W, 3) as a JPEG stored turned by 90 degrees, with EXIF Orientation 6 ("rotate 90
    clockwise to show"), as a phone held upright writes it."""
    stored = np.rot90(displayed, 1)  # turned anticlockwise; Orientation 6 turns it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)


def _half_and_half(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose top half is red and bottom half blue as displayed, and the mask drawn on it (1 on top)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2, :, 0] = 220
    image[h // 2:, :, 2] = 220
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 1
    return image, mask


def test_exif_orientation_is_applied_where_images_are_read(tmp_path):
    image, _ = _half_and_half(40, 64)
    path = tmp_path / "phone.jpg"
    _rotated_jpeg(path, image)
    with Image.open(path) as stored:
        assert stored.size == (40, 64)  # stored turned: width 40, height 64
    assert image_size(path) == (40, 64)  # (H, W) as displayed
    read = read_image(path)
    assert read.shape == (40, 64, 3)
    assert read[:15, :, 0].mean() > 180 and read[-15:, :, 2].mean() > 180  # red on top, blue below: as shown


@pytest.mark.slow
def test_rotated_phone_jpegs_train_and_predict_at_the_displayed_size(tmp_path):
    """A folder dataset of EXIF-rotated JPEGs whose masks were drawn on the displayed images: training reads them
    without a size mismatch, and predict.py writes masks of the displayed size that match the drawn halves."""
    root = tmp_path / "phone"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ntop\n")
    for i in range(8):
        image, mask = _half_and_half(48, 80)
        _rotated_jpeg(root / "images" / f"p{i}.jpg", image)
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    run = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", root, "--output-dir", run, "--opts", *TINY, "train.epochs=30",
                                        "data.val=2", "data.test=2", "train.lr=0.02", "data.resize=scale",
                                        "data.scale=1.0", "data.crop_size=[32,32]"]) == 0
    out = tmp_path / "pred"
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", root / "images" / "p0.jpg",
                                 "--output-dir", out]) == 0
    labels = np.asarray(Image.open(out / "masks" / "p0.png"))
    assert labels.shape == (48, 80)
    truth = _half_and_half(48, 80)[1]
    assert (labels == truth).mean() > 0.9  # learnt on the displayed orientation (turned, it would be about half)


# ---- the training scale --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, size", [(0.5, (150, 200)), ("short:100", (100, 133)), ("long:100", (75, 100)),
                                         (2, (600, 800))])
def test_scale_keeps_the_aspect_ratio(value, size):
    assert Scale.parse(value).size(300, 400) == size
    assert Scale.parse(value).size(1, 1) >= (1, 1)


def test_a_scale_in_a_config_file_can_be_overridden_by_a_factor_and_back(tmp_path):
    from seg_ext.methods import method_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  resize: scale\n  scale: short:128\n")
    assert method_config("semantic", path, ["data.scale=0.5"])["data"]["scale"] == 0.5
    assert method_config("semantic", None, ["data.resize=scale", "data.scale=long:64"])["data"]["scale"] == "long:64"
    with pytest.raises(ConfigError, match="data.scale"):
        method_config("semantic", path, ["data.scale=true"])


@pytest.mark.parametrize("value", [0, -1, "short:", "side:100", "0.5x", True])
def test_bad_scale_is_one_sentence(value):
    with pytest.raises(ConfigError, match="data.scale"):
        Scale.parse(value)


def test_scaled_crops_are_padded_with_the_ignore_label_and_stay_in_sync():
    from seg_ext.data.transforms import build_scaled_transforms

    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = 200
    mask = np.zeros((20, 30), np.uint8)
    mask[:, 15:] = 1
    transform = build_scaled_transforms(Scale.parse(1.0), (32, 32), hflip_prob=0.5, fill_mask=255, normalize=False, seed=0)
    for seed in range(6):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32)
        padded = out["mask"] == 255
        assert padded.sum() == 32 * 32 - 20 * 30  # the crop is larger than the image: padded, nothing lost
        bright = out["image"][..., 0] == 200
        assert np.array_equal(bright, out["mask"] == 1)  # image and mask moved together (flip included)


def test_training_and_prediction_scale_an_image_to_the_same_pixels():
    """The claim that training crops and prediction see the same pixels: a crop as large as the scaled image,
    without flip or jitter, equals what prediction prepares (shrinking and enlarging)."""
    from seg_ext.data.transforms import build_scaled_transforms
    from seg_ext.dense import scaled_input

    image = np.random.default_rng(4).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    for value in ("short:45", 1.5):
        scale = Scale.parse(value)
        h, w = scale.size(90, 120)
        transform = build_scaled_transforms(scale, (h, w), hflip_prob=0.0, seed=0)
        trained = transform(image=image, mask=np.zeros((90, 120), np.uint8))["image"]
        assert torch.allclose(trained, scaled_input(image, scale), atol=1e-5), value


# ---- whole and sliding-window prediction ---------------------------------------------------------------------

def test_windows_cover_every_pixel_and_end_at_the_border():
    assert window_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert window_starts(20, 32, 16) == [0]
    weights = edge_weights(8, 6)
    assert weights.min() > 0 and weights[4, 3] == weights.max()


def test_slide_averages_to_the_whole_image_for_a_pointwise_network():
    """With a per-pixel network, every window predicts each pixel the same: the weighted average must give it back
    exactly, whatever the overlap; with a 3x3-conv network the two agree away from window borders."""
    torch.manual_seed(0)
    image = torch.randn(3, 45, 70)
    pointwise = torch.nn.Conv2d(3, 4, 1)
    fn = lambda x: torch.softmax(pointwise(x), 1)  # noqa: E731
    whole = predict_dense(fn, image, DensePlan("whole", Scale.parse(1.0), (16, 16), (8, 8)))
    for window, stride in [((16, 16), (8, 8)), ((16, 32), (5, 32)), ((64, 96), (64, 96))]:
        slide = predict_dense(fn, image, DensePlan("slide", Scale.parse(1.0), window, stride, batch=3))
        assert slide.shape == (4, 45, 70)
        assert torch.allclose(slide, whole, atol=1e-5)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, padding=1))
    fn = lambda x: torch.softmax(conv(x), 1)  # noqa: E731
    whole = predict_dense(fn, image, DensePlan("whole", Scale.parse(1.0), (16, 16), (8, 8), multiple=8))
    slide = predict_dense(fn, image, DensePlan("slide", Scale.parse(1.0), (32, 32), (16, 16)))
    assert (whole.argmax(0) == slide.argmax(0)).float().mean() > 0.97


def _predictor(method_name: str, cfg_overrides: list[str], classes: list[str]):
    from seg_ext.engine.precision import Precision
    from seg_ext.inference import Predictor
    from seg_ext.methods import build_method, method_config

    cfg = method_config(method_name, None, cfg_overrides)
    method = build_method(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = method.build_model(method.head_classes(classes)).eval()
    return Predictor(model, method, classes, Precision(torch.device("cpu")))


ODD_IMAGES = {
    "1x1": np.full((1, 1, 3), 90, np.uint8),
    "9x700 strip": np.random.default_rng(0).integers(0, 255, (9, 700, 3), dtype=np.uint8),
    "grayscale": np.random.default_rng(1).integers(0, 255, (50, 40), dtype=np.uint8),
}


@pytest.mark.parametrize("method, extra, classes", [
    ("semantic", ["data.image_size=[32,32]", "model.base_width=4", "model.depth=2"], ["a", "b", "c"]),
    ("watershed", ["watershed.input_size=[32,32]", "model.base_width=4", "model.depth=2"], ["person", "dog"]),
])
@pytest.mark.parametrize("mode", ["resize", "whole", "slide"])
def test_odd_but_legal_images_work_in_every_mode(method, extra, classes, mode, tmp_path):
    """1x1, a 9x700 strip, grayscale, RGBA and 16-bit files: predictions of each image's own size, with TTA too."""
    scale = [] if mode == "resize" else ["data.resize=scale", "data.scale=1.0", f"eval.mode={mode}", "eval.stride=[16,16]"]
    predictor = _predictor(method, [*extra, *scale], classes)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 45, 4), dtype=np.uint8), "RGBA").save(rgba)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 65535, (33, 21), dtype=np.uint16)).save(sixteen)
    inputs = [*ODD_IMAGES.values(), rgba, sixteen]
    sizes = [(1, 1), (9, 700), (50, 40), (30, 45), (33, 21)]
    for tta in (False, True):
        predictor.tta = tta
        for image, size in zip(inputs, sizes):
            result = predictor(image)
            key = "labels" if method == "semantic" else "instance_map"
            assert result[key].shape == size, (image if isinstance(image, Path) else image.shape, mode)


def test_sixteen_bit_images_keep_their_picture(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    read = read_image(tmp_path / "ramp.png")
    assert read.dtype == np.uint8 and read[..., 0].min() == 0 and read[..., 0].max() == round(63000 * 255 / 65535)


# ---- bad input -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opts, words", [
    (["eval.mode=slide"], "needs data.resize: scale"),
    ([*SCALE, "eval.mode=resize"], "expected eval.mode whole or slide"),
    ([*SCALE, "eval.mode=slide", "eval.window=[32,32]", "eval.stride=[48,16]"], "larger than the window"),
    (["data.resize=crop"], "data.resize"),
    (["data.resize=scale", "data.scale=fast"], "data.scale"),
    (["data.resize=scale", "data.scale=[1,2]"], "data.scale"),
])
def test_bad_resize_settings_are_one_sentence(opts, words, scenes_root, tmp_path, capsys):
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", tmp_path / "x", "--opts",
                                        *TINY, *opts]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_window_off_the_size_multiple_and_a_crop_too_large_are_refused(pennfudan_root, tmp_path, capsys):
    base = ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", tmp_path / "w", "--opts",
            *TINY, "data.val=2", "data.test=2", "watershed.input_size=[32,32]", "data.resize=scale", "data.scale=0.5"]
    # a ResNet encoder halves the size five times: windows in multiples of 32 (refused before training starts)
    assert call_tool("train_instance", [*base, "model.encoder=resnet18", "watershed.input_size=[64,64]", "data.scale=1.0", "eval.mode=slide",
                                        "eval.window=[48,48]"]) == 2
    err = capsys.readouterr().err
    assert "'eval.window' is [48, 48]; expected a multiple of 32" in err and "epoch" not in err
    assert call_tool("train_instance", [*base, "data.crop_size=[512,512]"]) == 2
    err = capsys.readouterr().err
    assert "data.crop_size" in err and "largest scaled image" in err and len(err.strip().splitlines()) == 1
    assert call_tool("train_instance", ["--method", "maskrcnn", "--data-root", pennfudan_root, "--output-dir",
                                        tmp_path / "m", "--opts", "data.resize=scale"]) == 2
    assert "Mask R-CNN scales images itself" in capsys.readouterr().err


def test_decompression_bombs_and_truncated_jpegs_are_named(tmp_path, monkeypatch):
    good = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(good).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4800 pixels is "over the limit" now
    with pytest.raises(DatasetError, match=r"big\.png is over PIL's decompression-bomb limit of 1,000 pixels"):
        read_image(tmp_path / "big.png")
    monkeypatch.undo()
    Image.fromarray(good).save(tmp_path / "photo.jpg", quality=90)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.jpg \(truncated or damaged\)"):
        read_image(tmp_path / "cut.jpg")


@pytest.mark.slow
def test_predict_skips_a_truncated_jpeg_and_a_bomb_with_exit_1(scenes_root, tmp_path):
    """A real predict process with loader workers: the two bad files are named, the good one is written."""
    run = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", run, "--opts", *TINY,
                                        "data.image_size=[32,32]"]) == 0
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(good).save(inputs / "good.jpg", quality=90)
    data = (inputs / "good.jpg").read_bytes()
    (inputs / "cut.jpg").write_bytes(data[: len(data) // 2])
    # a PNG whose header claims 20000 x 20000 pixels (400 M, over twice PIL's limit): refused before decoding
    bomb = Image.new("1", (20000, 20000))
    bomb.save(inputs / "bomb.png")
    proc = run_tool_process("predict", ["--checkpoint", run / "best.pt", "--input", inputs, "--output-dir",
                                        tmp_path / "out", "--num-workers", "2"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "cut.jpg (truncated or damaged)" in proc.stderr and "bomb.png is over PIL's decompression-bomb" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "masks" / "good.png").is_file()
    failed = json.loads((tmp_path / "out" / "predictions.json").read_text())["failed"]
    assert sorted(Path(f).name for f in failed) == ["bomb.png", "cut.jpg"]


# ---- trained at a scale: evaluation, predict.py, ONNX ----------------------------------------------------------

@pytest.fixture(scope="module")
def scaled_semantic_run(scenes_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scaled") / "semantic"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *TINY,
                                        "train.epochs=2", "data.resize=scale", "data.scale=1.0", "data.crop_size=[48,48]",
                                        "eval.mode=slide", "eval.stride=[16,16]"]) == 0
    return out


@pytest.fixture(scope="module")
def scaled_watershed_run(pennfudan_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scaled") / "watershed"
    assert call_tool("train_instance", ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", out,
                                        "--opts", *TINY, "train.epochs=2", "data.val=2", "data.test=4",
                                        "watershed.input_size=[64,64]", "data.resize=scale", "data.scale=0.75"]) == 0
    return out


@pytest.mark.slow
def test_a_run_at_a_scale_records_it_and_predicts_at_the_image_size(scaled_semantic_run, scenes_root, tmp_path):
    """The checkpoint carries the scale and mode: predict.py needs no flag, and its masks reproduce the run's test
    mIoU (the evaluation and prediction run the same whole/slide path)."""
    from test_predict import _mean_iou

    metrics = json.loads((scaled_semantic_run / "metrics.json").read_text())
    ids = json.loads((scaled_semantic_run / "splits.json").read_text())["test"]
    files = [scenes_root / "images" / f"{i}.png" for i in ids]
    out = tmp_path / "pred"
    assert call_tool("predict", ["--checkpoint", scaled_semantic_run / "best.pt", "--input", *files, "--output-dir", out,
                                 "--num-workers", "2"]) == 0
    pairs = []
    for i in ids:
        truth = np.asarray(Image.open(scenes_root / "masks" / f"{i}.png"))
        pred = np.asarray(Image.open(out / "masks" / f"{i}.png"))
        assert pred.shape == truth.shape == (64, 80)
        pairs.append((truth, pred))
    assert _mean_iou(pairs, 9) == pytest.approx(metrics["test"]["mIoU"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic, mode", [(False, "slide"), (True, "whole")])
def test_onnx_runs_slide_on_a_fixed_export_and_whole_on_a_dynamic_one(scaled_semantic_run, scenes_root, tmp_path,
                                                                      dynamic, mode):
    from seg_ext.inference import Predictor

    ckpt = scaled_semantic_run / "best.pt"
    onnx = tmp_path / "m.onnx"
    assert call_tool("export", ["--checkpoint", ckpt, "--output", onnx, *(["--dynamic"] if dynamic else [])]) == 0
    image = scenes_root / "images" / sorted(p.name for p in (scenes_root / "images").iterdir())[0]
    torch_labels = Predictor.from_checkpoint(ckpt, device="cpu", opts=[f"eval.mode={mode}"])(image)["labels"]
    onnx_labels = Predictor.from_checkpoint(ckpt, device="cpu", onnx=onnx, opts=[f"eval.mode={mode}"])(image)["labels"]
    assert (torch_labels == onnx_labels).mean() > 0.999
    if not dynamic:  # a fixed-size export cannot run each image whole: one sentence
        with pytest.raises(Exception, match="takes one input size only"):
            Predictor.from_checkpoint(ckpt, device="cpu", onnx=onnx, opts=["eval.mode=whole"])


@pytest.mark.slow
def test_watershed_whole_and_slide_merge_before_the_watershed(scaled_watershed_run, pennfudan_root, tmp_path, capsys):
    """The watershed trained on crops at a scale: evaluated and predicted whole; slide merges the windows' maps
    before the watershed, so the two agree on nearly every pixel (tools/compare_modes.py)."""
    metrics = json.loads((scaled_watershed_run / "metrics.json").read_text())
    assert "segm/AP" in metrics["test"]
    images = sorted((pennfudan_root / "PNGImages").iterdir())[:4]
    assert call_tool("compare_modes", ["--checkpoint", scaled_watershed_run / "best.pt", "--input", *images,
                                       "--b", "eval.mode=slide", "eval.window=[32,32]", "eval.stride=[16,16]",
                                       "--json", tmp_path / "agree.json"]) == 0
    agreement = json.loads((tmp_path / "agree.json").read_text())["agreement"]
    assert agreement > 0.9, capsys.readouterr().out
