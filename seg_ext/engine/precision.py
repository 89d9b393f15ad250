"""How a model computes: autocast dtype and memory format, resolved once per run with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

AMP_MODES = ("auto", "off", "fp16", "bf16")
CHANNELS_LAST_MODES = ("auto", "true", "false")


@dataclass(frozen=True)
class Precision:
    """How the model computes: autocast dtype (None: fp32) and memory format.

    Resolved by :func:`resolve_precision`; the defaults (``auto``) come from the benchmarks ``cpu_throughput``
    and ``cuda_throughput``.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self):
        """The autocast context for forward passes (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in the memory format; convolutions then pass it on to their outputs and gradients."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        dtype = {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[self.amp_dtype]
        return dtype + (", channels_last" if self.channels_last else "")


def as_word(value: Any) -> str:
    """A setting as a word: YAML and --opts read true/false as bools."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def amp_mode(value: Any) -> str:
    """The autocast mode a setting names: true stands for auto, false for off."""
    word = as_word(value)
    return {"true": "auto", "false": "off"}.get(word, word)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private names)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def bf16_safe(model: nn.Module | None) -> bool:
    """False when ``model`` holds a module whose class declares ``bf16_safe = False`` (measured unsafe by the
    benchmarks)."""
    return model is None or all(getattr(m, "bf16_safe", True) for m in model.modules())


def cuda_preference(model: nn.Module | None) -> tuple[str, bool]:
    """(autocast mode, channels_last) that ``auto`` picks on CUDA for ``model``: what the model declares
    (``cuda_amp``, ``cuda_channels_last``, measured per model by ``cuda_throughput``), else fp16 with
    channels_last (the fastest for 3 of the 5 measured networks, 1.46x fp32 over all 5)."""
    return str(getattr(model, "cuda_amp", "fp16")), bool(getattr(model, "cuda_channels_last", True))


def resolve_precision(amp: Any, channels_last: Any, device: torch.device, model: nn.Module | None = None) -> Precision:
    """The :class:`Precision` that ``amp`` and ``channels_last`` ask for on ``device`` for ``model``.

    ``amp``: ``auto`` (or true) is, on CUDA, the model's measured preference (:func:`cuda_preference`: fp16
    autocast with a gradient scaler for most, fp32 for the dual-head UNet), bf16 autocast on a CPU that
    computes bf16 natively (unless ``model`` is marked unsafe in bf16, see :func:`bf16_safe`), and fp32 on other
    CPUs; ``off`` (or false) is fp32; ``fp16`` and ``bf16`` force that dtype. ``channels_last``: ``auto`` is on
    for the CPU and, on CUDA, the model's preference (on for all but Mask R-CNN); ``true``/``false`` force it.
    The choices are the fastest numerically safe ones ``benchmarks/run.py --only cpu_throughput`` and
    ``cuda_throughput`` measured (benchmarks/README.md, docs/gpu.md).

    Raises:
        ValueError: a setting that is none of the words above.
    """
    mode = amp_mode(amp)
    layout = as_word(channels_last)
    if mode not in AMP_MODES:
        raise ValueError(f"amp is {amp!r}; expected one of: {', '.join(AMP_MODES)}")
    if layout not in CHANNELS_LAST_MODES:
        raise ValueError(f"channels_last is {channels_last!r}; expected one of: {', '.join(CHANNELS_LAST_MODES)}")
    if device.type == "cuda":
        auto_mode, auto_layout = cuda_preference(model)
    else:
        auto_mode = "bf16" if mode == "auto" and native_bf16_cpu() and bf16_safe(model) else "off"
        auto_layout = device.type == "cpu"
    dtype = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[auto_mode if mode == "auto" else mode]
    return Precision(device, dtype, auto_layout if layout == "auto" else layout == "true")


def place_model(model: nn.Module, device: torch.device, amp: Any = "auto", channels_last: Any = "auto") -> tuple[nn.Module, Precision]:
    """Move ``model`` to ``device`` in the memory format asked for; return it with its :class:`Precision`
    (resolved once per run and handed to training and evaluation)."""
    model = model.to(device)
    precision = resolve_precision(amp, channels_last, device, model)
    return precision.prepare(model), precision
