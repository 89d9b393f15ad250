"""Model names -> builders (a plain dict), and ``build_model`` that checks the config against them."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from seg_ext.errors import ArgumentError, ConfigError
from seg_ext.models.baseconv import BaseConv
from seg_ext.models.baseline import PixelFrequencyBaseline
from seg_ext.models.smp_unet import smp_unet
from seg_ext.models.unet import UNet

SEMANTIC_MODELS: dict[str, Callable[..., nn.Module]] = {
    "baseline": PixelFrequencyBaseline,
    "baseconv": BaseConv,
    "unet": UNet,
    "smp_unet": smp_unet,
}


def build_from_block(
    registry: dict[str, Callable[..., Any]], block: dict[str, Any], context: dict[str, Any], key: str = "model",
    context_keys: dict[str, str] | None = None,
) -> Any:
    """Call ``registry[block['name']]`` with the block's other keys as keyword arguments.

    ``context`` values (``num_classes``, ``image_size``, ...) are passed to builders whose signature takes them,
    unless the block sets them itself. This is the config boundary of the model builders: an unknown name or
    argument is a ConfigError that lists the options, and a builder's :class:`ArgumentError` becomes a
    ConfigError naming the config key (``<key>.<argument>``, or ``context_keys[argument]`` for a context value;
    ``image_size`` comes from ``data.image_size`` unless said otherwise).
    """
    name = block.get("name")
    if name not in registry:
        raise ConfigError(f"config key '{key}.name' is {name!r}; expected one of: {', '.join(registry)}")
    builder = registry[name]
    params = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in block.items() if k != "name"}
    for arg in kwargs:
        if arg not in params or arg in context:
            options = [p for p in params if p not in context and p != "self"]
            raise ConfigError(
                f"config key '{key}.{arg}' is not an argument of {key} '{name}'; expected one of: {', '.join(options)}"
            )
    for arg, value in context.items():
        if arg in params:
            kwargs[arg] = value
    try:
        return builder(**kwargs)
    except ArgumentError as exc:
        where = {"image_size": "data.image_size", **(context_keys or {})}
        config_key = where.get(exc.argument, f"{key}.{exc.argument}") if exc.argument in context else f"{key}.{exc.argument}"
        raise ConfigError(f"config key '{config_key}' {exc.detail}") from None
    except TypeError as exc:
        raise ConfigError(f"config block '{key}' does not fit {key} '{name}': {exc}") from None


def build_model(block: dict[str, Any], **context: Any) -> nn.Module:
    """Build the semantic model named by a config ``model`` block (``name`` + keyword arguments)."""
    return build_from_block(SEMANTIC_MODELS, block, context)


__all__ = ["SEMANTIC_MODELS", "BaseConv", "PixelFrequencyBaseline", "UNet", "build_from_block", "build_model", "smp_unet"]
