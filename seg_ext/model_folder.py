"""A model folder: a trained model as people share one (the layout of smp's ``save_pretrained``, timm and the
Hugging Face Hub): ``model.safetensors`` (the network's weights only), ``config.json`` (what a checkpoint holds
besides its training state: the method, the config, classes with their colours, the input scale, evaluation mode and
normalisation, the post-processing settings, the package version) and ``README.md``, a model card built from the
run's ``metrics.json`` and ``report.md``; optionally ``model.onnx``.

Every tool that takes a checkpoint takes the folder in its place (``seg_ext.engine.load_model_folder`` reads it
back as the checkpoint it came from), ``Predictor.from_pretrained(folder)`` and ``tools/predict.py --model
FOLDER`` among them. Nothing in it runs code: safetensors and JSON. The folder uploads to the Hub as it is
(``huggingface_hub.upload_folder``); a local snapshot of such a repository loads like any other folder.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from seg_ext import __version__
from seg_ext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg_ext.engine import MODEL_FOLDER, MODEL_FOLDER_VERSION, TRAINING_STATE
from seg_ext.errors import SegExtError
from seg_ext.inference import model_from_checkpoint
from seg_ext.io import to_jsonable
from seg_ext.visualize import palette

#: the run report's sections a model card keeps (by the start of their heading), as text: its figures stay behind
CARD_SECTIONS = ("Results", "Mask AP", "Box AP", "Per class", "Where it fails", "Calibration")


def export_folder(checkpoint: str | Path, output: str | Path, onnx: bool = False, dynamic: bool = False,
                  image: str | Path | None = None, opset: int = 18) -> dict[str, Any]:
    """Write the model folder of ``checkpoint`` (a run's best.pt or last.pt) to ``output``, a new folder or an
    earlier model folder (replaced whole); with ``onnx``, also ``model.onnx`` (checked as ``tools/export.py``
    checks it). Written beside ``output`` first, so a failed export leaves nothing half-written.

    Returns:
        The folder, its files and the ONNX export's report (when asked for).
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not (output.is_dir() and (not any(output.iterdir()) or (output / "config.json").is_file())):
        raise SegExtError(f"--output {output} exists and is not a model folder; expected a new folder, or one that "
                          "tools/export.py --format folder wrote (it is replaced)")
    if checkpoint.is_dir():
        raise SegExtError(f"--checkpoint {checkpoint} is already a model folder; expected a run's best.pt or last.pt")
    model, method, ckpt = model_from_checkpoint(checkpoint, torch.device("cpu"))
    info = folder_config(ckpt.content, method, ckpt.class_names)  # the checkpoint as read once, above
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()},
                  str(staging / "model.safetensors"), metadata={"format": "pt", "seg_ext": __version__})
        (staging / "config.json").write_text(json.dumps(info, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(checkpoint, info, output.name))
        report = None
        if onnx:
            from seg_ext.export import export_onnx

            report = export_onnx(checkpoint, staging / "model.onnx", dynamic=dynamic, image=image, opset=opset)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
        if report is not None:
            report["output"] = str(output / "model.onnx")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"output": str(output), "files": sorted(p.name for p in output.iterdir()), "onnx": report}


def folder_config(content: dict[str, Any], method: Any, class_names: list[str]) -> dict[str, Any]:
    """``config.json``: the facts a reader needs up front, then the checkpoint without its weights and training
    state (what :func:`seg_ext.engine.load_model_folder` turns back into the checkpoint)."""
    cfg = method.cfg
    colours = palette(len(class_names) + (1 if method.task == "instance" else 0)).tolist()
    if method.task == "instance":  # category k is model label k; 0 the background
        colours = colours[1:]
    facts = {k: v for k, v in content.items() if k not in ("model", *TRAINING_STATE)}
    return to_jsonable({
        "format": MODEL_FOLDER,
        "format_version": MODEL_FOLDER_VERSION,
        "package_version": __version__,
        "task": method.task,
        "method": method.name,
        "model": cfg["model"]["name"],
        "classes": [{"name": name, "colour": "#%02x%02x%02x" % tuple(colour)} for name, colour in zip(class_names, colours)],
        "input": {"resize": cfg["data"].get("resize", "squash"), "scale": cfg["data"].get("scale"),
                  "size": list(method.input_size) if method.input_size else None,
                  "eval_mode": cfg.get("eval", {}).get("mode"), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "channels": "RGB", "range": "0-1 before the normalisation"},
        "postprocess": {key: cfg[key] for key in ("watershed", "eval") if key in cfg},
        "checkpoint": facts,
    })


def model_card(checkpoint: Path, info: dict[str, Any], name: str) -> str:
    """``README.md``: what the model is, how to load it, how it was trained and how it scored (the run's report's
    text where it lies beside the checkpoint), and its limits."""
    run = checkpoint.parent
    classes = ", ".join(c["name"] for c in info["classes"])
    how = info["model"] if info["method"] == info["task"] else f"{info['method']}, {info['model']}"
    lines = [f"# {name}: {info['task']} segmentation ({how})", "",
             f"A seg_ext {info['package_version']} model: {info['task']} segmentation of {len(info['classes'])} "
             f"classes ({classes}), from `{checkpoint}`. `model.safetensors` holds the weights, `config.json` the "
             "method, config, classes (with their colours in the masks), input preparation and post-processing.", "",
             "## Use", "", "```bash", f"python tools/predict.py --model {name} --input photo.jpg --output-dir out", "```",
             "", "```python", "from seg_ext.inference import Predictor", "",
             f'predictor = Predictor.from_pretrained("{name}")', 'out = predictor("photo.jpg")', "```", "",
             "Input: an RGB image of any size; it is prepared as `config.json`'s `input` says (resize "
             f"`{info['input']['resize']}`, scale `{info['input']['scale']}`, ImageNet mean and standard deviation), "
             "and the outputs come back at the image's own size.", ""]
    report = run / "report.md"
    if report.is_file():
        text = report.read_text()
        bullets = [line for line in text.split("\n## ", 1)[0].splitlines() if line.startswith("- ")]
        lines += ["## Training", "", *bullets, ""]
        for section in re.split(r"\n(?=## )", text)[1:]:
            heading = section.splitlines()[0][3:]
            if heading.startswith(CARD_SECTIONS):
                kept = [line for line in section.splitlines()  # text only: no figure, link or figure caption
                        if "![" not in line and "](" not in line and not re.fullmatch(r"\*[^*].*\*", line.strip())]
                lines += [*kept, ""]
    else:
        lines += ["## Training", "", f"The run's report was not beside the checkpoint ({report}); see its run folder "
                  "for the metrics.", ""]
    metrics = _read_metrics(run / "metrics.json")
    lines += ["## Limitations", "",
              f"- Trained on {_split_text(metrics)}; its numbers hold for images like those, not for other cameras, "
              "scenes or classes. Small test splits move by several points from seed to seed.",
              "- The classes are exactly those above: anything else is background (or the nearest class).",
              "- The scores above are the run's own evaluation; `tools/predict.py --model ... "
              + ("--gt MASK_FOLDER" if info["task"] == "semantic" else "--coco-gt COCO_FILE")
              + "` scores it on your images.", ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _split_text(metrics: dict[str, Any]) -> str:
    splits = metrics.get("splits")
    if not isinstance(splits, dict):
        return "the run's data (its split sizes were not found)"
    rest = ", ".join(f"{s} {n}" for s, n in splits.items() if s != "train")
    return f"{splits.get('train', '?')} images ({rest} more to choose and score it)"

