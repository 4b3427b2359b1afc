"""Preallocated batch slots in memory shared with the loader workers.

One anonymous shared mapping holds ``slot_count`` slots, each with room for
every array of one batch. It is created before the workers are forked, so
they inherit it: no name in /dev/shm, nothing left behind whatever way the
server dies. Workers write samples straight into their slot; the supervisor
sends the slot's arrays from there without a copy and reuses the slot once
ZeroMQ has released it.
"""

from __future__ import annotations

import mmap
from typing import Dict, List, Sequence, Tuple

import numpy as np

ArrayLayout = Tuple[str, np.dtype, Tuple[int, ...]]

_ALIGN = 64


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class BatchSlots:
    """``slot_count`` slots of the arrays in ``layout`` (name, dtype, batch shape)."""

    def __init__(self, layout: Sequence[ArrayLayout], slot_count: int):
        self.layout = [(name, np.dtype(dtype), tuple(shape)) for name, dtype, shape in layout]
        self.slot_count = slot_count
        self.slot_bytes = sum(_aligned(int(np.prod(shape)) * dtype.itemsize)
                              for _, dtype, shape in self.layout)
        self._mapping = mmap.mmap(-1, max(self.slot_bytes * slot_count, 1),
                                  flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._views: List[Dict[str, np.ndarray]] = [self._slot_views(i) for i in range(slot_count)]

    def _slot_views(self, slot: int) -> Dict[str, np.ndarray]:
        views = {}
        offset = slot * self.slot_bytes
        for name, dtype, shape in self.layout:
            count = int(np.prod(shape))
            views[name] = np.frombuffer(self._mapping, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += _aligned(count * dtype.itemsize)
        return views

    def arrays(self, slot: int) -> Dict[str, np.ndarray]:
        """The arrays of ``slot``, views into shared memory, in layout order."""
        return self._views[slot]
