"""Which samples go into batch k, and with which random draws.

The stream is Caffe's: epochs follow each other without a gap, and a batch
that reaches the end of an epoch is completed from the start of the next one
(as Caffe's Data layer wraps around its database). The order of epoch e is a
permutation drawn from (seed, e) when shuffling, else dataset order. The
draws of batch k come from (seed, k). So the content of every batch depends
on the seed, e and k only: never on workers, timing or who computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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


class EpochPlan:
    """The infinite (or ``epochs``-long) sequence of batches over ``dataset_size`` samples."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, shuffle: bool,
                 epochs: Optional[int] = None):
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epochs = epochs
        self._cached_epoch = -1
        self._cached_order = np.arange(dataset_size, dtype=np.int64)

    @property
    def batch_count(self) -> Optional[int]:
        """Batches until ``epochs`` epochs are covered (the last one completed from the next epoch)."""
        if self.epochs is None:
            return None
        return -(-self.epochs * self.dataset_size // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(self.dataset_size, dtype=np.int64)
        if epoch != self._cached_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, _PERMUTATION_STREAM, epoch]))
            self._cached_order = rng.permutation(self.dataset_size).astype(np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def batch(self, seq: int) -> BatchPlan:
        start = seq * self.batch_size
        positions = np.arange(start, start + self.batch_size, dtype=np.int64)
        epochs = positions // self.dataset_size
        offsets = positions % self.dataset_size
        indices = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            indices[mask] = self.epoch_order(int(epoch))[offsets[mask]]
        rng = np.random.Generator(np.random.PCG64([self.seed, _DRAW_STREAM, seq]))
        draws = rng.random((self.batch_size, DRAWS_PER_SAMPLE))
        return BatchPlan(seq, indices, epochs.astype(np.int32), draws)
