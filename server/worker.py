"""What runs inside a loader worker process.

A worker receives batch tasks from the supervisor on its own pipe, reads and
transforms every sample of the batch straight into the batch's shared-memory
slot, and answers on the same pipe. It exits when the pipe closes, when it
receives ``None``, or when its parent is gone (PDEATHSIG, and a ppid check
every ``PARENT_CHECK_S`` in case the signal was missed).
"""

from __future__ import annotations

import ctypes
import os
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from server.batch_buffer import BatchSlots
from server.batch_layout import BatchLayout

PARENT_CHECK_S = 0.5
_PR_SET_PDEATHSIG = 1

# Messages from worker to supervisor.
DONE = "done"
FAILED = "failed"


@dataclass
class BatchTask:
    seq: int
    slot: int
    indices: np.ndarray
    draws: np.ndarray


@dataclass
class WorkerSetup:
    """Everything a worker needs; inherited through fork, never pickled."""

    worker_id: int
    source: Any
    layout: BatchLayout
    slots: BatchSlots
    parent_pid: int


class SampleError(Exception):
    """A sample could not be read or transformed; the message names it."""


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the ppid check below still ends the worker


def fill_batch(setup: WorkerSetup, task: BatchTask) -> None:
    """Read, transform and write every sample of ``task`` into its slot."""
    batch = setup.slots.arrays(task.slot)
    source, layout = setup.source, setup.layout
    for row, (index, draw) in enumerate(zip(task.indices.tolist(), task.draws)):
        try:
            layout.write_sample(source.read(index), draw, batch, row)
        except Exception as exc:
            raise SampleError("%s: %s" % (source.describe(index), exc)) from exc


def loader_worker_main(setup: WorkerSetup, connection: Connection) -> None:
    """Entry point of a loader worker process."""
    _die_with_parent()
    # Stopping is the supervisor's to decide (NOTE [ Shutdown protocol ] in supervisor.py):
    # Ctrl-C or a SIGTERM sent to the whole process group must not kill workers under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup.source.open()
    try:
        while True:
            if os.getppid() != setup.parent_pid:
                return
            if not connection.poll(PARENT_CHECK_S):
                continue
            try:
                task = connection.recv()
            except EOFError:
                return
            if task is None:
                return
            try:
                fill_batch(setup, task)
            except SampleError as exc:
                connection.send((FAILED, task.seq, task.slot, str(exc), traceback.format_exc()))
                continue
            connection.send((DONE, task.seq, task.slot))
    finally:
        setup.source.close()
