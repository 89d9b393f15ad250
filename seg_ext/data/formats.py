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
from seg_ext.data.folder import FolderFormat
from seg_ext.data.pennfudan import PennFudanFormat
from seg_ext.data.stanford import StanfordFormat
from seg_ext.data.synthetic import SyntheticFormat
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.plugins import load_plugins

FORMATS: dict[str, type[Format]] = {
    "pennfudan": PennFudanFormat,
    "stanford": StanfordFormat,
    "folder": FolderFormat,
    "coco": CocoFormat,
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
    candidates = [FORMATS[n] for n in format_names(task) if n != "synthetic"]
    for cls in candidates:
        if cls.detect(Path(root), files):
            return cls()
    layouts = [cls.layout for cls in candidates]
    raise DatasetError(f"dataset folder {root} has no recognised layout for {task} segmentation; expected "
                       + (", ".join(layouts[:-1]) + " or " + layouts[-1] if len(layouts) > 1 else layouts[0]))
