"""Errors a user can cause, and how tools turn them into one-line messages."""

from __future__ import annotations


class SegExtError(Exception):
    """An error caused by user input (a path, a file format, a config key).

    The message is one sentence that names the file or key and says what was expected.
    """


class ConfigError(SegExtError):
    """A config file or override is wrong."""


class DatasetError(SegExtError):
    """A dataset folder or file is missing or malformed."""


class WeightsError(SegExtError):
    """Pretrained weights could not be found or do not fit the model."""


class TrainingStopped(SegExtError):
    """Training stopped early (for example the loss became non-finite); the last good checkpoint is kept."""


class Preempted(SegExtError):
    """The run was asked to stop (SIGTERM, SIGINT) and saved its position in ``last.pt``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as shells report them


def user_message(exc: BaseException) -> str:
    """Return the one-sentence message of a user error.

    Errors raised inside DataLoader worker processes come back wrapped with the worker's traceback; this
    recovers the original sentence from such a message.
    """
    text = str(exc)
    if "Original Traceback" in text:
        name = type(exc).__name__
        for line in reversed(text.splitlines()):
            head, sep, tail = line.partition(": ")
            if sep and head.split(".")[-1] == name:
                return tail.strip()
    return text.strip()


class ArgumentError(SegExtError):
    """A builder's argument is out of range or of the wrong kind.

    ``argument`` names the argument and ``detail`` says what was expected; the config boundary
    (``seg_ext.models.build_from_block``) turns it into a :class:`ConfigError` that names the config key.
    """

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"argument {argument} {detail}")
        self.argument, self.detail = argument, detail
