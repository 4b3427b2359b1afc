"""What runs inside a loader worker process.

A worker receives ``RowTask``s from the supervisor on its own pipe, reads and
transforms each sample straight into its row of the batch's shared-memory
slot, and answers ``(DONE, task_id, bad_rows)`` on the same pipe, where
``bad_rows`` maps a row to the reason its sample could not be used. Before
each sample it writes the sample's index into its cell of ``progress``, so
that if it dies the supervisor knows which sample it was on. For a
``PackTask`` it compresses the filled slot's frames into the slot's packed
room and answers ``(DONE, task_id, packed_lengths)``.

It exits when it receives ``None``, when the pipe closes, or when its parent
is gone (PDEATHSIG, and a ppid check every ``PARENT_CHECK_S`` in case the
signal was missed). It ignores SIGINT and SIGTERM: stopping is the
supervisor's to decide (NOTE [ Shutdown protocol ] in supervisor.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Dict, List, Optional

from client_layer import wire
from server.assembly import PackedLengths, PackTask, RowTask, Task
from server.batch_buffer import BatchSlots
from server.batch_layout import BatchLayout, RowWriter

PARENT_CHECK_S = 0.5
IDLE = -1
_PR_SET_PDEATHSIG = 1

DONE = "done"


@dataclass
class WorkerSetup:
    """Everything a worker needs; inherited through fork, never pickled."""

    worker_id: int
    source: Any
    layout: BatchLayout
    slots: BatchSlots
    progress: Any  # shared int64 array, one cell per worker: the index being read, or IDLE
    parent_pid: int
    specs: List[wire.ArraySpec]
    codec: Optional[wire.Codec]  # compresses slots for PackTasks


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the ppid check in the loop still ends the worker


def fill_rows(setup: WorkerSetup, task: RowTask) -> Dict[int, str]:
    """Write the samples of ``task`` into their rows; returns {row: reason} for bad ones."""
    writer = RowWriter(setup.layout, setup.slots.arrays(task.slot), task.draws)
    source, write, progress, cell = setup.source, writer.write, setup.progress, setup.worker_id
    bad_rows = {}
    for position, (row, index) in enumerate(zip(task.rows.tolist(), task.indices.tolist())):
        progress[cell] = index
        try:
            write(position, row, source.read(index))
        except Exception as exc:  # any failure of one sample is that sample's, reported by name
            bad_rows[row] = "%s: %s" % (source.describe(index), exc)
    writer.finish()
    progress[cell] = IDLE
    return bad_rows


def pack_slot(setup: WorkerSetup, task: PackTask) -> PackedLengths:
    """Compress every frame of the slot of ``task`` into its packed room; returns the lengths."""
    arrays, packed = setup.slots.arrays(task.slot), setup.slots.packed(task.slot)
    return {spec.name: wire.pack_frames(setup.codec, spec, arrays[spec.name], packed[spec.name])
            for spec in setup.specs}


def run_task(setup: WorkerSetup, task: Task) -> object:
    """What the worker answers for ``task``, after doing it."""
    if isinstance(task, PackTask):
        return pack_slot(setup, task)
    return fill_rows(setup, task)


def loader_worker_main(setup: WorkerSetup, connection: Connection) -> None:
    """Entry point of a loader worker process."""
    _die_with_parent()
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
            connection.send((DONE, task.task_id, run_task(setup, task)))
    finally:
        setup.source.close()
