"""Distributed helpers: the one module that reads torchrun's environment and calls ``torch.distributed``.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`init` joins the process group: nccl on
CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU, with a timeout on every collective. Without torchrun
every helper here is a no-op: rank 0 of a world of 1, reductions return their input. After detectron2's
``utils/comm.py``.

Process 0 (:func:`is_main`) writes the run's files; the others compute their share and join the collectives.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from seg_ext.errors import SegExtError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800


class DistributedError(SegExtError):
    """A collective failed: another process of the run stopped (its own error is printed by it) or timed out."""


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """Whether this process is in a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_world_size() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) if launched() else 1


def is_main() -> bool:
    """Process 0: the one that writes files and logs."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device`` unchanged."""
    if device.type == "cuda" and (is_distributed() or launched()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group when launched by torchrun (once; later calls do nothing). Returns whether this
    process is one of several. The group is destroyed at exit, also when the run fails (:func:`shutdown`)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise SegExtError(f"WORLD_SIZE is set but {key} is not; start several processes with torchrun "
                              "(torchrun --nproc_per_node=N tools/...)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        check_gpus_per_process()
        torch.cuda.set_device(device_for(device))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    except Exception as exc:  # rendezvous failures: the address, the port, a missing peer
        raise DistributedError(f"cannot join the distributed run (rank {os.environ['RANK']} of "
                               f"{os.environ['WORLD_SIZE']}, {backend}): {_first_line(exc)}") from None
    atexit.register(shutdown)
    logger.info("distributed run: process %d of %d, backend %s", rank(), world_size(), backend)
    return True


def check_gpus_per_process() -> None:
    """A CUDA run under torchrun takes one GPU per process of this machine (``cuda:LOCAL_RANK``): more processes
    than visible GPUs is refused in one sentence (before any of them touches a device)."""
    local = local_world_size()
    visible = torch.cuda.device_count()
    if local > visible:
        raise SegExtError(f"torchrun started {local} processes on this machine but {visible} CUDA device(s) are "
                          f"visible; a CUDA run takes one GPU per process: use --nproc_per_node={max(visible, 1)} "
                          "or less, or train on the CPU with --opts train.device=cpu")


def shutdown() -> None:
    """Leave the process group (nothing when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed collective into one sentence: another process stopped, or the timeout passed."""
    try:
        yield
    except Exception as exc:
        raise DistributedError(
            f"process {rank()} of {world_size()} could not {what} ({_first_line(exc)}): another process of the run "
            "stopped (its error is above) or took longer than train.dist_timeout"
        ) from None


PEER_FAILURE_WORDS = ("closed by peer", "connection reset", "timed out", "timeout", "nccl", "gloo", "processgroup",
                      "broken pipe")


def peer_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised in a distributed run, is a failed exchange with the other processes (inside
    DistributedDataParallel's own collectives, say) rather than an error of this process."""
    if not is_distributed():
        return False
    if isinstance(exc, (DistributedError, getattr(dist, "DistError", DistributedError))):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in PEER_FAILURE_WORDS)


def _tensor_device() -> torch.device:
    """Where collective tensors live: the process's GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        with _collective("wait for the other processes"):
            dist.barrier()


def all_reduce(values: np.ndarray | Sequence[float] | torch.Tensor, op: str = "sum") -> Any:
    """``values`` summed (``op`` "sum") or their maximum ("max") over all processes, in the type given (a list
    of floats comes back as a list; integer arrays stay exact)."""
    if not is_distributed():
        return values
    as_list = isinstance(values, (list, tuple))
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64) if as_list else values)
    out = tensor.to(_tensor_device(), copy=True)
    with _collective(f"combine values with the other processes ({op})"):
        dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    out = out.to(tensor.device)
    if as_list:
        return out.tolist()
    return out.numpy() if isinstance(values, np.ndarray) else out


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a model's buffers, say)."""
    if is_distributed():
        tensor.copy_(all_reduce(tensor))
    return tensor


def gather(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` (picklable), in rank order, on process 0; None elsewhere. ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if is_main() else None
    with _collective("gather results on process 0"):
        dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    with _collective("exchange values with the other processes"):
        dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Process 0's ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    with _collective("receive process 0's result"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Process 0 runs the block first (it writes what the block makes: a converted dataset, generated data),
    then the others run it (and find it made)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(size: int) -> range:
    """This process's contiguous share of ``size`` items for evaluation, without padding: every item is in
    exactly one share (the first ``size % world`` shares hold one more)."""
    world, r = world_size(), rank()
    base, extra = divmod(int(size), world)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes (else as it is).

    ``find_unused_parameters`` only for a model that declares ``ddp_find_unused_parameters = True`` (one whose
    forward may leave parameters out of the loss); the search costs a graph walk every step.
    """
    if not is_distributed():
        return model
    find_unused = any(getattr(m, "ddp_find_unused_parameters", False) for m in model.modules())
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def convert_sync_batch_norm(model: nn.Module) -> nn.Module:
    """Batch-norm layers that compute their statistics over the whole global batch (several CUDA processes)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
