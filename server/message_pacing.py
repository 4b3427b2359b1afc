"""How many batches the next message carries.

NOTE [ Message pacing ]
Small batches travel many to a message (NOTE [ Batches per message ] in
assembly.py), which pays the per-message work once for all of them. But a
message is sent only once every batch in it is filled, so a message of many
costly batches (a slow Python dataset, decoded images) would hold back its
first batch, and a trainer starting or waiting would see a burst after a
pause instead of a stream. So the supervisor times each task from its
assignment to its answer, and the next message carries as many batches as
the workers fill in about ``FILL_TARGET_S``: at least one, at most the
slot's ``batches_per_message``, and at most twice the previous message. The
first message, before any timing, carries one batch, so the first batch
leaves as soon as it is filled; doubling from there lets a trainer that
starts with nothing queued take each message while the next, twice as
large, is filled (a jump from a few batches to 64 left the demo's trainer
waiting 40 ms for the big one). The estimate falls at once to a cheaper
task's cost and rises smoothly: the first tasks pay the worker's warm-up
(opening the data, listing keys), and an estimate that forgot it slowly
kept messages small, each leaving the trainer waiting at its end.
Cheap samples (MNIST rows) grow to the full message within a few messages;
costly ones stay one batch a message. What each batch holds never depends
on this: batch k takes positions kB.. and the draws of (seed, k).
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, Optional

FILL_TARGET_S = 0.05
SMOOTHING = 0.3  # weight of a costlier newest task in the running estimate


class MessagePacing:
    """The running cost of a row, from the tasks' times, and the batches a message can hold."""

    def __init__(self, most: int, batch_size: int, workers: int):
        self.most = most
        self.batch_size = batch_size
        self.workers = workers
        self.row_seconds: Optional[float] = None  # estimate of one row's wall time in a worker
        self._last_count = 0  # batches of the message started last
        self._assigned_at: Dict[int, float] = {}

    def assigned(self, task_id: int) -> None:
        self._assigned_at[task_id] = time.monotonic()

    def answered(self, task_id: int, rows: int) -> None:
        """Task ``task_id`` of ``rows`` rows came back: its time updates the estimate."""
        started = self._assigned_at.pop(task_id, None)
        if started is None or rows < 1:
            return
        seconds = (time.monotonic() - started) / rows
        if self.row_seconds is None or seconds <= self.row_seconds:
            self.row_seconds = seconds
        else:
            self.row_seconds = SMOOTHING * seconds + (1 - SMOOTHING) * self.row_seconds

    def forget(self, task_ids: Iterable[int]) -> None:
        """Tasks that will not answer (their worker died)."""
        for task_id in task_ids:
            self._assigned_at.pop(task_id, None)

    def next_count(self) -> int:
        """Batches for the message started now: what the workers fill in ``FILL_TARGET_S``,
        1 to ``most`` and at most twice the last message's."""
        if self.row_seconds is None:
            count = 1
        else:
            batch_seconds = self.row_seconds * self.batch_size / self.workers
            filled_in_time = int(FILL_TARGET_S / max(batch_seconds, 1e-9))
            count = max(1, min(self.most, 2 * self._last_count, filled_in_time))
        self._last_count = count
        return count
