"""tools/train_semantic.py end to end on tiny synthetic data: train, report, resume, eval-only, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, call_tool, run_tool_process, write_folder_dataset

FAST = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "train.epochs=1",
        "model.base_width=4", "model.depth=2", "report.num_overlays=2"]


@pytest.mark.slow  # 5-9 s: left to the full tier so that the fast one keeps to 90 s
def test_one_epoch_run_writes_everything_then_resume_and_eval_only(scenes_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *FAST])
    assert code == 0
    for name in ("config.yaml", "splits.json", "metrics.jsonl", "metrics.json", "report.md", "last.pt", "best.pt",
                 "loss_curves.png", "confusion_test.png", "confusion_val.png", "overlays_test.png", "log.txt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("mIoU", "mAP", "fwIoU", "pixel_acc", "mean_acc", "IoU/sky", "AP/sky", "loss"):
            assert key in metrics[split]
        assert 0 <= metrics[split]["mIoU"] <= 100
    assert metrics["splits"] == {"train": 8, "val": 4, "test": 4}
    report = (out / "report.md").read_text()
    assert "| test |" in report and "confusion_test.png" in report and "loss_curves.png" in report
    assert "report:" in capsys.readouterr().out
    # the failure analysis: every test image scored on its own, the worst drawn, calibration, the HTML page
    rows = (out / "per_image_test.csv").read_text().splitlines()
    assert rows[0].startswith("image,pixels,mIoU,pixel_acc,IoU/") and len(rows) == 1 + 4
    worst = metrics["test"]["per_image"]["worst"]
    assert len(worst) == 4 and [w["mIoU"] for w in worst] == sorted(w["mIoU"] for w in worst)
    assert metrics["test"]["per_image"]["median"]["image"] in {w["image"] for w in worst}
    assert 0 <= metrics["test"]["calibration"]["ece"] <= 100
    assert sum(metrics["test"]["calibration"]["count"]) == worst[0]["pixels"] * 4  # the synthetic images are alike
    assert len(list((out / "worst_test").glob("*.jpg"))) == 4 and (out / "calibration_test.png").is_file()
    page = (out / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 and "data:image/png;base64," in page and "<table class=\"sortable\">" in page
    assert "src=\"worst_test" not in page and "http" not in page.split("<body>")[1]  # self-contained

    # running again into the same folder would overwrite it: refused
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err

    # continue to 2 epochs
    assert call_tool("train_semantic", ["--output-dir", out, "--resume", "--opts", "train.epochs=2"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]

    # evaluate the best checkpoint alone: the same test numbers as the run reported
    final = json.loads((out / "metrics.json").read_text())
    ev = tmp_path / "eval"
    assert call_tool("train_semantic", ["--eval-only", "--checkpoint", out / "best.pt", "--output-dir", ev]) == 0
    again = json.loads((ev / "metrics.json").read_text())
    assert again["test"]["mIoU"] == pytest.approx(final["test"]["mIoU"])
    assert again["test"]["mAP"] == pytest.approx(final["test"]["mAP"])


@pytest.mark.slow  # a whole evaluation of the initial weights, ~5 s: the full tier (the fast tier keeps under 90 s)
def test_zero_epochs_evaluates_the_initial_weights_and_keeps_them(scenes_root, tmp_path, capsys):
    import torch

    from seg_ext.models import build_model

    out = tmp_path / "run"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *FAST,
                                        "train.epochs=0"]) == 0
    assert "evaluating best.pt (the initial weights: train.epochs is 0)" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "mIoU" in metrics["test"] and not (out / "metrics.jsonl").exists()
    weights = torch.load(out / "best.pt", weights_only=True)["model"]
    assert set(weights) == set(build_model({"name": "unet", "base_width": 4, "depth": 2}, num_classes=9).state_dict())
    # and the run continues from them
    assert call_tool("train_semantic", ["--output-dir", out, "--resume", "--opts", "train.epochs=1"]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_weights_and_refuses_another_network(scenes_root, pennfudan_root, tmp_path,
                                                                                   capsys):
    """Run B from run A's best.pt with 0 epochs scores exactly A's test mIoU (the weights were loaded, the config
    and split are A's); with training it records where it started; another network, task or class list is refused."""
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    # deterministic kernels (the runs after inherit the config): with CUDA visible the two evaluations of the same
    # weights would otherwise be free to pick different cuDNN algorithms, and the exact comparison to differ
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", first, "--opts", *FAST,
                                        "train.deterministic=true"]) == 0
    best = first / "best.pt"
    assert call_tool("train_semantic", ["--init-from", best, "--output-dir", second, "--opts", "train.epochs=0"]) == 0
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (first, second))
    assert b["test"]["mIoU"] == pytest.approx(a["test"]["mIoU"], abs=1e-9) and b["init_from"] == str(best)
    assert call_tool("train_semantic", ["--init-from", best, "--output-dir", third, "--opts", "train.epochs=1",
                                        "train.lr=0.002"]) == 0
    c = json.loads((third / "metrics.json").read_text())
    assert c["init_from"] == str(best) and c["epochs"] == 1
    assert f"started from the weights of `{best}` (--init-from)" in (third / "report.md").read_text()
    capsys.readouterr()
    cases = [
        (["--opts", "model.base_width=8"], "was trained with model.base_width = 4, but --opts sets 8"),
        (["--resume"], "--init-from starts a new run .* does not go with --resume"),
        (["--data-root", pennfudan_root], r"was trained on classes \['sky'"),
    ]
    for argv, message in cases:
        assert call_tool("train_semantic", ["--init-from", best, "--output-dir", tmp_path / "d", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error:") and re.search(message, err), (message, err)
    assert call_tool("train_instance", ["--init-from", best, "--output-dir", tmp_path / "e"]) == 2
    assert re.search("is from a semantic run .* expected one of the instance task", capsys.readouterr().err)


def test_baseline_runs_through_the_same_evaluation(scenes_root, tmp_path):
    out = tmp_path / "baseline"
    code = call_tool("train_semantic", ["--config", ROOT / "configs/semantic/baseline.yaml", "--data-root", scenes_root,
                                        "--output-dir", out, "--opts", "data.image_size=[64,64]", "data.num_workers=0"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["mIoU"] > 100 / 9  # above chance: sky is on top, ground below
    assert "fitted by counting" in (out / "report.md").read_text()


@pytest.mark.slow  # three tool runs (the cut itself: test_data_semantic.py, fast)
def test_max_images_trains_and_scores_the_first_images_and_the_report_says_so(scenes_root, tmp_path):
    out = tmp_path / "quick"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *FAST,
                                        "data.max_images=2"]) == 0
    splits = json.loads((out / "splits.json").read_text())
    assert {s: len(ids) for s, ids in splits.items()} == {"train": 2, "val": 2, "test": 2}
    assert json.loads((out / "metrics.json").read_text())["splits"] == {"train": 2, "val": 2, "test": 2}
    assert "`data.max_images=2`: each split cut to its first 2 images" in (out / "report.md").read_text()
    # a resume and an evaluation of the checkpoint keep the run's cut (the docs' tests shorten trainings so)
    assert call_tool("train_semantic", ["--resume", "--output-dir", out, "--opts", "train.epochs=2"]) == 0
    ev = tmp_path / "eval"
    assert call_tool("train_semantic", ["--eval-only", "--checkpoint", out / "best.pt", "--output-dir", ev]) == 0
    for run in (out, ev):
        assert json.loads((run / "metrics.json").read_text())["splits"] == {"train": 2, "val": 2, "test": 2}, run


# ---- bad input: one line on stderr naming the file or key, exit code 2, no traceback ----


def _bad_dataset(tmp_path, kind):
    masks = [np.zeros((16, 16), np.uint8) for _ in range(6)]
    root = write_folder_dataset(tmp_path / kind, masks, ["a", "b"])
    if kind == "no_mask":
        (root / "masks" / "im003.png").unlink()
    elif kind == "size":
        Image.fromarray(np.zeros((16, 17), np.uint8)).save(root / "masks" / "im003.png")
    elif kind == "label":
        bad = np.zeros((16, 16), np.uint8)
        bad[3, 3] = 9
        for i in range(6):
            Image.fromarray(bad).save(root / "masks" / f"im00{i}.png")
    elif kind == "unreadable":
        (root / "images" / "im003.png").write_bytes(b"\x89PNG broken")
    return root


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", r"dataset folder .*missing does not exist"),
        ("layout", r"dataset folder .*layout has no recognised layout for semantic segmentation; expected .*images/ \+ masks/"),
        ("no_mask", r"image .*im003\.png has no mask; expected .*masks/im003\.png"),
        ("size", r"mask .*im003\.png is 17x16 but image .*im003\.png is 16x16; expected the same size"),
        ("label", r"mask file .*\.png contains label value 9; expected class ids 0\.\.1 or the ignore index 255"),
        ("unreadable", r"cannot read image file .*im003\.png \(\w+\); expected a PNG or JPEG image"),
        ("config_key", r"unknown config key 'train\.epoch' in --opts; valid keys here are: .*epochs"),
        ("model_key", r"config key 'model\.depht' is not an argument of model 'unet'"),
        ("smp_crop", r"config key 'data\.crop_size' is \[48, 48\]; the smp UNet needs .* multiples of 32"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(case, pattern, tmp_path, scenes_root, capsys):
    opts = list(FAST)
    if case == "missing":
        root = tmp_path / "missing"
    elif case == "layout":
        root = tmp_path / "layout"
        (root / "somewhere").mkdir(parents=True)
    elif case == "config_key":
        root, opts = scenes_root, opts + ["train.epoch=3"]
    elif case == "model_key":
        root, opts = scenes_root, opts + ["model.depht=3"]
    elif case == "smp_crop":  # the network trains at the crop: the crop is what is off the encoder's multiple
        root, opts = scenes_root, opts + ["model.name=smp_unet", "model.encoder_weights=null", "data.resize=scale",
                                          "data.crop_size=[48,48]"]
    else:
        root = _bad_dataset(tmp_path, case)
    code = call_tool("train_semantic", ["--data-root", root, "--output-dir", tmp_path / "out", "--opts", *opts])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


@pytest.mark.slow
def test_error_inside_a_loader_worker_is_still_one_line(tmp_path):
    """A bad label found by a DataLoader worker process comes back wrapped; the tool still prints one sentence."""
    root = _bad_dataset(tmp_path, "label")
    proc = run_tool_process("train_semantic", ["--data-root", root, "--output-dir", tmp_path / "out", "--opts",
                                               *[o for o in FAST if "num_workers" not in o], "data.num_workers=2"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "contains label value 9; expected class ids 0..1 or the ignore index 255" in error_lines[0]
    assert "Original Traceback" not in error_lines[0]


def test_show_augmentations_writes_a_grid(scenes_root, tmp_path):
    out = tmp_path / "aug.png"
    code = call_tool("show_augmentations", ["--data-root", scenes_root, "--output", out, "--num-images", "2",
                                            "--per-image", "2", "--opts", "data.image_size=[64,64]"])
    assert code == 0
    from PIL import Image

    assert Image.open(out).size[0] > 300  # 2 rows of 3 panels


def test_show_augmentations_at_a_scale_shows_the_scaled_image_then_the_crops(scenes_root, tmp_path):
    out = tmp_path / "aug_scale.png"
    assert call_tool("show_augmentations", ["--data-root", scenes_root, "--output", out, "--num-images", "1",
                                            "--per-image", "2", "--opts", "data.resize=scale", "data.scale=0.75",
                                            "data.crop_size=[32,32]"]) == 0
    from PIL import Image

    assert Image.open(out).size[0] > 200
