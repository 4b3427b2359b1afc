"""Batches being assembled: which stream positions fill which rows, and bad samples.

NOTE [ Exactly once per epoch ]
Stream positions (see server/plan.py) are handed out in order, each once.
Batch k starts with the next B positions, so without bad samples batch k is
positions kB to kB + B - 1, whatever the workers do. A row whose sample is
bad (unreadable, or it crashed a worker ``MAX_CRASHES`` times and then a probe
that read it alone, see ``prove_bad``) gets the next free position instead, so batches stay full; a sample known to be bad is
passed over whenever its position comes up again, and counted each time.
Work lost with a dead worker is re-issued with the same positions (and so the
same draws, which belong to rows: ``EpochPlan.row_draws``),
so it is neither lost nor repeated. Hence every sample of every epoch is
delivered exactly once, except the samples reported as skipped.

With compression (``packing``), a batch whose rows are all filled gets one
more task, ``PackTask``: compress its frames. It is complete when that is done.

NOTE [ Batches per message ]
Small samples travel several consecutive batches to a message
(``batches_per_message``), so that the fixed costs of a task, a message
and a header are paid once for all of them. Here such a group is one
``PendingBatch`` of ``batch_count`` batches, starting at batch ``seq``,
filled in one slot by one task. It changes nothing of what each batch
holds: batch k still takes positions kB.. and the draws of (seed, k).
A message's rows are filled by tasks of at most ``rows_per_task`` rows, so
that a large message of costly samples (decoded images) is still filled by
every worker at once, and a worker's death costs one task's work.

NOTE [ Rows sent in place ]
A source may hold every sample's arrays in memory, already as they go on
the wire (HDF5 rows: float32, untransformed; ``Source.held_rows``). A
message whose samples are then consecutive rows (Caffe's HDF5Data order
without shuffling, but for the message that wraps around an epoch's end)
needs no filling: its arrays are views of the held rows, the sender sends
them without a copy, and no worker touches it. It still takes a slot, which
stays untouched, so the slots bound the messages in flight as for any other.
Such a message holds the very rows a worker would have copied.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple, Union

import numpy as np

from server.plan import EpochPlan
from server.sources.base import consecutive_slice

log = logging.getLogger("zfeed.server")

MAX_CRASHES = 2


class TooFewGoodSamples(RuntimeError):
    """A whole epoch of positions did not yield the samples one batch needs: nearly every
    sample is bad, and serving would only spin through the stream."""


@dataclass
class RowTask:
    """Fill ``rows`` of the message in ``slot`` (its first batch ``seq``) with the samples
    ``indices``; each row's draws are the plan's for that row (``EpochPlan.row_draws``).
    ``sample_by_sample``: read each sample alone, so that a crash names its sample."""

    task_id: int
    seq: int
    slot: int
    rows: np.ndarray
    indices: np.ndarray
    sample_by_sample: bool = False


@dataclass
class PackTask:
    """Compress the frames of the first ``rows`` rows of the filled slot ``slot`` into its packed room."""

    task_id: int
    seq: int
    slot: int
    rows: int


Task = Union[RowTask, PackTask]
PackedLengths = Dict[str, List[int]]  # array name -> each frame's length on the wire


@dataclass
class PendingBatch:
    """Batches ``seq`` to ``seq + batch_count - 1`` being filled in ``slot`` (one message)."""

    seq: int
    batch_count: int
    slot: int
    indices: np.ndarray
    epochs: np.ndarray
    missing: Set[int]
    first_position: int
    packed_lengths: Optional[PackedLengths] = None
    in_place: Optional[Dict[str, np.ndarray]] = None  # views of held rows (NOTE [ Rows sent in place ])


class BatchAssembly:
    """Hands out positions, tracks unfilled rows, and replaces bad samples."""

    def __init__(self, plan: EpochPlan, describe: Callable[[int], str], first_seq: int = 0,
                 first_position: int = 0, packing: bool = False, batches_per_message: int = 1,
                 prove_bad: Callable[[int], Optional[str]] = lambda index: "it crashed a loader worker",
                 rows_per_task: Optional[int] = None, held_rows: Optional[Dict[str, np.ndarray]] = None):
        """``prove_bad(index)``: read sample ``index`` alone where a crash costs nothing; the
        reason it is bad, or None. A sample in flight at ``MAX_CRASHES`` deaths is skipped only
        if this proves it bad, so deaths from outside (SIGKILL, the OOM killer) cost no sample.
        ``held_rows``: every sample's arrays exactly as a message carries them, by name, to send
        in place (NOTE [ Rows sent in place ]); not with packing."""
        self.plan = plan
        self.describe = describe
        self.prove_bad = prove_bad
        self.packing = packing
        self.batches_per_message = batches_per_message
        self.rows_per_task = rows_per_task  # None: one task fills a whole message
        self.held_rows = held_rows
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
        """``count`` good positions' indices and epochs, and the lowest position taken.
        TooFewGoodSamples when more than an epoch's positions would have to be passed over."""
        floor = self.next_position
        indices: List[np.ndarray] = []
        epochs: List[np.ndarray] = []
        taken = 0
        while taken < count:
            if self.next_position - floor > self.plan.local_size + count:
                raise TooFewGoodSamples(
                    "%d of the %d samples served are bad, and a whole epoch does not hold the %d good ones "
                    "this batch needs: fix or replace the data (the log names each bad sample)"
                    % (len(self.bad_samples), self.plan.local_size, count))
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
        return RowTask(next(self._task_ids), batch.seq, batch.slot, rows, batch.indices[rows])

    def start(self, slot: int, count: Optional[int] = None) -> List[RowTask]:
        """Begin the next message, of ``count`` batches (default and at most ``batches_per_message``,
        see NOTE [ Message pacing ]), in ``slot``; returns the tasks filling their rows,
        ``rows_per_task`` rows each (the last one the rest); none for a message of held rows
        sent in place, which is complete at once."""
        count = min(count or self.batches_per_message, self.batches_per_message)
        if self.plan.batch_count is not None:
            count = min(count, self.plan.batch_count - self.next_seq)
        size = count * self.plan.batch_size
        indices, epochs, floor = self._take(size)
        batch = PendingBatch(self.next_seq, count, slot, indices, epochs, set(range(size)), floor)
        self.pending[batch.seq] = batch
        self.next_seq += count
        rows = consecutive_slice(indices) if self.held_rows is not None else None
        if isinstance(rows, slice):
            batch.in_place = {name: held[rows] for name, held in self.held_rows.items()}
            batch.missing.clear()
            return []
        step = self.rows_per_task or size
        return [self._task(batch, np.arange(start, min(start + step, size))) for start in range(0, size, step)]

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
        for row, reason in bad_rows.items():
            self.mark_bad(int(batch.indices[row]), reason)
        batch.missing.difference_update(task.rows.tolist())  # one C loop, not a Python one per row
        batch.missing.update(bad_rows)
        refill = self._replace(batch, sorted(bad_rows))
        if refill is None and self.packing and not batch.missing:
            return PackTask(next(self._task_ids), batch.seq, batch.slot, len(batch.indices))
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
                reason = self.prove_bad(crashing_index)
                if reason is None:  # it reads fine alone: the deaths came from elsewhere
                    del self.crashes[crashing_index]
                else:
                    self.mark_bad(crashing_index, "it was being read in %d loader worker deaths, and reading it "
                                                  "alone %s" % (MAX_CRASHES, reason))
                    bad = [row for row in task.rows.tolist() if batch.indices[row] == crashing_index]
        replacement = self._replace(batch, bad)
        rest = np.array([row for row in task.rows.tolist() if row not in bad], dtype=np.int64)
        if replacement is not None:
            rest = np.concatenate([rest, replacement.rows])
        retry = self._task(batch, rest)
        retry.sample_by_sample = True  # a crash in a block read names no sample: read them one by one
        return retry

    def complete(self, seq: int) -> bool:
        """Batch ``seq`` is ready to send: every row filled and, with packing, packed."""
        batch = self.pending.get(seq)
        return (batch is not None and not batch.missing
                and (not self.packing or batch.packed_lengths is not None))

    def pop(self, seq: int) -> PendingBatch:
        return self.pending.pop(seq)
