"""Shared pieces of the command-line tools: common options, logging, and turning user errors into one line.

Imports nothing heavy at module level, so a tool can report a missing dependency in one sentence.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from seg_ext.errors import SegExtError, TrainingStopped, user_message

EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3
EXIT_INTERRUPTED = 130
REQUIRED_MODULES = ("torch", "torchvision", "numpy", "albumentations", "yaml", "PIL", "matplotlib", "skimage", "scipy")


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every training tool shares."""
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the built-in defaults)")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: built-in synthetic data)")
    parser.add_argument("--output-dir", type=Path, default=None, help="run folder (default: runs/<task>/<name>-<time>)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last.pt")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint on val and test")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to evaluate with --eval-only")
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


def default_output_dir(task: str, name: str) -> Path:
    """``runs/<task>/<name>-<YYYYmmdd-HHMMSS>`` under the current folder."""
    return Path("runs") / task / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def setup_logging(output_dir: Path | None = None, verbose: bool = False) -> None:
    """Log to the console and, when given, to ``<output_dir>/log.txt``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / "log.txt")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "huggingface_hub", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_tool(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Call ``main(args)``; a user error becomes one line on stderr and exit code 2, never a traceback."""
    try:
        main(args)
    except TrainingStopped as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    except SegExtError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in REQUIRED_MODULES + ("segmentation_models_pytorch", "pycocotools", "cv2", "tqdm", "sklearn"):
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
    return 0
