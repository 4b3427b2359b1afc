"""A deadline on the data server's shutdown that nothing can stretch.

Once started, a daemon thread waits ``seconds``; unless ``finish()`` is
called first, it logs which step of the shutdown is still running and ends
the process with ``os._exit``, which waits for nothing: not for ZeroMQ's
I/O threads, nor for workers, nor for other threads. The deadline is
started by the stop signal itself (so it counts from SIGTERM, as a
container engine's grace period does) or at the start of any other
shutdown. ``run_bounded`` gives one step a shorter bound of its own. See
NOTE [ Shutdown protocol ] in server/supervisor.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Callable

log = logging.getLogger("zfeed.server")

# Docker's default grace period is 10 s (Compose's and Kubernetes' here: 15 s): exit before it.
SHUTDOWN_DEADLINE_S = 8.0


class ShutdownDeadline:
    def __init__(self, seconds: float = SHUTDOWN_DEADLINE_S):
        self.seconds = seconds
        self._step = "stopping the main loop"
        self._status = 0
        self._finished = threading.Event()
        self._started = False

    def start(self, status: int) -> None:
        """Count down from now (if not counting already); on expiry exit with ``status``."""
        self._status = status
        if not self._started:
            self._started = True
            threading.Thread(target=self._expire, name="zfeed-shutdown-deadline", daemon=True).start()

    def step(self, name: str) -> None:
        """Name the shutdown step now running, for the message on expiry."""
        self._step = name

    def run_bounded(self, step: str, action: Callable[[], None], seconds: float, likely_cause: str) -> None:
        """Run ``action`` as step ``step``; if it is still running after ``seconds``, exit without it."""
        self.step(step)
        thread = threading.Thread(target=action, name="zfeed-shutdown-step", daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            self.exit_now("%s did not finish within %.0f s (%s)" % (step, seconds, likely_cause), logging.WARNING)

    def finish(self) -> None:
        self._finished.set()

    def exit_now(self, reason: str, level: int = logging.ERROR) -> None:
        log.log(level, "%s: exiting now with status %d without waiting for it", reason, self._status)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(self._status)

    def _expire(self) -> None:
        if not self._finished.wait(self.seconds):
            self.exit_now("shutdown did not finish within %.0f s of its start (still %s)" % (self.seconds, self._step))
