"""Dying with the parent process: the one ``PR_SET_PDEATHSIG`` set-up of the repository.

The server's loader workers call it first thing; ``harness.children`` calls
it in every child it starts, between fork and exec (the setting survives
exec). Linux sends the signal when the *thread* that created the process
ends, not the whole parent process: start children from a long-lived thread.
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies. Elsewhere than
    Linux this does nothing: a process that must not outlive its parent also checks its ppid."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum))
    except (OSError, AttributeError):
        pass
