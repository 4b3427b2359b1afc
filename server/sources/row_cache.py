"""Parsed raw-Datum rows a loader worker keeps, so later epochs skip the database.

NOTE [ Raw Datums in memory ]
Reading a raw Datum costs a database lookup and a parse in Python, about a
microsecond per record; Caffe's Data layer does both in C++. A small
dataset (MNIST, CIFAR-10) is read every few seconds, so each loader worker
keeps the images and labels it has parsed, in its own memory: the images
of a database of one image shape (``RowCache``), as long as they take at
most ``ROWS_IN_MEMORY_BYTES``. A later read of a row it holds is one gather.
The worker's read transaction already sees the database as it was when the
worker opened it, so holding rows changes nothing a trainer can see.

Memory: each worker holds at most ``ROWS_IN_MEMORY_BYTES`` (the pages of
rows it has not read are never touched, so not resident). Each worker's
memory is its own: nothing is shared, so nothing needs ordering between
processes; with several workers each fills its own copy over the first
epochs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

ROWS_IN_MEMORY_BYTES = 512 * 2**20  # per loader worker


class RowCache:
    """Images (N x C x H x W uint8) and float32 labels of records 0..N-1, for the records
    stored so far. ``for_database`` says whether a database is small enough to hold."""

    def __init__(self, count: int, shape: Tuple[int, int, int]):
        self.shape = tuple(shape)
        self.images = np.empty((count,) + self.shape, np.uint8)  # pages untouched until stored
        self.labels = np.empty(count, np.float32)
        self.held = np.zeros(count, bool)

    @classmethod
    def for_database(cls, count: int, shape: Tuple[int, int, int]) -> Optional["RowCache"]:
        """A cache for ``count`` records of images ``shape``, or None when they would take
        more than ``ROWS_IN_MEMORY_BYTES``."""
        if count * (int(np.prod(shape)) + 4) > ROWS_IN_MEMORY_BYTES:
            return None
        return cls(count, shape)

    def store(self, indices: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        """Keep the images (N x C x H x W, this cache's shape) and labels of records ``indices``."""
        self.images[indices] = images
        self.labels[indices] = labels
        self.held[indices] = True
