"""What runs inside a loader worker process.

A worker receives ``RowTask``s from the supervisor on its own pipe, reads and
transforms each sample straight into its row of the batch's shared-memory
slot, and answers ``(task_id, bad_rows)`` on the same pipe, where
``bad_rows`` maps a row to the reason its sample could not be used. Before
each sample it writes the sample's index into its cell of ``progress``, so
that if it dies the supervisor knows which sample it was on. For a
``PackTask`` it compresses the filled slot's frames into the slot's packed
room and answers ``(task_id, packed_lengths)``.

``probe_main`` reads one suspect sample alone in a disposable process.

A worker exits when it receives ``None``, when the pipe closes, or when its parent
is gone (PDEATHSIG, and a ppid check every ``PARENT_CHECK_S`` in case the
signal was missed). It ignores SIGINT and SIGTERM: stopping is the
supervisor's to decide (NOTE [ Shutdown protocol ] in supervisor.py).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Dict, List, Optional

import numpy as np

from client_layer import wire
from client_layer.compression import Codec
from server.assembly import PackedLengths, PackTask, RowTask, Task
from server.batch_buffer import BatchSlots
from server.batch_layout import BatchLayout, RowWriter
from server.parent_death import die_with_parent
from server.plan import EpochPlan
from server.sources import Source
from server.transform import DRAWS_PER_SAMPLE, uses_draws

PARENT_CHECK_S = 0.5
IDLE = -1
STARTING = -2  # the progress cell until the worker has opened its source


@dataclass
class WorkerSetup:
    """Everything a worker needs; inherited through fork, never pickled."""

    worker_id: int
    source: Source
    layout: BatchLayout
    plan: EpochPlan  # the draws of each row
    slots: BatchSlots
    progress: Any  # shared int64 array, one cell per worker: the index being read, IDLE, or STARTING
    parent_pid: int
    specs: List[wire.ArraySpec]  # the arrays of a full slot
    codec: Optional[Codec]  # compresses slots for PackTasks


def _write_blocks(source: Source, writer: RowWriter, task: RowTask) -> List[int]:
    """Write what ``source`` reads at once (``read_many``) into the task's rows; returns the
    positions of the task left to read one by one."""
    try:
        blocks, rest = source.read_many(task.indices)
    except Exception:  # whatever failed, the per-sample path reads each sample and names a bad one
        return list(range(len(task.indices)))
    left = [rest]
    for block in blocks:
        try:
            writer.write_block(block.positions, task.rows[block.positions], block.arrays, block.rows)
        except ValueError:  # e.g. another image size: the per-sample path says what is wrong
            left.append(block.positions)
    return sorted(np.concatenate(left).tolist())


def fill_rows(setup: WorkerSetup, task: RowTask) -> Dict[int, str]:
    """Write the samples of ``task`` into their rows; returns {row: reason} for bad ones.

    Blocks first, then sample by sample; while a block is read the progress
    cell says IDLE, so a crash there names no sample and the supervisor
    re-issues the task ``sample_by_sample``."""
    draws = (setup.plan.row_draws(task.seq, task.rows) if uses_draws(setup.layout.transform)
             else np.empty((len(task.rows), 0)))
    writer = RowWriter(setup.layout, setup.slots.arrays(task.slot), draws)
    source, write, progress, cell = setup.source, writer.write, setup.progress, setup.worker_id
    positions = range(len(task.rows)) if task.sample_by_sample else _write_blocks(source, writer, task)
    rows, indices = task.rows.tolist(), task.indices.tolist()
    bad_rows = {}
    for position in positions:
        row, index = rows[position], indices[position]
        progress[cell] = index
        try:
            write(position, row, source.read(index))
        except Exception as exc:  # any failure of one sample is that sample's, reported by name
            bad_rows[row] = "%s: %s" % (source.describe(index), exc)
    writer.finish()
    progress[cell] = IDLE
    return bad_rows


def pack_slot(setup: WorkerSetup, task: PackTask) -> PackedLengths:
    """Compress every frame of the slot's first ``task.rows`` rows into its packed room; returns
    the lengths."""
    arrays, packed = setup.slots.arrays(task.slot), setup.slots.packed(task.slot)
    lengths = {}
    for spec in setup.specs:
        lengths[spec.name] = wire.pack_frames(setup.codec, spec.with_rows(task.rows), arrays[spec.name][:task.rows],
                                              packed[spec.name])
    return lengths


def run_task(setup: WorkerSetup, task: Task) -> object:
    """What the worker answers for ``task``, after doing it."""
    if isinstance(task, PackTask):
        return pack_slot(setup, task)
    return fill_rows(setup, task)


def probe_main(setup: WorkerSetup, index: int) -> None:
    """Entry point of a disposable probe: read and transform sample ``index`` alone, as a
    worker would; it exits 0 when that works (see ``BatchAssembly.prove_bad``)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup.source.open()
    try:
        writer = RowWriter(setup.layout, setup.layout.zeros(1), np.zeros((1, DRAWS_PER_SAMPLE)))
        writer.write(0, 0, setup.source.read(index))
        writer.finish()
    finally:
        setup.source.close()


def loader_worker_main(setup: WorkerSetup, connection: Connection) -> None:
    """Entry point of a loader worker process."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup.source.open()
    setup.progress[setup.worker_id] = IDLE
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
            connection.send((task.task_id, run_task(setup, task)))
    finally:
        setup.source.close()
