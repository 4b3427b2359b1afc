"""Ctrl-C while the layer waits for data, in a process whose host owns SIGINT.

Caffe's command-line tool installs its own SIGINT handler (``caffe::SignalHandler``:
it sets a flag that the solver reads between iterations, then snapshots and
stops as ``-sigint_effect`` says) before it starts Python. Python then installs
none (``signal.getsignal(SIGINT)`` is None) and never sees Ctrl-C, so a
``forward()`` blocked on the network would sit out its whole ``timeout_s``.

``lent_to_python()`` lends SIGINT to Python for one wait: it saves the host's
handler (with ``sigaction`` through ctypes: Python cannot restore a handler it
did not install), installs a Python handler that only notes the signal, and
restores the host's handler when the wait ends. ``pass_to_host()`` then
re-raises the signal, so the host's handler runs as if Ctrl-C had come a
moment later: under ``caffe train`` the solver stops (or snapshots) after the
iteration in progress. Elsewhere nothing is lent: under pycaffe and
``caffe test`` Python's own handler raises ``KeyboardInterrupt`` in the wait.
Signal handlers can only be set from the main thread, so a layer running in
another thread waits as before.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from typing import Optional

# Room for struct sigaction on any Linux ABI (152 bytes on x86-64): it is only saved and restored.
_SIGACTION_BYTES = 512
_libc: Optional[ctypes.CDLL] = None
_received = False


def _note_sigint(signum, frame) -> None:
    global _received
    _received = True


def _sigaction(new: Optional[ctypes.Array], old: Optional[ctypes.Array]) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.sigaction(signal.SIGINT, new, old) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGINT) failed")


def host_owns_sigint() -> bool:
    """True in the main thread of a process whose SIGINT handler was not installed by
    Python (or is ours, between lendings)."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) in (None, _note_sigint))


class _Lending:
    """While entered, SIGINT is noted (``received()``) instead of reaching the host."""

    def __init__(self) -> None:
        self._host_action: Optional[ctypes.Array] = None

    def __enter__(self) -> "_Lending":
        global _received
        _received = False
        if host_owns_sigint():
            saved = ctypes.create_string_buffer(_SIGACTION_BYTES)
            _sigaction(None, saved)
            signal.signal(signal.SIGINT, _note_sigint)
            self._host_action = saved
        return self

    @staticmethod
    def received() -> bool:
        return _received

    def __exit__(self, *exc_info: object) -> None:
        if self._host_action is not None:
            _sigaction(self._host_action, None)
            self._host_action = None


def lent_to_python() -> _Lending:
    """A context in which the host's SIGINT is noted by Python, when the host owns it."""
    return _Lending()


def pass_to_host() -> None:
    """Deliver the noted SIGINT to the host's handler (after the lending ended)."""
    signal.raise_signal(signal.SIGINT)
