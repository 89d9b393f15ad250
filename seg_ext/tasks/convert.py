"""Convert a dataset of any format in the table into one of the standard layouts, for use elsewhere
(``tools/convert.py``):

* ``coco``: ``annotations/instances_<split>.json`` (one per split the dataset has; ``instances_all.json`` for a
  dataset without its own split) and the images under ``images/``: every instance with an RLE mask, its area, a
  tight box; crowd regions as ``iscrowd`` 1.
* ``masks``: the plain folder format: ``images/``, ``masks/<id>.png`` (uint8 class ids, 255 ignore),
  ``classes.txt`` and, where the dataset has its own split, ``train.txt`` / ``val.txt`` / ``test.txt``.

Both read back with ``--data-root OUT`` (COCO files and the plain folder are formats of the table too).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seg_ext.data.base import SPLITS, instances_to_coco
from seg_ext.data.files import image_size
from seg_ext.data.formats import find_format, get_format
from seg_ext.errors import SegExtError
from seg_ext.io import check_output_folder

logger = logging.getLogger(__name__)

TARGETS = {"coco": "instance", "masks": "semantic"}


def _safe(image_id: str) -> str:
    """An image id as a file stem (ids of subsets, ``Train/img0``, keep their subset)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", image_id).strip("_") or "image"


def convert(data_root: str | Path, output_dir: str | Path, to: str, source_format: str = "auto") -> dict[str, Any]:
    """Write the dataset at ``data_root`` (format ``source_format``, or recognised from the layout) into
    ``output_dir`` in the layout ``to``; return what was written (images and instances or classes per split).

    Raises:
        SegExtError: an unknown target, a format that does not hold what the target needs, a bad dataset, or an
            output folder that already holds files.
    """
    if to not in TARGETS:
        raise SegExtError(f"--to is {to!r}; expected one of: {', '.join(TARGETS)}")
    root, output_dir = Path(data_root).expanduser(), Path(output_dir)
    check_output_folder(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise SegExtError(f"--output-dir {output_dir} is not empty; expected a new folder for the converted dataset")
    task = TARGETS[to]
    fmt = find_format(root, "auto", task) if source_format == "auto" else get_format(source_format, task)
    logger.info("%s: format %s -> %s", root, fmt.name, to)
    return (_to_coco if to == "coco" else _to_masks)(fmt, root, output_dir)


def _copy_image(path: Path, output_dir: Path, stem: str) -> str:
    target = output_dir / "images" / f"{stem}{path.suffix.lower()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target.relative_to(output_dir).as_posix()


def _to_coco(fmt: Any, root: Path, output_dir: Path) -> dict[str, Any]:
    source = fmt.instance_source(root)
    if source.splits:
        coco = {s: d for s, d in instances_to_coco(source, splits=source.splits).items() if d["images"] or s == "train"}
    else:
        coco = {"all": instances_to_coco(source, splits={"train": list(source.items)})["train"]}
    summary: dict[str, Any] = {"format": fmt.name, "to": "coco", "splits": {}}
    names = {number: _safe(image_id) for number, image_id in enumerate(source.items, start=1)}
    paths = {number: path for number, path in enumerate(source.items.values(), start=1)}
    (output_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split, data in coco.items():
        for image in data["images"]:
            image["file_name"] = _copy_image(paths[image["id"]], output_dir, names[image["id"]])
        data["info"]["description"] = f"{source.title} ({split}), converted by seg_ext from format {fmt.name}"
        path = output_dir / "annotations" / f"instances_{split}.json"
        path.write_text(json.dumps(data))
        summary["splits"][split] = {"images": len(data["images"]), "instances": len(data["annotations"]), "file": str(path)}
    return summary


def _to_masks(fmt: Any, root: Path, output_dir: Path) -> dict[str, Any]:
    source = fmt.semantic_source(root)
    num_classes = len(source.class_names)
    (output_dir / "masks").mkdir(parents=True, exist_ok=True)
    (output_dir / "classes.txt").write_text("\n".join(source.class_names) + "\n")
    stems: dict[str, str] = {}
    counts = np.zeros(num_classes, np.int64)
    for image_id, (image_path, label) in source.items.items():
        stem = stems[image_id] = _safe(image_id)
        mask = source.mask_reader(label, num_classes, source.ignore_index)
        height, width = image_size(image_path)
        if (height, width) != mask.shape:
            raise SegExtError(f"mask of {image_path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                              f"{width}x{height}; expected the same size")
        _copy_image(image_path, output_dir, stem)
        Image.fromarray(mask.astype(np.uint8)).save(output_dir / "masks" / f"{stem}.png")
        counts += np.bincount(mask[mask != source.ignore_index].ravel(), minlength=num_classes)[:num_classes]
    summary: dict[str, Any] = {"format": fmt.name, "to": "masks", "images": len(source.items),
                               "classes": {c: int(n) for c, n in zip(source.class_names, counts)}}
    if source.splits:
        for split in SPLITS:
            ids = [stems[i] for i in source.splits.get(split, []) if i in stems]
            (output_dir / f"{split}.txt").write_text("\n".join(ids) + ("\n" if ids else ""))
        summary["splits"] = {s: len(source.splits.get(s, [])) for s in SPLITS}
    return summary
