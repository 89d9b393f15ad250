"""The one boundary where a checkpoint meets a run: opened safely, checked to be a seg_ext checkpoint of the
expected task and of a registered method, its network compared with the config's before any weights are loaded.
Every way in goes through it: ``--eval-only``, ``--resume``, ``tools/predict.py`` and the ``Predictor``,
``tools/export.py`` and ``tools/tune_postprocess.py``. Each mismatch is one sentence naming the file.

What shapes the network: the ``model`` block (apart from the pretrained-weight keys, which a checkpoint
overrides), the method's :attr:`~seg_ext.methods.base.Method.network_keys`, and the classes. A resume also keeps
``train.optimizer`` (its state would not fit another). Everything else may change: epochs, workers, learning
rate, post-processing, evaluation settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from seg_ext.config import merge_config, parse_overrides
from seg_ext.engine import load_checkpoint, load_model_folder, resume_checkpoint
from seg_ext.errors import ConfigError, SegExtError
from seg_ext.methods import LEGACY_METHOD, METHODS, check_config, method_names, upgrade
from seg_ext.methods.base import WEIGHT_KEYS, Method

RESUME_KEYS = ("train.optimizer",)


@dataclass
class Checkpoint:
    """A checked checkpoint: the file's content, its config as this version reads it, its method class, task
    and class names."""

    path: Path
    content: dict[str, Any]
    cfg: dict[str, Any]
    method: type[Method]
    class_names: list[str]

    @property
    def task(self) -> str:
        return self.method.task

    @property
    def categories(self) -> list[int] | None:
        """COCO category ids of the model's labels 1..K (instance checkpoints; None: 1..K)."""
        return [int(c["id"]) for c in self.content.get("categories", [])] or None


def open_checkpoint(path: str | Path, task: str | None = None, resume: bool = False) -> Checkpoint:
    """Read ``path`` safely and check that it is a seg_ext checkpoint of a registered method (of ``task``);
    ``resume``: the run folder's ``last.pt``, or ``last.prev.pt`` when that is damaged.

    Raises:
        SegExtError: one sentence naming the file and what is wrong.
    """
    path = Path(path)
    if resume:
        path, content = resume_checkpoint(path.parent, continuing=False)  # the run itself warns when it continues
    elif path.is_dir():  # a model folder (tools/export.py --format folder)
        content = load_model_folder(path)
    else:
        content = load_checkpoint(path)
    return checked(path, content, task)


def checked(path: Path, content: dict[str, Any], task: str | None = None) -> Checkpoint:
    """:func:`open_checkpoint`'s checks of a checkpoint already read."""
    if not isinstance(content.get("config"), dict) or not isinstance(content.get("class_names"), list):
        raise SegExtError(f"checkpoint {path} holds no config or class names; expected a last.pt or best.pt of a run")
    name = content["config"].get("method", LEGACY_METHOD)
    if name not in method_names():
        raise SegExtError(f"checkpoint {path} is of method {name!r}, which is not registered here; expected one of: "
                          f"{', '.join(method_names())} (a method from a plugin needs SEG_EXT_PLUGINS=its.module)")
    method = METHODS[name]
    saved_task = content.get("task", method.task)
    if saved_task != method.task:
        raise SegExtError(f"checkpoint {path} says task {saved_task!r} but method {name!r} is a {method.task} method; "
                          "expected an unmodified checkpoint")
    if task is not None and method.task != task:
        raise SegExtError(f"checkpoint {path} is from a {method.task} run (method {name}); expected one of the {task} "
                          f"task (use tools/train_{method.task}.py for this one)")
    try:
        cfg = check_config(upgrade(content["config"]))
    except ConfigError as exc:
        raise SegExtError(f"checkpoint {path} holds a config this version cannot use: {exc}") from None
    return Checkpoint(path, content, cfg, method, list(content["class_names"]))


def with_overrides(ckpt: Checkpoint, overrides: Sequence[str], resume: bool = False) -> dict[str, Any]:
    """The checkpoint's config with ``--opts`` overrides, refused when they change the network (or, for a
    resume, what the saved training state needs).

    Raises:
        ConfigError: a bad override; SegExtError: one that changes the network.
    """
    cfg = ckpt.cfg
    for nested in parse_overrides(overrides):  # errors name the key given in --opts
        cfg = check_config(merge_config(cfg, nested, source="--opts"))
    check_same_network(ckpt, cfg, "--opts", resume)
    return cfg


def network_config(method: type[Method], cfg: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """The config values that shape ``method``'s network (``resume``: and what a resume keeps), flat."""
    out = {f"model.{k}": v for k, v in cfg["model"].items() if k not in WEIGHT_KEYS}
    for key in (*method.network_keys, *(RESUME_KEYS if resume else ())):
        block, _, name = key.partition(".")
        out[key] = cfg.get(block, {}).get(name)
    return out


def check_same_network(ckpt: Checkpoint, cfg: dict[str, Any], source: str, resume: bool = False) -> None:
    """Refuse a config whose network (or, for a resume, whose optimiser) differs from the checkpoint's.

    Raises:
        SegExtError: naming the file, the key and both values.
    """
    if cfg.get("method", LEGACY_METHOD) != ckpt.method.name:
        raise SegExtError(f"checkpoint {ckpt.path} is of method {ckpt.method.name!r} but {source} asks for "
                          f"{cfg.get('method')!r}; expected the checkpoint's method")
    saved, asked = network_config(ckpt.method, ckpt.cfg, resume), network_config(ckpt.method, cfg, resume)
    for key in dict.fromkeys([*saved, *asked]):
        if _word(saved.get(key)) != _word(asked.get(key)):
            what = "continue it" if resume else "load it"
            raise SegExtError(
                f"checkpoint {ckpt.path} was trained with {key} = {_word(saved.get(key))}, but {source} sets "
                f"{_word(asked.get(key))}; that changes the network, so its weights cannot {what}: keep the "
                "checkpoint's value, or start a new run (--output-dir) to train the other network")


def check_classes(ckpt: Checkpoint, class_names: Sequence[str]) -> None:
    """Refuse data whose classes differ from the checkpoint's.

    Raises:
        SegExtError: naming the file and both lists.
    """
    if list(class_names) != ckpt.class_names:
        raise SegExtError(f"checkpoint {ckpt.path} was trained on classes {ckpt.class_names}, but the dataset has "
                          f"{list(class_names)}; expected the same classes in the same order")


def load_weights(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(state)`` after :func:`check_weights`."""
    check_weights(model, state, path)
    model.load_state_dict(state)


def check_weights(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Compare a state dict's names and shapes with the model's, so a mismatch is one sentence.

    Raises:
        SegExtError: naming the file and the first parameter that does not fit.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"{missing[0]} is missing" if missing else f"{unexpected[0]} is not in the model"
        raise SegExtError(f"checkpoint {path}: its weights do not fit the network its config describes ({first}); "
                          "expected an unmodified last.pt or best.pt")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise SegExtError(f"checkpoint {path}: {key} has shape {tuple(state[key].shape)} there but "
                              f"{tuple(value.shape)} in the network the config describes; expected the same network")


def _word(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
