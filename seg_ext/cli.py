"""Shared pieces of the command-line tools: common options, logging, and turning user errors into one line.

Imports nothing heavy at module level, so a tool can report a missing dependency in one sentence.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from seg_ext.errors import ConfigError, Preempted, SegExtError, TrainingStopped, user_message
from seg_ext.io import check_output_folder

EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3
EXIT_INTERRUPTED = 130
EXIT_DISTRIBUTED = 1  # this process of a distributed run stopped because another one did
REQUIRED_MODULES = ("torch", "torchvision", "numpy", "albumentations", "yaml", "PIL", "matplotlib", "skimage", "scipy")


def add_run_arguments(parser: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    """The options every training tool shares; ``--method`` choices are the registered methods of ``task``."""
    from seg_ext.methods import default_method, method_names

    names = method_names(task)
    parser.add_argument("--method", choices=names, default=None,
                        help=f"{' or '.join(names)} (default {default_method(task)}); a config file may name it instead")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the method's defaults)")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: built-in synthetic data)")
    parser.add_argument("--output-dir", type=Path, default=None, help="run folder (default: runs/<task>/<name>-<time>)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last.pt")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint on val and test")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to evaluate with --eval-only")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start a new run from this checkpoint's weights (a best.pt or last.pt of the same task and "
                             "classes): its config is the base (--config, --opts and --data-root on top; the network must "
                             "stay), the optimiser and schedule start anew")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="log the run to MLflow there (sets train.tracking=mlflow and train.tracking_uri): a server's "
                             "http://HOST:PORT, or a folder for a SQLite store (needs the tracking extra)")
    parser.add_argument("--oracle", action="store_true",
                        help="methods with an oracle: no training; run the post-processing on outputs made from the "
                             "ground truth and report the AP it reaches (the method's ceiling)")
    return parser


def check_run_arguments(args: argparse.Namespace) -> None:
    """Reject combinations of options that cannot work, in one sentence."""
    if args.eval_only and args.checkpoint is None:
        raise SegExtError("--eval-only needs --checkpoint FILE (a last.pt or best.pt of a run)")
    if args.checkpoint is not None and not args.eval_only:
        raise SegExtError("--checkpoint is for --eval-only; to continue training use --resume with --output-dir")
    if args.resume and args.eval_only:
        raise SegExtError("--resume and --eval-only do not go together")
    if args.resume and args.output_dir is None:
        raise SegExtError("--resume needs --output-dir, the folder of the run to continue")
    if getattr(args, "oracle", False) and (args.resume or args.eval_only):
        raise SegExtError("--oracle trains nothing; it does not go with --resume or --eval-only")
    if getattr(args, "tracking_uri", None) and getattr(args, "oracle", False):
        raise SegExtError("--tracking-uri logs trainings and evaluations to MLflow; --oracle is neither")
    init_from = getattr(args, "init_from", None)
    if init_from is not None and (args.resume or args.eval_only or getattr(args, "oracle", False)):
        raise SegExtError("--init-from starts a new run from a checkpoint's weights; it does not go with --resume, "
                          "--eval-only or --oracle")
    if init_from is not None and not Path(init_from).exists():
        raise SegExtError(f"--init-from {init_from} does not exist; expected a best.pt or last.pt of an earlier run, "
                          "or a model folder")


def resolve_run(args: argparse.Namespace, task: str) -> tuple[dict[str, Any], Path]:
    """The config and run folder of a training tool's invocation.

    * a new run: the method's defaults (``--method``, else the config file's ``method``, else the task's first)
      <- ``--config`` <- ``--opts`` <- ``--data-root``; folder ``--output-dir`` or
      ``runs/<task>/<config name>-<time>``;
    * ``--resume``: the config saved in ``<output-dir>/last.pt`` <- ``--opts`` <- ``--data-root``;
    * ``--eval-only``: the config saved in ``--checkpoint``, likewise;
    * ``--init-from``: a new run whose config is the checkpoint's <- ``--config`` <- ``--opts`` <- ``--data-root``
      (whose layout is recognised anew: ``data.format`` auto unless ``--opts`` sets it), refused where that changes
      the network.

    The checkpoint goes through the checkpoint boundary (``seg_ext.methods.checkpoints``): another task or
    method, or overrides that change the network, are refused in one sentence.
    """
    from seg_ext.config import load_config
    from seg_ext.methods import check_config, merge_checked, method_config, resolve_method
    from seg_ext.methods.checkpoints import check_same_network, open_checkpoint, with_overrides

    check_run_arguments(args)
    check_output_folder(args.output_dir, "a folder (new, or the run's own)")
    if args.eval_only or args.resume:
        ckpt_path = args.checkpoint if args.eval_only else args.output_dir / "last.pt"
        found = ckpt_path.is_file() or (args.eval_only and ckpt_path.is_dir())  # (a model folder evaluates too)
        if not found and not (args.resume and (args.output_dir / "last.prev.pt").is_file()):
            what = "the checkpoint to evaluate" if args.eval_only else "the last.pt of the run to continue"
            raise SegExtError(f"{ckpt_path} does not exist; expected {what}")
        ckpt = open_checkpoint(ckpt_path, task=task, resume=args.resume)
        if args.method is not None and args.method != ckpt.method.name:
            raise ConfigError(f"the checkpoint's run used method {ckpt.method.name!r} but --method is {args.method!r}")
        if args.config is not None:
            logging.getLogger(__name__).warning("--config is ignored: the run keeps the config saved in %s", ckpt.path)
        cfg = with_overrides(ckpt, args.opts, resume=args.resume)
        output_dir = args.output_dir or default_output_dir(task, "eval")
    elif getattr(args, "init_from", None) is not None:
        ckpt = open_checkpoint(args.init_from, task=task)
        if args.method is not None and args.method != ckpt.method.name:
            raise ConfigError(f"--init-from {ckpt.path} is of method {ckpt.method.name!r} but --method is {args.method!r}")
        base = ckpt.cfg
        if args.data_root is not None and not any(o.split("=", 1)[0].strip() == "data.format" for o in args.opts):
            base = merge_checked(base, {"data": {"format": "auto"}}, source="--data-root")  # new data: its own layout
        cfg = check_config(load_config(args.config, args.opts, defaults=base))
        check_same_network(ckpt, cfg, "--config and --opts" if args.config else "--opts")
        output_dir = args.output_dir or default_output_dir(task, Path(args.init_from).parent.name + "-on")
    else:
        cfg = method_config(resolve_method(args.method, args.config, task), args.config, args.opts, task)
        output_dir = args.output_dir or default_output_dir(task, args.config.stem if args.config else "default")
    if args.data_root is not None:
        cfg = merge_checked(cfg, {"data": {"root": str(args.data_root)}}, source="--data-root")
    if getattr(args, "tracking_uri", None):
        cfg = merge_checked(cfg, {"train": {"tracking": "mlflow", "tracking_uri": args.tracking_uri}}, source="--tracking-uri")
    return cfg, join_processes(cfg, output_dir)


def train_tool(args: argparse.Namespace, task: str) -> None:
    """What both training tools do: resolve the run, then train it, evaluate a checkpoint or run the oracle, and
    print the closing lines."""
    from seg_ext.tasks import driver

    cfg, output_dir = resolve_run(args, task)
    setup_logging(output_dir)
    if args.opts and not (args.eval_only or args.resume or args.oracle):
        warn_ignored_overrides(args, task, cfg)
    command = command_line()
    if args.oracle:
        summary = driver.oracle(cfg, output_dir, command)
    elif args.eval_only:
        summary = driver.evaluate(cfg, args.checkpoint, output_dir, command)
    else:
        summary = driver.train(cfg, output_dir, resume=args.resume, command=command,
                               init_from=getattr(args, "init_from", None))
    print_summary(summary, output_dir, task)


def warn_ignored_overrides(args: argparse.Namespace, task: str, cfg: dict[str, Any]) -> None:
    """Warn, one sentence each, about ``--opts`` that the run's modes ignore (``augment.crop_scale`` with
    ``data.resize: scale``, ``eval.stride`` without slide prediction, ...). A config file may hold keys for another
    mode (``--opts data.resize=squash`` then uses them); a key set on the command line is meant to act."""
    from seg_ext import distributed
    from seg_ext.methods import method_class, method_config

    before = method_config(cfg["method"], args.config, [], task)
    if distributed.is_main():
        for sentence in method_class(cfg["method"]).ignored_settings(cfg, before):
            logging.getLogger(__name__).warning("%s", sentence)


def join_processes(cfg: dict[str, Any], output_dir: Path) -> Path:
    """Under torchrun: join the process group; the run folder is process 0's (a default name holds the time,
    which processes may read a second apart). Without torchrun: ``output_dir``."""
    from seg_ext import distributed
    from seg_ext.engine import select_device

    distributed.init(select_device(cfg["train"]["device"]), cfg["train"]["dist_timeout"])
    return Path(distributed.broadcast(str(output_dir)))


def command_line() -> str:
    """How this process was started, for the report (``python tools/... args``)."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def print_summary(summary: dict[str, Any], output_dir: Path, task: str) -> None:
    """The tools' closing lines (process 0 of a distributed run): each evaluated split's headline metrics (the
    ``summary`` keys of the task's evaluators), then where the report is."""
    from seg_ext import distributed
    from seg_ext.evaluation import evaluator_classes

    if not distributed.is_main():
        return
    keys = [k for cls in evaluator_classes(task) for k in cls.summary]
    for split in ("val", "test"):
        if split in summary:
            print(f"{split:>5}: " + "  ".join(f"{k} {summary[split][k]:.2f}" for k in keys if k in summary[split]))
    print(f"report: {output_dir / 'report.md'}")


def default_output_dir(task: str, name: str) -> Path:
    """``runs/<task>/<name>-<YYYYmmdd-HHMMSS>`` under the current folder."""
    return Path("runs") / task / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def setup_logging(output_dir: Path | None = None, verbose: bool = False) -> None:
    """Log to the console and, when given, to ``<output_dir>/log.txt``. In a distributed run only process 0
    does; the others log warnings and errors to the console, marked with their rank."""
    from seg_ext import distributed

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    main = distributed.is_main()
    where = "" if not distributed.is_distributed() else f"[rank {distributed.rank()}] "
    fmt = logging.Formatter(f"%(asctime)s {where}%(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    if not main:
        console.setLevel(logging.WARNING)
    root.addHandler(console)
    if output_dir is not None and main:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / "log.txt")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "huggingface_hub", "httpcore", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_tool(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Call ``main(args)``; a user error becomes one line on stderr and exit code 2, never a traceback. An int
    that ``main`` returns is the exit code (tools that finish their work but report failures). Under torchrun,
    lines of processes other than 0 name their rank, and the process group is left also when the run fails."""
    try:
        return _run_tool(main, args)
    finally:
        if "seg_ext.distributed" in sys.modules:
            sys.modules["seg_ext.distributed"].shutdown()


def _another_launched_process() -> bool:
    """A process other than 0 of a torchrun launch, whether or not it has joined the process group yet: the
    variables torchrun sets, read as ``distributed.launched`` reads them (without importing torch for an error)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def _rank_prefix() -> str:
    dist = sys.modules.get("seg_ext.distributed")
    return f"[rank {dist.rank()}] " if dist is not None and dist.is_distributed() else ""


def _run_tool(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    try:
        code = main(args)
    except Preempted as exc:
        print(f"{_rank_prefix()}{user_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except TrainingStopped as exc:
        print(f"{_rank_prefix()}error: {user_message(exc)}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    except SegExtError as exc:
        if _rank_prefix() or not _another_launched_process():
            print(f"{_rank_prefix()}error: {user_message(exc)}", file=sys.stderr)
        # else: refused before the process group was joined, by the checks every process makes alike (the
        # arguments, the folder, the config): process 0 says it once for all of them
        return EXIT_USER_ERROR
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in REQUIRED_MODULES + ("segmentation_models_pytorch", "pycocotools", "cv2", "tqdm", "sklearn", "tensorboard"):
            print(
                f"error: the package providing '{exc.name}' is not installed; run `make venv` (or "
                "`pip install -r requirements.txt`) and use that environment's python",
                file=sys.stderr,
            )
            return EXIT_USER_ERROR
        raise
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is kept in last.pt (continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as exc:
        dist = sys.modules.get("seg_ext.distributed")
        if dist is None or not dist.peer_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"{_rank_prefix()}error: lost contact with the other processes of the distributed run ({first[:200]}); "
              "another process stopped (its error is above) or train.dist_timeout passed", file=sys.stderr)
        return EXIT_DISTRIBUTED
    return code if isinstance(code, int) else 0
