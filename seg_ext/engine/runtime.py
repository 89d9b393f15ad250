"""Where a run computes and how it is seeded."""

from __future__ import annotations

import importlib.util
import os
import platform
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg_ext.errors import SegExtError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; otherwise the named device, checked to exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegExtError(f"device {name!r} was asked for but CUDA is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's operators; 0 keeps torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)


# cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes); set before CUDA starts
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(on: bool) -> None:
    """``train.deterministic``: cuDNN's deterministic kernels (its autotuner off) and torch's deterministic
    algorithms, an op without a deterministic CUDA kernel warning once instead of failing (docs/gpu.md says what
    this costs and promises). Off: torch's defaults. The CPU repeats exactly either way."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = bool(on)
    if on or torch.are_deterministic_algorithms_enabled():  # (turning it on imports Inductor: 2 s of every run)
        torch.use_deterministic_algorithms(bool(on), warn_only=True)


def set_cudnn_benchmark(on: bool) -> None:
    """cuDNN's autotuner: it times the convolution kernels once per input shape and keeps the fastest; worth it
    where the training shapes are fixed, harmful where every batch has a new shape (and off for determinism)."""
    torch.backends.cudnn.benchmark = bool(on)


def check_compiler(mode: str, device: torch.device) -> None:
    """Raise one sentence when ``torch.compile`` in ``mode`` cannot run on ``device`` here: Inductor writes C++
    for the CPU and Triton kernels (launched through C) for CUDA."""
    if mode == "off":
        return
    variable, compilers = ("CXX", ("c++", "g++", "clang++")) if device.type == "cpu" else ("CC", ("cc", "gcc", "clang"))
    if os.environ.get(variable):
        compilers = (os.environ[variable], *compilers)
    if not any(shutil.which(c) for c in compilers):
        raise SegExtError(f"train.compile is {mode!r} but torch.compile cannot run here: no compiler "
                          f"({', '.join(compilers)}) is on PATH; install one (Debian: apt-get install g++) or set "
                          "train.compile=off")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise SegExtError(f"train.compile is {mode!r} but torch.compile cannot run on CUDA here: the triton package "
                          "is missing (it comes with torch's CUDA wheels); install it or set train.compile=off")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise SegExtError("train.compile is 'reduce-overhead' (CUDA graphs) but the run computes on the CPU; use "
                          "default or off there")


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` compiled by ``torch.compile`` in ``mode`` (``off``: itself). The compiled wrapper shares the
    model's parameters; checkpoints save the model itself, so their keys are the plain model's."""
    if mode == "off":
        return model
    return torch.compile(model, mode=mode)


def machine(host: bool = True) -> str:
    """This machine: (with ``host``) its name, the CPU model and cores, and the GPU when torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return f"{platform.node()}: {text}" if host else text
