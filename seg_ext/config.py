"""Experiment configuration: defaults in code, a YAML file on top, then ``key=value`` overrides.

Every key a config may set is in its method's defaults (``seg_ext.methods``: ``Method.defaults()``, which start
from :data:`TRAIN_DEFAULTS`), so a typo is an error that names the key. The one exception is the ``model`` block:
it is ``name`` plus that model's keyword arguments, which the model builder checks against its signature. A
block that names a different model replaces the default block whole.

Here: reading and merging (:func:`load_config`, :func:`merge_config`), the checks of the keys every method has
(:func:`validate_config`), and the helpers methods check their own keys with (:func:`pixels`, :func:`interval`,
:func:`at_least`, :func:`choice`, :func:`pair`).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from seg_ext.errors import ConfigError

# Blocks whose keys are not fixed here (checked by the code that consumes them).
FREE_BLOCKS = ("model",)

# The train block every method starts from (a method's defaults may change values, never add keys here).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 12,
    "optimizer": "adamw",  # adamw | adam | sgd
    "lr": 3.0e-3,
    "weight_decay": 1.0e-4,
    "momentum": 0.9,  # sgd only
    "scheduler": "cosine",  # cosine | step | none
    "step_size": 10,  # step scheduler: epochs between decays
    "gamma": 0.1,  # step scheduler: decay factor
    "warmup_iters": 0,
    "warmup_factor": 0.001,
    "grad_clip": None,  # max gradient norm, or null for none
    "best_metric": "mIoU",  # validation metric that picks best.pt (higher is better)
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    # autocast: auto = fp16 on CUDA, bf16 on a CPU with native bf16, else none; off; fp16; bf16
    "amp": "auto",
    # the channels_last memory format: auto = on for the CPU, off on CUDA; true; false (benchmarks/README.md)
    "channels_last": "auto",
    "eval_every": 1,  # validate every N epochs (and always after the last)
    "checkpoint_every": 0,  # also write last.pt every N iterations inside an epoch (resumable there); 0: off
    "threads": 0,  # torch CPU threads; 0 keeps torch's default
    # under torchrun (docs/training.md, "Training on several GPUs or machines"); data.batch_size stays per process
    "sync_bn": "auto",  # batch-norm statistics over all processes: auto = on for several CUDA processes; true; false
    "lr_scaling": "none",  # none | linear (train.lr times the number of processes)
    "dist_timeout": 1800,  # seconds a process waits for the others in a collective before the run stops
    "tensorboard": False,  # also write TensorBoard event files into the run folder (tensorboard --logdir runs)
    # experiment tracking: none | mlflow (the tracking extra; docs/experiments.md "Tracking with MLflow")
    "tracking": "none",
    "tracking_uri": None,  # null: MLFLOW_TRACKING_URI, else a SQLite store in runs/mlflow; a folder or a URI
    "tracking_experiment": "seg_ext",  # the MLflow experiment the run goes into (made when missing)
    # bit-exact repeats and resume on CUDA: cuDNN's deterministic kernels and torch's deterministic algorithms
    # (slower; docs/gpu.md); on the CPU runs repeat exactly either way
    "deterministic": False,
    # torch.compile of the training step: off | default | reduce-overhead | max-autotune-no-cudagraphs (docs/gpu.md)
    "compile": "off",
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse one override value the way YAML would (``3`` -> int, ``1e-3`` -> float, ``[1,2]`` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``, raising ConfigError with the file name when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; expected a YAML file")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; expected a mapping of blocks") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__}; expected a mapping of blocks")
    return data


# Keys that may be null besides their default's type.
NULLABLE = ("augment.crop_scale",)

# Keys whose value is a word or a bool (true/false stand for a word the consumer picks).
WORD_OR_BOOL = ("train.amp", "train.channels_last", "train.sync_bn", "train.compile")

# Keys whose value is a number or a word (data.scale: a factor, or short:N / long:N; data.num_workers: N or auto).
NUMBER_OR_WORD = ("data.scale", "data.num_workers")


def _type_ok(default: Any, value: Any, key: str = "") -> bool:
    if default is None or (key in WORD_OR_BOOL and isinstance(value, (bool, str))) or (key in NULLABLE and value is None):
        return True
    if key in NUMBER_OR_WORD:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _merge(base: dict[str, Any], new: dict[str, Any], source: str, prefix: str = "") -> None:
    for key, value in new.items():
        full = f"{prefix}{key}"
        if prefix.rstrip(".") in FREE_BLOCKS:
            base[key] = value
            continue
        if key not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key '{full}' in {source}; valid keys here are: {valid}")
        current = base[key]
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' in {source} must be a mapping, got {value!r}")
            if key in FREE_BLOCKS and "name" in value and value["name"] != current.get("name"):
                base[key] = {}
            _merge(base[key], value, source, prefix=f"{full}.")
            continue
        if not _type_ok(current, value, full):
            kind = ("word or true/false" if full in WORD_OR_BOOL else "number or word" if full in NUMBER_OR_WORD
                    else type(current).__name__)
            raise ConfigError(
                f"config key '{full}' in {source} must be a {kind} "
                f"(like the default {current!r}), got {value!r}"
            )
        base[key] = float(value) if isinstance(current, float) and not isinstance(value, str) else value


def parse_overrides(overrides: Iterable[str]) -> list[dict[str, Any]]:
    """Turn ``["train.lr=0.01", ...]`` into nested dicts, one per override, in order."""
    nested_list = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=5")
        parts = key.strip().split(".")
        nested: dict[str, Any] = {parts[-1]: parse_value(text)}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        nested_list.append(nested)
    return nested_list


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a config: ``defaults`` <- YAML file at ``path`` <- ``overrides`` (``key.sub=value`` strings), with the
    common keys checked (``seg_ext.methods.method_config`` also starts from the method's defaults and checks its
    keys; prefer it).

    Raises:
        ConfigError: the file is missing or malformed, or a key is unknown or of the wrong type.
    """
    if defaults is None:
        raise TypeError("load_config needs the defaults to start from (seg_ext.methods.method_config picks a method's)")
    cfg = copy.deepcopy(defaults)
    if path is not None:
        _merge(cfg, read_yaml(path), source=str(path))
    for nested in parse_overrides(overrides or []):
        _merge(cfg, nested, source="--opts")
    return validate_config(cfg)


def merge_config(cfg: dict[str, Any], new: dict[str, Any], source: str) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``new`` merged in by the same rules as ``load_config``."""
    out = copy.deepcopy(cfg)
    _merge(out, new, source)
    return validate_config(out)


def upgrade_config(cfg: dict[str, Any], defaults: dict[str, Any],
                   renamed: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """A copy of a config saved by an earlier version: ``renamed`` keys ((block, old) -> new) under their new
    names, and keys added since (``eval.full_resolution``, ...) at their ``defaults``."""
    out = copy.deepcopy(cfg)
    for (block, old), new in (renamed or {}).items():
        if isinstance(out.get(block), dict) and old in out[block]:
            out[block][new] = out[block].pop(old)
    for block, values in defaults.items():
        if block in FREE_BLOCKS:
            continue
        if not isinstance(values, dict):
            out.setdefault(block, copy.deepcopy(values))
            continue
        if not isinstance(out.get(block), dict):
            out[block] = copy.deepcopy(values)
            continue
        for key, value in values.items():
            out[block].setdefault(key, copy.deepcopy(value))
    return out


def image_size(cfg: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) of ``data.image_size`` (a number means a square)."""
    value = cfg["data"]["image_size"]
    h, w = (value, value) if isinstance(value, int) else value
    return int(h), int(w)


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))


def pixels(value: Any, key: str, minimum: int = 1, multiple: int = 1) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    h, w = pair(value, key)
    if h < minimum or w < minimum or not h.is_integer() or not w.is_integer() or h % multiple or w % multiple:
        what = f"multiples of {multiple}" if multiple > 1 else f"whole pixels >= {minimum}"
        raise ConfigError(f"config key '{key}' is {value!r}; expected [height, width] in {what}")
    return int(h), int(w)


def at_least(value: Any, key: str, low: float, what: str) -> None:
    if value < low:
        raise ConfigError(f"config key '{key}' is {value}; expected {what}")


def interval(value: Any, key: str, ok, what: str) -> None:
    if not ok(*value) if isinstance(value, tuple) else not ok(value):
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"config key '{key}' is {shown}; expected {what}")


AMP_WORDS = ("auto", "off", "fp16", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
CHANNELS_LAST_WORDS = ("auto", "true", "false")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
CLASS_WEIGHT_MODES = ("none", "inverse", "median")


def _word(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def compile_mode(value: Any) -> str:
    """``train.compile`` as its word: YAML reads ``off`` as false (and true stands for ``default``)."""
    return {"true": "default", "false": "off"}.get(_word(value), _word(value))


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the choice and range of the keys every method has (``data``'s batch and workers, the ``train``
    block, the flip probability), once, when the config is loaded: errors name the config key. A method checks
    its own keys (``Method.validate``); below both, the engine, data code and model builders take plain
    arguments.

    Returns ``cfg``.

    Raises:
        ConfigError: naming the key and what was expected.
    """
    data, train, augment = cfg.get("data", {}), cfg.get("train", {}), cfg.get("augment", {})
    if "batch_size" in data:
        at_least(data["batch_size"], "data.batch_size", 1, "at least 1")
    if "num_workers" in data:
        workers = data["num_workers"]
        if workers != "auto" and not (isinstance(workers, int) and workers >= 0):
            raise ConfigError(f"config key 'data.num_workers' is {workers!r}; expected auto or a number of loader "
                              "processes, 0 or more")
    if data.get("max_images") is not None and not (type(data["max_images"]) is int and data["max_images"] >= 1):
        raise ConfigError(f"config key 'data.max_images' is {data['max_images']!r}; expected null (every image) or a "
                          "number of images per split, at least 1")
    if "hflip_prob" in augment:
        interval(float(augment["hflip_prob"]), "augment.hflip_prob", lambda p: 0 <= p <= 1, "a probability in [0, 1]")
    if train:
        choice(train["optimizer"], "train.optimizer", ("adamw", "adam", "sgd"))
        interval(train["lr"], "train.lr", lambda lr: lr > 0, "a positive learning rate")
        choice(train["scheduler"], "train.scheduler", ("cosine", "step", "none"))
        if train["scheduler"] == "step":
            at_least(train["step_size"], "train.step_size", 1, "at least 1 epoch")
        choice({"true": "auto", "false": "off"}.get(_word(train["amp"]), _word(train["amp"])), "train.amp", AMP_WORDS)
        choice(_word(train["channels_last"]), "train.channels_last", CHANNELS_LAST_WORDS)
        if not DEVICE_PATTERN.match(str(train["device"])):
            raise ConfigError(f"config key 'train.device' is {train['device']!r}; expected auto, cpu, cuda or cuda:N")
        at_least(train["epochs"], "train.epochs", 0, "0 or more")
        at_least(train["eval_every"], "train.eval_every", 1, "at least 1")
        at_least(train["checkpoint_every"], "train.checkpoint_every", 0, "0 (off) or a number of iterations")
        choice(_word(train["sync_bn"]), "train.sync_bn", ("auto", "true", "false"))
        if not isinstance(train["deterministic"], bool):
            raise ConfigError(f"config key 'train.deterministic' is {train['deterministic']!r}; expected true or false")
        choice(compile_mode(train["compile"]), "train.compile", COMPILE_MODES)
        choice(train["lr_scaling"], "train.lr_scaling", ("none", "linear"))
        interval(train["dist_timeout"], "train.dist_timeout", lambda t: t > 0, "a positive number of seconds")
        choice(str(train["tracking"]), "train.tracking", ("none", "mlflow"))
        if train["tracking_uri"] is not None and not (isinstance(train["tracking_uri"], str) and train["tracking_uri"]):
            raise ConfigError(f"config key 'train.tracking_uri' is {train['tracking_uri']!r}; expected null, a folder or "
                              "a URI such as http://127.0.0.1:5000")
        if not isinstance(train["tracking_experiment"], str) or not train["tracking_experiment"].strip():
            raise ConfigError(f"config key 'train.tracking_experiment' is {train['tracking_experiment']!r}; expected "
                              "the name of an MLflow experiment")
    return cfg


def choice(value: Any, key: str, options: Sequence[str]) -> str:
    """Check that config value ``key`` is one of ``options`` and return it."""
    if value not in options:
        raise ConfigError(f"config key '{key}' is {value!r}; expected one of: {', '.join(options)}")
    return value


def pair(value: Any, key: str) -> tuple[float, float]:
    """Check that config value ``key`` is a pair of numbers and return it as a tuple."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"config key '{key}' is {value!r}; expected a pair of numbers like [0.5, 1.0]")
    return float(value[0]), float(value[1])
