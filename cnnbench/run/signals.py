"""Graceful stop: the first SIGINT/SIGTERM/SIGUSR2 asks the loop to stop after the current step."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)

# SIGUSR2 is what SLURM (through submitit) sends ahead of preemption.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)) if s)


class GracefulStop:
    """Context manager installing the handlers; ``requested`` turns true on the first signal.

    A second signal restores the previous handler and re-delivers itself, so the process ends at once.
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            logger.warning("second %s: stopping now", signal.Signals(signum).name)
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        logger.warning(
            "%s received: finishing the current step, then writing a checkpoint "
            "(send it again to stop at once)", signal.Signals(signum).name,
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()
