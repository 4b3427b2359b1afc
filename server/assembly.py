"""Batches being assembled: which stream positions fill which rows, and bad samples.

NOTE [ Exactly once per epoch ]
Stream positions (see server/plan.py) are handed out in order, each once.
Batch k starts with the next B positions, so without bad samples batch k is
positions kB to kB + B - 1, whatever the workers do. A row whose sample is
bad (unreadable, or it crashed a worker ``MAX_CRASHES`` times) gets the next
free position instead, so batches stay full; a sample known to be bad is
passed over whenever its position comes up again, and counted each time.
Work lost with a dead worker is re-issued with the same positions and draws,
so it is neither lost nor repeated. Hence every sample of every epoch is
delivered exactly once, except the samples reported as skipped.

With compression (``packing``), a batch whose rows are all filled gets one
more task, ``PackTask``: compress its frames. It is complete when that is done.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple, Union

import numpy as np

from server.plan import EpochPlan

log = logging.getLogger("zfeed.server")

MAX_CRASHES = 2


@dataclass
class RowTask:
    """Fill ``rows`` of the batch in ``slot`` with the samples ``indices``, using ``draws``."""

    task_id: int
    seq: int
    slot: int
    rows: np.ndarray
    indices: np.ndarray
    draws: np.ndarray


@dataclass
class PackTask:
    """Compress the frames of the filled batch in ``slot`` into the slot's packed room."""

    task_id: int
    seq: int
    slot: int


Task = Union[RowTask, PackTask]
PackedLengths = Dict[str, List[int]]  # array name -> each frame's length on the wire


@dataclass
class PendingBatch:
    seq: int
    slot: int
    indices: np.ndarray
    epochs: np.ndarray
    draws: np.ndarray
    missing: Set[int]
    first_position: int
    packed_lengths: Optional[PackedLengths] = None


class BatchAssembly:
    """Hands out positions, tracks unfilled rows, and replaces bad samples."""

    def __init__(self, plan: EpochPlan, describe: Callable[[int], str], first_seq: int = 0,
                 first_position: int = 0, packing: bool = False):
        self.plan = plan
        self.describe = describe
        self.packing = packing
        self.next_seq = first_seq
        self.next_position = first_position
        self.pending: Dict[int, PendingBatch] = {}
        self.bad_samples: Dict[int, str] = {}
        self.crashes: Dict[int, int] = {}
        self.skipped = 0
        self._task_ids = itertools.count()

    @property
    def can_start(self) -> bool:
        total = self.plan.total_positions
        return total is None or self.next_position < total

    @property
    def low_water_position(self) -> int:
        """Every position below this one is in a batch no longer pending (sent), or skipped."""
        return min((b.first_position for b in self.pending.values()), default=self.next_position)

    def _take(self, count: int) -> Tuple[np.ndarray, np.ndarray, int]:
        """``count`` good positions' indices and epochs, and the lowest position taken."""
        floor = self.next_position
        indices: List[np.ndarray] = []
        epochs: List[np.ndarray] = []
        taken = 0
        while taken < count:
            positions = np.arange(self.next_position, self.next_position + count - taken, dtype=np.int64)
            self.next_position += len(positions)
            found, found_epochs = self.plan.locate(positions)
            if self.bad_samples:
                good = np.array([int(i) not in self.bad_samples for i in found], dtype=bool)
                self.skipped += int((~good).sum())
                found, found_epochs = found[good], found_epochs[good]
            indices.append(found)
            epochs.append(found_epochs)
            taken += len(found)
        return np.concatenate(indices), np.concatenate(epochs), floor

    def _task(self, batch: PendingBatch, rows: np.ndarray) -> RowTask:
        return RowTask(next(self._task_ids), batch.seq, batch.slot, rows, batch.indices[rows], batch.draws[rows])

    def start(self, slot: int) -> RowTask:
        """Begin the next batch in ``slot``; returns the task filling all its rows."""
        size = self.plan.batch_size
        indices, epochs, floor = self._take(size)
        batch = PendingBatch(self.next_seq, slot, indices, epochs, self.plan.draws(self.next_seq),
                             set(range(size)), floor)
        self.pending[batch.seq] = batch
        self.next_seq += 1
        return self._task(batch, np.arange(size))

    def mark_bad(self, index: int, reason: str) -> None:
        """Never hand out sample ``index`` again; log it the first time."""
        if index not in self.bad_samples:
            self.bad_samples[index] = reason
            log.warning("skipping %s: %s", self.describe(index), reason)

    def _replace(self, batch: PendingBatch, rows: List[int]) -> Optional[RowTask]:
        if not rows:
            return None
        self.skipped += len(rows)
        indices, epochs, _ = self._take(len(rows))
        batch.indices[rows] = indices
        batch.epochs[rows] = epochs
        return self._task(batch, np.asarray(rows, dtype=np.int64))

    def filled(self, task: RowTask, bad_rows: Dict[int, str]) -> Optional[Task]:
        """Record a finished task. Bad rows are marked and refilled: returns that task, if
        any; else, with packing, the task that packs the batch once all its rows are in."""
        batch = self.pending[task.seq]
        for row in task.rows.tolist():
            if row in bad_rows:
                self.mark_bad(int(batch.indices[row]), bad_rows[row])
            else:
                batch.missing.discard(row)
        refill = self._replace(batch, sorted(bad_rows))
        if refill is None and self.packing and not batch.missing:
            return PackTask(next(self._task_ids), batch.seq, batch.slot)
        return refill

    def packed(self, task: PackTask, lengths: PackedLengths) -> None:
        self.pending[task.seq].packed_lengths = lengths

    def crashed(self, task: RowTask, crashing_index: Optional[int]) -> RowTask:
        """The worker running ``task`` died while on ``crashing_index``: the task to re-issue."""
        batch = self.pending[task.seq]
        bad = []
        if crashing_index is not None:
            self.crashes[crashing_index] = self.crashes.get(crashing_index, 0) + 1
            if self.crashes[crashing_index] >= MAX_CRASHES:
                self.mark_bad(crashing_index, "it crashed a loader worker %d times" % MAX_CRASHES)
                bad = [row for row in task.rows.tolist() if batch.indices[row] == crashing_index]
        replacement = self._replace(batch, bad)
        rest = np.array([row for row in task.rows.tolist() if row not in bad], dtype=np.int64)
        retry = self._task(batch, rest)
        if replacement is not None:
            retry = RowTask(retry.task_id, batch.seq, batch.slot, np.concatenate([rest, replacement.rows]),
                            np.concatenate([retry.indices, replacement.indices]),
                            np.concatenate([retry.draws, replacement.draws]))
        return retry

    def complete(self, seq: int) -> bool:
        """Batch ``seq`` is ready to send: every row filled and, with packing, packed."""
        batch = self.pending.get(seq)
        return (batch is not None and not batch.missing
                and (not self.packing or batch.packed_lengths is not None))

    def pop(self, seq: int) -> PendingBatch:
        return self.pending.pop(seq)
