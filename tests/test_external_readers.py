"""Pre-annotations opened by software nobody here wrote: the CVAT, COCO, VOC and YOLO folders read by Datumaro
and Roboflow's supervision (``tests/external/datumaro_counts.py``, in their own environment, named by
``SEG_EXT_DATUMARO_PYTHON``), with their counts of images, shapes and classes compared with what was written; a
LabelMe file opened by LabelMe itself on a virtual screen (``SEG_EXT_LABELME_BIN``: the bin folder of an
environment with ``pip install labelme``). Skipped, saying why, where those environments are not given: they
change pillow and opencv, so they stay out of the package's environment (docs/labelling.md says how to make them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, call_tool

EXTERNAL = ROOT / "tests" / "external"
SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "train.epochs=2",
            "model.base_width=4", "model.depth=2", "report.num_overlays=0"]
WATERSHED = ["data.val=2", "data.test=4", "data.batch_size=4", "data.num_workers=0", "train.epochs=2",
             "report.num_overlays=0", "watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2"]
FORMATS = ["labelme", "cvat", "coco", "yolo", "voc"]


def _predicted(task: str, root: Path, folder: Path) -> Path:
    tool, opts = ("train_semantic", SEMANTIC) if task == "semantic" else ("train_instance", ["--method", "watershed"])
    run = folder / "run"
    assert call_tool(tool, [*(opts if task == "instance" else []), "--data-root", root, "--output-dir", run, "--opts",
                            *(SEMANTIC if task == "semantic" else WATERSHED)]) == 0
    out = folder / "pred"
    assert call_tool("predict", ["--checkpoint", run / "best.pt", "--input", root / "PNGImages", "--output-dir", out,
                                 "--save-format", *FORMATS]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_datumaro_and_supervision_read_what_was_written(task, pennfudan_root, tmp_path):
    python = os.environ.get("SEG_EXT_DATUMARO_PYTHON")
    if not python:
        pytest.skip("SEG_EXT_DATUMARO_PYTHON is not set (a Python with datumaro and supervision; docs/labelling.md)")
    out = _predicted(task, pennfudan_root, tmp_path)
    done = subprocess.run([python, str(EXTERNAL / "datumaro_counts.py"), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    predictions = json.loads((out / "predictions.json").read_text())
    images, classes = len(predictions["images"]), predictions["classes"]
    objects = classes[1:] if task == "semantic" else classes  # Penn-Fudan's semantic class 0 is the background
    written = {  # the shapes each folder holds, counted in its own files
        "cvat": sum(1 for line in (out / "cvat" / "annotations.xml").read_text().splitlines()
                    if line.strip().startswith(("<polygon", "<mask"))),
        "coco": len(json.loads((out / "coco" / "annotations" / "instances_default.json").read_text())["annotations"]),
        "yolo": sum(len(p.read_text().splitlines()) for p in (out / "yolo" / "labels").glob("*.txt")),
    }
    assert written["cvat"] > 0, "nothing predicted: the comparison would be empty"
    for name in ("cvat", "coco", "yolo"):
        got = found[name]
        assert "error" not in got, (name, got)
        assert got["images"] == images and got["labels"] == objects, (name, got)
        shapes = sum(n for kind, n in got["annotations"].items() if kind in ("polygon", "mask"))
        assert shapes == written[name], (name, got, written)
    voc = found["voc"]
    assert "error" not in voc and voc["images"] == images and voc["labels"] == ["background", *objects], voc
    per_class = sum(len(set(np.unique(np.asarray(Image.open(p)))) - {255})
                    for p in (out / "voc" / "SegmentationClass").glob("*.png"))
    assert voc["annotations"].get("mask", 0) >= per_class, (voc, per_class)  # a mask per class present (and objects)


@pytest.mark.slow
def test_labelme_itself_opens_a_written_file(pennfudan_root, tmp_path):
    labelme = os.environ.get("SEG_EXT_LABELME_BIN")
    if not labelme:
        pytest.skip("SEG_EXT_LABELME_BIN is not set (the bin folder of an environment with labelme; docs/labelling.md)")
    for tool in ("Xvfb", "xdotool", "import"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian's xvfb, xdotool, imagemagick)")
    out = _predicted("instance", pennfudan_root, tmp_path)
    first = sorted((out / "labelme").glob("*.json"))[0]
    shot = tmp_path / "labelme.png"
    done = subprocess.run([str(EXTERNAL / "labelme_screenshot.sh"), labelme, str(first), str(out / "labelme" / "labels.txt"),
                           str(shot)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.std() > 10  # a window with the photo and its shapes, not a blank screen
