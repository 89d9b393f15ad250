"""The methods, one module each, in one table (:data:`METHODS`): semantic segmentation and the instance methods,
all following ``methods.base.Method``. Tools take their ``--method`` choices from it, configs their defaults
(:func:`method_config`), checkpoints their method (``methods.checkpoints``).

A new method is a class in its own module plus one entry here, or, from outside the package,
:func:`register_method` in a plugin module named in ``SEG_EXT_PLUGINS`` (``seg_ext.plugins``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch

from seg_ext.config import load_config, merge_config, upgrade_config, validate_config
from seg_ext.errors import ConfigError
from seg_ext.methods.base import Method, RunData, without_weights
from seg_ext.methods.instance import InstanceMethod
from seg_ext.methods.maskrcnn import MaskRCNNMethod
from seg_ext.methods.semantic import SemanticMethod
from seg_ext.methods.watershed import PostProcessing, WatershedMethod
from seg_ext.plugins import load_plugins

# method name -> class; the first of each task is its default
METHODS: dict[str, type[Method]] = {
    "semantic": SemanticMethod,
    "maskrcnn": MaskRCNNMethod,
    "watershed": WatershedMethod,
}
TASKS = ("semantic", "instance")
DEFAULT_TASK = "semantic"  # the task of a tool or sweep that names none
# a config saved before configs named their method is a semantic one
LEGACY_METHOD = "semantic"


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method to the table (a plugin's way in)."""
    if not cls.name or cls.task not in TASKS:
        raise ValueError(f"{cls.__name__} must set name and a task ({' or '.join(TASKS)})")
    METHODS[cls.name] = cls
    return cls


def method_names(task: str | None = None) -> list[str]:
    """The registered methods (of ``task``), in the table's order."""
    load_plugins()
    return [name for name, cls in METHODS.items() if task is None or cls.task == task]


def default_method(task: str) -> str:
    """The method a tool of ``task`` runs when none is named: the task's first in the table."""
    return method_names(task)[0]


def resolve_method(name: str | None = None, config: str | Path | None = None, task: str | None = None) -> str:
    """The method a run uses: ``name`` (``--method``), else the one the config file names, else the default of
    ``task`` (semantic when no task is given).

    Raises:
        ConfigError: ``--method`` and the config file name different methods, or an unknown one.
    """
    from seg_ext.config import read_yaml

    in_file = read_yaml(config).get("method") if config is not None else None
    if name is not None and in_file is not None and in_file != name:
        raise ConfigError(f"config file {config} is for method {in_file!r} but --method is {name!r}")
    chosen = name or in_file or default_method(task or DEFAULT_TASK)
    method_class(chosen, task)
    return chosen


def method_class(name: str, task: str | None = None) -> type[Method]:
    """The class of method ``name`` (of ``task``).

    Raises:
        ConfigError: an unknown name, naming the options.
    """
    names = method_names(task)
    if name not in names:
        what = f" for {task} segmentation" if task else ""
        raise ConfigError(f"config key 'method' is {name!r}; expected one of{what}: {', '.join(names)}"
                          + ("" if name in METHODS else " (a method from a plugin needs SEG_EXT_PLUGINS=its.module)"))
    return METHODS[name]


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check a whole config: the keys every method has, then its method's. Returns ``cfg``.

    Raises:
        ConfigError: naming the key and what was expected.
    """
    validate_config(cfg)
    method_class(cfg.get("method", LEGACY_METHOD)).validate(cfg)
    return cfg


def method_config(method: str, path: str | Path | None = None, overrides: Sequence[str] | None = None,
                  task: str | None = None) -> dict[str, Any]:
    """The config of a run of ``method``: its defaults <- the YAML file at ``path`` <- ``overrides``, checked.

    Raises:
        ConfigError: an unknown method, a malformed file, an unknown key or a bad value, naming it.
    """
    cls = method_class(method, task)
    return check_config(load_config(path, overrides, defaults=cls.defaults()))


def merge_checked(cfg: dict[str, Any], new: dict[str, Any], source: str) -> dict[str, Any]:
    """``config.merge_config`` followed by the method's checks."""
    return check_config(merge_config(cfg, new, source))


def upgrade(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version, as this version reads it: the method named (a config without one
    is semantic), renamed keys under their new names, keys added since at their defaults, and blocks of another
    method (saved beside every instance method's once) dropped. Not checked (see :func:`check_config`)."""
    out = copy.deepcopy(cfg)
    out.setdefault("method", LEGACY_METHOD)
    cls = method_class(out["method"])
    defaults = cls.defaults()
    foreign = {block for other in METHODS.values() for block in other.config_blocks} - set(defaults)
    for block in foreign:
        out.pop(block, None)
    return upgrade_config(out, defaults, cls.renamed_keys)


def build_method(cfg: dict[str, Any], device: torch.device = torch.device("cpu")) -> Method:
    """The method object of a config (its keys checked by the method's constructor)."""
    return method_class(cfg.get("method", LEGACY_METHOD))(cfg, device)


__all__ = ["InstanceMethod", "METHODS", "Method", "MaskRCNNMethod", "PostProcessing", "RunData", "SemanticMethod",
           "WatershedMethod", "build_method", "check_config", "default_method", "merge_checked", "method_class",
           "method_config", "method_names", "register_method", "resolve_method", "upgrade", "without_weights"]
