"""Which samples go into batch k, and with which random draws.

The stream is Caffe's: epochs follow each other without a gap, and a batch
that reaches the end of an epoch is completed from the start of the next one
(as Caffe's Data layer wraps around its database). Stream position p is
sample ``p mod size`` of epoch ``p div size``'s order: a permutation drawn
from (seed, epoch) when shuffling, else dataset order. Batch k takes
positions kB to kB + B - 1 and the draws (crop offsets, flips) of (seed, k).
So the content of every batch depends on the seed, e and k only: never on
workers, timing or who computes it. (A skipped bad sample is replaced by the
next free position; see server/assembly.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from server.transform import DRAWS_PER_SAMPLE

_PERMUTATION_STREAM = 0x5EED
_DRAW_STREAM = 0xD4A7


@dataclass(frozen=True)
class BatchPlan:
    """Batch ``seq``: per sample its dataset index, its epoch and its draws."""

    seq: int
    indices: np.ndarray  # int64 (B,)
    epochs: np.ndarray  # int32 (B,)
    draws: np.ndarray  # float64 (B, DRAWS_PER_SAMPLE)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: it serves every count-th sample of each epoch's order."""

    index: int = 0
    count: int = 1

    def size_of(self, dataset_size: int) -> int:
        return len(range(self.index, dataset_size, self.count))


@dataclass(eq=False)
class EpochPlan:
    """The infinite (or ``epochs``-long) sequence of batches over ``dataset_size`` samples.

    With a ``shard``, the stream is this shard's part of every epoch: the
    samples at offsets index, index + count, ... of the epoch's order. The
    order depends on (seed, epoch) only, so the shards agree without talking
    to each other and together cover each epoch exactly once. Draws also
    depend on the shard, so shards do not repeat each other's crops.
    """

    dataset_size: int
    batch_size: int
    seed: int
    shuffle: bool
    epochs: Optional[int] = None
    shard: Shard = Shard()
    # The source's own notion of a shuffled epoch (e.g. HDF5 keeps a file's rows together, as
    # Caffe does), called with the epoch's generator; None: a uniform permutation.
    shuffled_order: Optional[Callable[[np.random.Generator], np.ndarray]] = None

    def __post_init__(self) -> None:
        shard = self.shard
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if not 0 <= shard.index < shard.count:
            raise ValueError("shard %d/%d: the index must be in 0..%d" % (shard.index, shard.count, shard.count - 1))
        if shard.size_of(self.dataset_size) < 1:
            raise ValueError("shard %d/%d of %d samples is empty: use at most %d shards"
                             % (shard.index, shard.count, self.dataset_size, self.dataset_size))
        self.local_size = shard.size_of(self.dataset_size)
        self._cached_epoch = -1
        self._cached_order = np.arange(self.dataset_size, dtype=np.int64)
        self._cached_order.setflags(write=False)  # handed out as it is: nobody may change it

    @property
    def total_positions(self) -> Optional[int]:
        """Positions in ``epochs`` epochs of this shard (None: the stream is endless)."""
        return None if self.epochs is None else self.epochs * self.local_size

    @property
    def batch_count(self) -> Optional[int]:
        """Batches until ``epochs`` epochs are covered (the last one completed from the next epoch)."""
        total = self.total_positions
        return None if total is None else -(-total // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return self._cached_order  # key order, made once
        if epoch != self._cached_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, _PERMUTATION_STREAM, epoch]))
            order = self.shuffled_order(rng) if self.shuffled_order else rng.permutation(self.dataset_size)
            self._cached_order = np.asarray(order, dtype=np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def locate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Dataset index (int64) and epoch (int32) of each stream position of this shard."""
        epochs = positions // self.local_size
        offsets = (positions % self.local_size) * self.shard.count + self.shard.index
        indices = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            indices[mask] = self.epoch_order(int(epoch))[offsets[mask]]
        return indices, epochs.astype(np.int32)

    def draws(self, seq: int) -> np.ndarray:
        """The (batch_size, DRAWS_PER_SAMPLE) uniforms of batch ``seq``, one row per batch row."""
        rng = np.random.Generator(np.random.PCG64(
            [self.seed, _DRAW_STREAM, self.shard.index, self.shard.count, seq]))
        return rng.random((self.batch_size, DRAWS_PER_SAMPLE))

    def row_draws(self, first_seq: int, rows: np.ndarray) -> np.ndarray:
        """The draws of ``rows`` of a message whose first batch is ``first_seq``: row r is row
        r mod B of batch first_seq + r div B, whatever sample fills it."""
        batches, within = np.divmod(rows, self.batch_size)
        out = np.empty((len(rows), DRAWS_PER_SAMPLE))
        for batch in np.unique(batches).tolist():
            chosen = batches == batch
            out[chosen] = self.draws(first_seq + batch)[within[chosen]]
        return out

    def batch(self, seq: int) -> BatchPlan:
        """Batch ``seq`` when no sample is skipped: positions seq*B to (seq+1)*B - 1."""
        start = seq * self.batch_size
        indices, epochs = self.locate(np.arange(start, start + self.batch_size, dtype=np.int64))
        return BatchPlan(seq, indices, epochs, self.draws(seq))
