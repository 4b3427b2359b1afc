"""SIGTERM and SIGINT while the server starts: exit status 0 within ``STOP_GRACE_S``.

NOTE [ Signals during start-up ]
Start-up (importing the server's modules, reading the options, listing the
source, reading its first sample) can take long, in Python code or inside
one C call (listing a large LMDB) during which no Python signal handler
runs. ``python -m server`` makes a ``StartupSignals`` before it imports
anything but the standard library: a process without a handler dies of
SIGTERM (status 143), and a container's PID 1 never gets it at all.
``StartupSignals`` covers that phase twice over:

- its handler raises ``StartupInterrupted``, which unwinds the start-up as
  soon as the interpreter runs again. It is a BaseException, so that no
  ``except Exception`` in a source swallows it; ``python -m server`` logs it
  and exits 0. Third-party code can still swallow it (OpenCV's loader has
  two bare ``except:``) or turn it into another exception (numpy's C code
  reports an exception in an import it makes as ``ImportError``). So the
  handler also notes the signal, and ``watching()`` raises
  ``StartupInterrupted`` when the start-up ends, in any way, with a signal
  noted: the server neither goes on to serve nor reports a made-up error.
- ``watching()`` also starts a thread that the signal wakes at once (through
  ``signal.set_wakeup_fd``, written from C). If the start-up has not unwound
  ``STOP_GRACE_S`` later, the thread logs the signal and ends the process
  with status 0 (``os._exit``). C calls that release the GIL, as the LMDB and
  LevelDB listings do, let it run. Nothing needs cleaning up then: no worker,
  socket or file of the server exists yet.

After ``watching()`` the handler stays until ``DataServer.run`` installs its
own (its first statement), so that a signal in between still stops the
server; ``restore()`` puts back the handlers found at the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Iterator

log = logging.getLogger("zfeed.server")

STOP_GRACE_S = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_START_UP_OVER = b"\0"  # not a signal number


class StartupInterrupted(BaseException):
    """A stop signal arrived before the server was serving."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stopping_message(signum: int) -> str:
    return "%s received during start-up: stopping" % signal.Signals(signum).name


class StartupSignals:
    def __init__(self):
        self.received = 0  # the first stop signal, 0 until one arrives
        self._previous = {sig: signal.signal(sig, self._interrupt) for sig in SIGNALS}

    def _interrupt(self, signum, _frame) -> None:
        self.received = self.received or signum
        raise StartupInterrupted(signum)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """The start-up phase: a signal ends the process within ``STOP_GRACE_S`` whatever runs."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        over = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(read_fd, over), name="zfeed-startup-signals",
                                    daemon=True)
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        watchdog.start()
        try:
            yield
        except BaseException:
            if self.received:  # whatever the signal's exception became on its way
                raise StartupInterrupted(self.received) from None
            raise
        finally:
            over.set()
            signal.set_wakeup_fd(previous_fd)
            os.write(write_fd, _START_UP_OVER)
            watchdog.join()
            os.close(read_fd)
            os.close(write_fd)
        if self.received:  # its exception was swallowed on the way
            raise StartupInterrupted(self.received)

    @staticmethod
    def _watch(read_fd: int, over: threading.Event) -> None:
        signum = 0
        while signum not in SIGNALS:  # every signal with a Python handler is written here
            signum = os.read(read_fd, 1)[0]
            if signum == _START_UP_OVER[0]:
                return
        if over.wait(STOP_GRACE_S):
            return  # start-up is over, or unwound by StartupInterrupted: the main thread goes on
        log.info("%s", stopping_message(signum))
        os._exit(0)

    def restore(self, handler=None) -> None:
        """Put back the handlers found when this object was made, or install ``handler``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if handler is None else handler)
