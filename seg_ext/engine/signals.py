"""Stopping on signals: SIGTERM (what SLURM and Kubernetes send before a kill) or SIGINT (Ctrl-C) asks a run to
stop after the current iteration; a second SIGINT stops at once.

:class:`StopOnSignal` installs the handlers while the trainer runs (main thread only) and remembers what arrived;
:meth:`StopOnSignal.agreed` is the signal every process of a distributed run agrees on (one small all-reduce), so
all processes stop at the same iteration. The trainer asks it at one place in its loop, before each unit of work.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from seg_ext import distributed

logger = logging.getLogger(__name__)


class StopOnSignal:
    """While entered: SIGTERM or SIGINT sets :attr:`received`; a second SIGINT raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        if self.received is not None:
            return  # the same stop, told again (a supervisor passing a signal on, then its own death's SIGTERM)
        self.received = signum
        if signum == signal.SIGTERM and hasattr(signal, "SIGCHLD"):
            # a scheduler's SIGTERM to the whole process group ends the loader workers too; torch's SIGCHLD
            # handler would turn that into an error in the middle of this last step
            signal.signal(signal.SIGCHLD, lambda *args: None)  # not SIG_DFL: CPython warns of a pending one
        logger.warning("%s received: stopping after this iteration (press Ctrl-C again to stop at once)",
                       signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def agreed(self) -> int | None:
        """The stop signal any process has received (SIGINT first), the same on every process; in one process,
        this process's. Every process must call it at the same points."""
        if not distributed.is_distributed():
            return self.received
        flags = distributed.all_reduce([float(self.received == s) for s in self.SIGNALS])
        received = [s for s, n in zip(self.SIGNALS, flags) if n > 0]
        return (signal.SIGINT if signal.SIGINT in received else received[0]) if received else None
