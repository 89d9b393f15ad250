"""The one table of dataset formats: name -> :class:`~seg_ext.data.base.Format`, in the order ``data.format:
auto`` tries them. Both tasks read their data through it (``find_format``). A new format is a module in
``seg_ext/data/`` and one line here, or, from outside the package, :func:`register_format` in a plugin
(``seg_ext.plugins``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seg_ext.data.base import Format
from seg_ext.data.coco import CocoFormat
from seg_ext.data.colormask import ColorMaskFormat
from seg_ext.data.cvat import CvatFormat
from seg_ext.data.folder import FolderFormat
from seg_ext.data.labelme import LabelMeFormat
from seg_ext.data.pennfudan import PennFudanFormat
from seg_ext.data.stanford import StanfordFormat
from seg_ext.data.synthetic import SyntheticFormat
from seg_ext.data.voc import VocFormat
from seg_ext.data.yolo import YoloFormat
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.plugins import load_plugins

FORMATS: dict[str, type[Format]] = {
    "pennfudan": PennFudanFormat,
    "stanford": StanfordFormat,
    "folder": FolderFormat,
    "coco": CocoFormat,
    "labelme": LabelMeFormat,
    "cvat": CvatFormat,
    "yolo": YoloFormat,
    "voc": VocFormat,
    "colormask": ColorMaskFormat,
    "synthetic": SyntheticFormat,
}


def register_format(cls: type[Format]) -> type[Format]:
    """Add a format to the table (a plugin's way in); detection tries it after the built-in ones."""
    if not cls.name or not cls.serves:
        raise ValueError(f"{cls.__name__} must set name and serves")
    FORMATS[cls.name] = cls
    return cls


def format_names(task: str | None = None) -> list[str]:
    """The formats (serving ``task``), in the table's order."""
    load_plugins()
    return [name for name, cls in FORMATS.items() if task is None or task in cls.serves]


def get_format(name: str, task: str) -> Format:
    """The format named ``name`` (``data.format``), checked to serve ``task``.

    Raises:
        ConfigError: an unknown name, or a format that does not hold what the task needs; naming the options.
    """
    names = format_names(task)
    if name not in names:
        raise ConfigError(f"config key 'data.format' is {name!r}; expected one of: auto, {', '.join(names)}"
                          + (f" (format {name} holds no {task} data)" if name in FORMATS else ""))
    return FORMATS[name]()


def find_format(root: Path | None, name: str, task: str, files: dict[str, Any] | None = None) -> Format:
    """The format of the dataset at ``root`` for ``task``: ``name``, or with ``auto`` the first in the table
    that recognises the folder (``files``: the COCO files the config names); ``root`` None is the built-in
    synthetic data.

    Raises:
        DatasetError: the folder does not exist, or no format recognises it (the message lists the layouts).
        ConfigError: see :func:`get_format`.
    """
    if root is None:
        return get_format("synthetic" if name == "auto" else name, task)
    if not Path(root).is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if name != "auto":
        return get_format(name, task)
    candidates = [FORMATS[n] for n in format_names(task)]
    scores = {cls: int(cls.detect(Path(root), files)) for cls in candidates}
    best = max(scores.values(), default=0)
    found = [cls for cls, score in scores.items() if score == best and score > 0]
    if len(found) == 1:
        return found[0]()
    if found:
        raise DatasetError(f"dataset folder {root} fits several layouts: "
                           + "; ".join(f"{cls.name} ({cls.layout})" for cls in found)
                           + f"; set data.format to the one it is (--opts data.format={found[0].name})")
    other_scores = {n: int(cls.detect(Path(root), files)) for n, cls in FORMATS.items() if task not in cls.serves}
    others = sorted((n for n, score in other_scores.items() if score), key=lambda n: -other_scores[n])
    if others:
        raise DatasetError(f"dataset folder {root} is in the {others[0]} layout ({FORMATS[others[0]].layout}), which holds "
                           f"no {task} data; the formats of {task} segmentation are: {', '.join(format_names(task))}")
    layouts = [cls.layout for cls in candidates if cls.name != "synthetic"]
    raise DatasetError(f"dataset folder {root} has no recognised layout for {task} segmentation; expected "
                       + (", ".join(layouts[:-1]) + " or " + layouts[-1] if len(layouts) > 1 else layouts[0]))
