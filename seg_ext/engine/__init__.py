"""The training engine, split by concern: where a run computes (``runtime``), in what precision (``precision``),
its loaders (``loader``), optimiser and schedule (``optim``), checkpoint files (``checkpoint``), stopping on
signals (``signals``), the hooks around the steps (``hooks``) and the loop (``trainer``). Functions here take plain
arguments; they know no config keys.
"""

from seg_ext.engine.checkpoint import (
    CHECKPOINT_VERSION, MODEL_FOLDER, MODEL_FOLDER_VERSION, TRAINING_STATE, UnsafeCheckpointError, atomic_save,
    load_checkpoint, load_model_folder, previous_path, resume_checkpoint, upgrade_checkpoint_file,
)
from seg_ext.engine.hooks import (
    Checkpoints, EpochLog, History, Hook, NonFiniteStop, ProgressBar, TensorBoard, Tracking, Validation, default_hooks,
    lower_is_better,
)
from seg_ext.engine.loader import close_loader, device_feed, make_loader, resolve_workers, seed_worker, usable_cpus
from seg_ext.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, lr_factor_fn
from seg_ext.engine.precision import (
    AMP_MODES, CHANNELS_LAST_MODES, Precision, bf16_safe, cuda_preference, native_bf16_cpu, place_model,
    resolve_precision,
)
from seg_ext.engine.runtime import (
    check_compiler, compile_model, machine, seed_everything, select_device, set_cudnn_benchmark,
    set_deterministic, set_threads,
)
from seg_ext.engine.signals import StopOnSignal
from seg_ext.engine.trainer import CountingTrainer, Trainer, TrainState

__all__ = [
    "AMP_MODES", "CHANNELS_LAST_MODES", "CHECKPOINT_VERSION", "OPTIMIZERS", "SCHEDULERS", "Checkpoints",
    "CountingTrainer", "EpochLog", "History", "Hook", "NonFiniteStop", "Precision", "ProgressBar", "TensorBoard", "Tracking", "TrainState",
    "StopOnSignal", "Trainer", "UnsafeCheckpointError", "Validation", "atomic_save", "bf16_safe", "build_optimizer", "default_hooks", "load_checkpoint",
    "MODEL_FOLDER", "MODEL_FOLDER_VERSION", "TRAINING_STATE", "load_model_folder",
    "close_loader", "lower_is_better", "lr_factor_fn", "make_loader", "previous_path", "resume_checkpoint", "native_bf16_cpu", "place_model", "resolve_precision", "seed_everything",
    "seed_worker", "select_device", "set_threads", "upgrade_checkpoint_file", "check_compiler",
    "compile_model", "machine", "cuda_preference", "device_feed", "resolve_workers", "set_cudnn_benchmark", "set_deterministic", "usable_cpus",
]
