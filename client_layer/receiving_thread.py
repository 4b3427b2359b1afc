"""ZeroMQ's I/O thread in the trainer receives without preempting Caffe.

NOTE [ The receiving thread yields ]
A trainer's ZeroMQ I/O thread reads the next messages from the socket while
Caffe computes. It sleeps while the trainer's queue is full (``prefetch``
messages) and is woken by the receive that frees room; on a machine with
few cores Linux then runs it at once on the caller's core, and the caller,
Caffe's thread, waits until it has read the next messages: 2-3 ms for 4 MB
messages, at every other message (``./dev demo`` counted most of its wait
there). Under ``SCHED_BATCH`` the I/O thread gets the same share of the CPU
but never preempts the thread that woke it. ``yield_to_caller`` asks
ZeroMQ for that before a context starts its thread, where the process may
set the policy (Linux; a thread may always switch itself to it, unless a
sandbox forbids the call). libzmq aborts the process when it cannot apply
a policy it was given, so the policy is first tried on a short-lived
thread of our own, once per process.

Python 3.8 with the standard library and pyzmq; nothing from ``server``.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import zmq

_allowed: Optional[bool] = None  # whether this process may put a thread under SCHED_BATCH


def _batch_policy_allowed() -> bool:
    global _allowed
    if _allowed is None:
        outcome = []

        def try_policy() -> None:
            try:
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: this thread, on Linux
                outcome.append(True)
            except (AttributeError, OSError):
                outcome.append(False)

        probe = threading.Thread(target=try_policy, name="zfeed-sched-probe", daemon=True)
        probe.start()
        probe.join(5.0)
        _allowed = bool(outcome) and outcome[0] and hasattr(zmq, "THREAD_SCHED_POLICY")
    return _allowed


def yield_to_caller(context: zmq.Context) -> bool:
    """Ask that ``context``'s I/O thread run under SCHED_BATCH (call before its first socket);
    False, having changed nothing, where this process may not."""
    if not _batch_policy_allowed():
        return False
    context.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH)
    context.set(zmq.THREAD_PRIORITY, 0)
    return True
